"""per-owner limits; key prefixes, expiry and last use; a job's start retries

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('owner_limits',
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('max_queued_jobs', sa.Integer(), nullable=True),
    sa.Column('max_running_folds', sa.Integer(), nullable=True),
    sa.Column('submissions_per_minute', sa.Integer(), nullable=True),
    sa.Column('max_dataset_bytes', sa.BigInteger(), nullable=True),
    sa.Column('max_job_runtime_s', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('owner')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prefix', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('mlflow_login', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('not_before', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), not a batch copy of the table: on SQLite,
    # dropping the old jobs table would delete every fold (ON DELETE CASCADE).
    op.drop_column('jobs', 'not_before')
    op.drop_column('jobs', 'start_attempts')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('mlflow_login')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('prefix')
    op.drop_table('owner_limits')

"""optimizer studies: a study's variants are ordinary jobs that point to it; each fold's
first epoch at the target validation loss

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('mlflow_experiment_id', sa.String(length=64), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner', 'idempotency_key', name='uq_studies_owner_idempotency_key')
    )
    op.create_index('ix_studies_owner', 'studies', ['owner'])
    op.create_index('ix_studies_created_at', 'studies', ['created_at'])
    # Plain columns, no foreign key: SQLite adds a column but not a constraint without
    # copying the table (which would delete every fold: ON DELETE CASCADE).
    op.add_column('jobs', sa.Column('study_id', sa.String(length=36), nullable=True))
    op.add_column('jobs', sa.Column('variant', sa.String(length=100), nullable=True))
    op.create_index('ix_jobs_study_id', 'jobs', ['study_id'])
    op.add_column('folds', sa.Column('target_epoch', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('folds', 'target_epoch')
    op.drop_index('ix_jobs_study_id', 'jobs')
    op.drop_column('jobs', 'variant')
    op.drop_column('jobs', 'study_id')
    op.drop_index('ix_studies_created_at', 'studies')
    op.drop_index('ix_studies_owner', 'studies')
    op.drop_table('studies')

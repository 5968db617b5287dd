"""each attempt of a fold: the Ray node it ran on, and the epoch it resumed after; the
cluster's nodes as the dispatcher sees them; why a queued job waits

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('folds', sa.Column('nodes', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('waiting_reason', sa.Text(), nullable=True))
    op.create_table('cluster_nodes',
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('cpus', sa.Float(), nullable=False),
    sa.Column('gpus', sa.Float(), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('node_id')
    )


def downgrade() -> None:
    op.drop_table('cluster_nodes')
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), not a batch copy of the table: on SQLite,
    # dropping the old jobs table would delete every fold (ON DELETE CASCADE).
    op.drop_column('jobs', 'waiting_reason')
    op.drop_column('folds', 'nodes')

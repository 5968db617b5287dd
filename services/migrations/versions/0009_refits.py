"""refits: a job that trains one final model on every row points to the job (or the
study's best variant) it refits, and records the model version it registered; when a
study's MLflow run received its results and was closed

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain column, no foreign key, as jobs.study_id (0008): SQLite cannot add one
    # without copying the table.
    op.add_column('jobs', sa.Column('refit_of', sa.String(length=36), nullable=True))
    op.add_column('jobs', sa.Column('registered_model', sa.JSON(), nullable=True))
    # Unique: one refit a job, even when two dispatchers ask for a study's at once (NULLs,
    # jobs that are not refits, are many on both databases).
    op.create_index('ix_jobs_refit_of', 'jobs', ['refit_of'], unique=True)
    op.add_column('studies', sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True))
    # Studies that ended before this revision had their runs closed already (or never
    # will: the sweep would redo them all at once).
    op.execute("UPDATE studies SET closed_at = created_at WHERE NOT EXISTS (SELECT 1 FROM jobs "
               "WHERE jobs.study_id = studies.id AND jobs.status IN ('queued', 'running'))")


def downgrade() -> None:
    op.drop_column('studies', 'closed_at')
    op.drop_index('ix_jobs_refit_of', 'jobs')
    op.drop_column('jobs', 'registered_model')
    op.drop_column('jobs', 'refit_of')

"""a job's priority; each owner's latest turn in the queue

Revision ID: 0006
Revises: 0005

Jobs get a `priority` column (0 for the jobs already stored) and their stored spec the
field itself, which the spec now always has: the request hash that idempotent replays
compare is recomputed from it (the same canonical JSON as
services.submissions.request_hash), so that a request sent again after the upgrade still
finds its job. The downgrade takes the field out again, since the older code refuses a
spec with a field it does not know.
"""
import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON),
                sa.column("request_hash", sa.String))


def upgrade() -> None:
    op.create_table('owner_turns',
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('turn', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('owner')
    )
    op.add_column('jobs', sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
    rewrite_specs(lambda spec: {**spec, "priority": 0} if "priority" not in spec else spec)


def downgrade() -> None:
    rewrite_specs(lambda spec: {k: v for k, v in spec.items() if k != "priority"})
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), not a batch copy of the table: on SQLite,
    # dropping the old jobs table would delete every fold (ON DELETE CASCADE).
    op.drop_column('jobs', 'priority')
    op.drop_table('owner_turns')


def rewrite_specs(change) -> None:
    """Store each job's spec as `change` makes it, with its request hash to match."""
    connection = op.get_bind()
    for job_id, spec, old_hash in connection.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.request_hash)):
        if not isinstance(spec, dict) or change(spec) == spec:
            continue
        spec = change(spec)
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        new_hash = hashlib.sha256(canonical.encode()).hexdigest() if old_hash else None
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=spec, request_hash=new_hash))

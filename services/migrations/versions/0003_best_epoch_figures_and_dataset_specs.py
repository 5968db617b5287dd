"""best-epoch figures of a fold; stored dataset specs keep only what applies

Revision ID: 0003
Revises: 0002

Bundled datasets no longer carry the generated datasets' size fields (rows, features,
classes, seed), nor synthetic_regression `classes`: they are taken out of stored specs,
and the request hash that idempotent replays compare is recomputed from what remains
(the same canonical JSON as services.submissions.request_hash).
"""
import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

TAKES = {"synthetic": {"rows", "features", "classes", "seed"},
         "synthetic_regression": {"rows", "features", "seed"}}
jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON),
                sa.column("request_hash", sa.String))


def upgrade() -> None:
    with op.batch_alter_table('folds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('best_val_loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('best_val_accuracy', sa.Float(), nullable=True))
    connection = op.get_bind()
    for job_id, spec, old_hash in connection.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.request_hash)):
        dataset = spec.get("dataset") if isinstance(spec, dict) else None
        if not isinstance(dataset, dict) or "name" not in dataset:
            continue
        kept = {k: v for k, v in dataset.items() if k == "name" or k in TAKES.get(dataset["name"], set())}
        if kept == dataset:
            continue
        spec = {**spec, "dataset": kept}
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        new_hash = hashlib.sha256(canonical.encode()).hexdigest() if old_hash else None
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=spec, request_hash=new_hash))


def downgrade() -> None:
    with op.batch_alter_table('folds', schema=None) as batch_op:
        batch_op.drop_column('best_val_accuracy')
        batch_op.drop_column('best_val_loss')

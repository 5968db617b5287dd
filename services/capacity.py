"""What the Ray cluster can run: its nodes' shapes, as the dispatcher last saw them.

The dispatcher, the one process that talks to Ray, writes the alive nodes' CPUs and GPUs
to the `cluster_nodes` table (`publish`), every few seconds. From them:
- the API refuses at submission a job whose folds no node could ever run (`refusal`),
  naming what is missing and what the nodes have, unless the cluster can grow (an
  autoscaler adds nodes: CROSSFOLD_CLUSTER_CAN_GROW), where such a job waits, queued,
  with its reason shown, holding no capacity;
- the dispatcher starts jobs while their folds have room (`room`): the cluster's CPUs
  and GPUs less what the unfinished folds of every running job ask for. A node added
  mid-queue is room the next tick, with no restart.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.errors import InvalidJob
from services.models import ClusterNode, Fold, Job
from services.spec import JobSpec
from services.states import FINISHED_FOLD, JobStatus

STALE_AFTER = timedelta(minutes=2)  # a node not seen for this long is not counted
EMPTY_RETRY_S = 0.5  # how often the API looks again while no node is known yet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeShape:
    node_id: str
    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU"


@dataclass(frozen=True)
class Need:
    """What one fold task asks of a node."""
    cpus: float
    gpus: float

    @classmethod
    def of(cls, spec: JobSpec) -> "Need":
        return cls(spec.resources.cpus_per_fold, spec.resources.gpus_per_fold)

    def fits(self, node: NodeShape) -> bool:
        return self.cpus <= node.cpus and self.gpus <= node.gpus


def refusal(need: Need, nodes: list[NodeShape]) -> tuple[str, str] | None:
    """(field, why) when no node could run one fold of this need; None when one can, or
    when no node is known yet (no dispatcher has looked: nothing to judge by)."""
    if not nodes or any(need.fits(node) for node in nodes):
        return None
    shapes = "; ".join(sorted({node.describe() for node in nodes}))
    if not any(need.gpus <= node.gpus for node in nodes):
        field, missing = "resources.gpus_per_fold", f"{need.gpus:g} GPU"
    elif not any(need.cpus <= node.cpus for node in nodes):
        field, missing = "resources.cpus_per_fold", f"{need.cpus:g} CPU"
    else:
        field, missing = "resources", f"{need.cpus:g} CPU and {need.gpus:g} GPU together"
    return field, f"no node of the cluster has {missing} for a fold; its nodes have: {shapes}"


def check_runnable(spec: JobSpec, nodes: list[NodeShape]) -> None:
    """Refuse (InvalidJob, a 422) a job no node of the cluster could run a fold of."""
    if (found := refusal(Need.of(spec), nodes)) is not None:
        raise InvalidJob(*found)


# -- What the dispatcher writes and reads ---------------------------------------------------

def publish(session: Session, nodes: list[NodeShape]) -> None:
    """The alive nodes as Ray sees them now, in place of the last ones seen."""
    seen = datetime.now(timezone.utc)
    session.execute(delete(ClusterNode))
    session.add_all(ClusterNode(node_id=n.node_id, cpus=n.cpus, gpus=n.gpus, seen_at=seen) for n in nodes)
    session.commit()


def known_nodes(session: Session) -> list[NodeShape]:
    fresh = datetime.now(timezone.utc) - STALE_AFTER
    return [NodeShape(n.node_id, n.cpus, n.gpus)
            for n in session.scalars(select(ClusterNode).where(ClusterNode.seen_at >= fresh))]


def room(session: Session, total: Need) -> Need:
    """The cluster's CPUs and GPUs less what running jobs' unfinished folds ask for (a
    packed job's folds are one task). May be negative: folds queued in Ray."""
    cpus, gpus = total.cpus, total.gpus
    tasks = session.execute(
        select(Job.id, Job.spec, Fold.index).join(Fold, Fold.job_id == Job.id)
        .where(Job.status == JobStatus.RUNNING, Fold.status.not_in(FINISHED_FOLD)))
    counted_packs = set()
    for job_id, spec, _ in tasks:
        if spec.get("pack_folds"):
            if job_id in counted_packs:
                continue
            counted_packs.add(job_id)
        need = spec.get("resources", {})
        cpus -= need.get("cpus_per_fold", 1)
        gpus -= need.get("gpus_per_fold", 0)
    return Need(cpus, gpus)


# -- What the API reads, a few seconds old at most ----------------------------------------

class KnownNodes:
    """The published nodes, read again from the database once `max_age_s` has passed
    (every EMPTY_RETRY_S while none is known): submissions under load need not each cost
    a query. Should the database be away, the nodes last read are kept: the submission's
    own write then fails and says so (503, nothing stored)."""

    def __init__(self, sessions: sessionmaker[Session], max_age_s: float = 5.0):
        self.sessions, self.max_age_s = sessions, max_age_s
        self.nodes: list[NodeShape] = []
        self.read_at = float("-inf")
        self.lock = threading.Lock()

    def current(self) -> list[NodeShape]:
        with self.lock:
            if time.monotonic() - self.read_at >= (self.max_age_s if self.nodes else EMPTY_RETRY_S):
                self.read_at = time.monotonic()
                try:
                    with self.sessions() as session:
                        self.nodes = known_nodes(session)
                except SQLAlchemyError as error:
                    log.debug("could not read the cluster's nodes: %s", error)
            return self.nodes

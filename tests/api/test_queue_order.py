"""The queue's order end to end but for Ray: jobs submitted over HTTP by several owners,
claimed by the dispatcher's own loop (Dispatcher.claim_jobs, with its limits, its count
of active jobs and the cluster's room), on SQLite and on PostgreSQL. Only Ray is left
out: the cluster is one node's shape, and a claimed job is recorded as started, not run
(tests/test_end_to_end.py runs jobs)."""
from fastapi.testclient import TestClient

from api.main import create_app
from services.auth import create_key
from services.capacity import NodeShape
from services.dispatcher import ActiveJob, Dispatcher
from tests.helpers import small_job


class OneNode:
    """The one thing the claim loop asks of the cluster: its nodes."""

    @staticmethod
    def nodes() -> list[NodeShape]:
        return [NodeShape("node-1", cpus=64, gpus=0)]


class StartsNothing(Dispatcher):
    """The dispatcher up to its Ray tasks: what it claims is held as active, as a started
    job is, and its name recorded."""

    def __init__(self, **kwargs):
        super().__init__(cluster=OneNode(), tracker=None, store=None, **kwargs)
        self.started: list[str] = []

    def start_job(self, session, job, *, adopted: bool = False) -> None:
        self.started.append(job.name)
        self.active[job.id] = ActiveJob(job.id)


def test_the_dispatcher_starts_the_highest_priority_then_each_owner_in_turn(settings, sessions):
    with sessions() as session:
        keys = {owner: create_key(session=session, owner=owner) for owner in ("alice", "bob", "carol")}
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as client:
        def submit(owner: str, name: str, **spec) -> dict:
            answer = client.post("/jobs", json=small_job(name=name, **spec),
                                 headers={"Authorization": f"Bearer {keys[owner]}"})
            assert answer.status_code == 201, answer.text
            return answer.json()

        for i in range(6):
            submit("alice", f"alice-{i}")
        submit("bob", "bob-0"), submit("bob", "bob-1")
        urgent = submit("carol", "carol-urgent", priority=10)
        assert urgent["priority"] == 10 and urgent["spec"]["priority"] == 10
        dispatcher = StartsNothing(sessions=sessions, max_active_jobs=5, limits=settings.default_limits())
        with sessions() as session:
            dispatcher.look_at_nodes(session)
            dispatcher.claim_jobs(session)
        assert dispatcher.started == ["carol-urgent", "alice-0", "bob-0", "alice-1", "bob-1"]
        shown = client.get(f"/jobs/{urgent['id']}", headers={"Authorization": f"Bearer {keys['carol']}"}).json()
        assert (shown["status"], shown["priority"]) == ("running", 10)
        listed = client.get("/jobs", headers={"Authorization": f"Bearer {keys['alice']}"}).json()["items"]
        assert {job["priority"] for job in listed} == {0}

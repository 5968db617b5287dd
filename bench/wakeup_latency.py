"""Submit → running latency, and a tiny job's run time, with and without wakeups.

The dispatcher used to sleep its poll interval (0.5 s by default) between ticks; now a
submission wakes it (in-process in `crossfold serve`, NOTIFY on PostgreSQL) and so does
a fold task that returns. Each row: N tiny jobs (iris, 3 folds, 2 epochs) submitted one
at a time, each after a random pause (so submissions fall anywhere in the poll), each
run to its end before the next. "before" is the old loop (a fixed wait), on the same
code otherwise. Latency: from just before the submission's transaction to the job's
started_at (set when it is claimed); run time: started_at to finished_at.
Writes bench/results/wakeup_latency.json.

    python bench/wakeup_latency.py [--jobs 10] [--poll 0.5]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from bench_output import write_results  # bench/bench_output.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.cluster import Cluster  # noqa: E402
from services.database import make_engine, session_factory, upgrade_schema  # noqa: E402
from services.dataset_store import DatasetStore  # noqa: E402
from services.datasets import register_bundled  # noqa: E402
from services.dispatcher import Dispatcher  # noqa: E402
from services.job_data import resolve  # noqa: E402
from services.models import LOCAL_OWNER, Job  # noqa: E402
from services.spec import JobSpec  # noqa: E402
from services.states import FINISHED_JOB, JobStatus  # noqa: E402
from services.submissions import prepare, store  # noqa: E402
from services.tracking import Tracker  # noqa: E402
from services.wakeups import Wakeup  # noqa: E402

JOB = JobSpec.model_validate({"name": "wake", "dataset": "iris", "model": {"type": "mlp", "hidden": [16]},
                              "optimizer": {"name": "adam", "lr": 0.01}, "max_epochs": 2, "cv": {"folds": 3}})
MODES = [("sqlite", "before: poll"), ("sqlite", "in-process signal"),
         ("postgresql", "before: poll"), ("postgresql", "NOTIFY")]


class PollingDispatcher(Dispatcher):
    """The loop before wakeups: a fixed wait of the poll interval between ticks."""

    def pause(self, stop: threading.Event) -> None:
        stop.wait(self.poll_interval_s)


@contextmanager
def database(kind: str, folder: Path, admin_url: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'jobs-{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"crossfold_wake_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def submit(sessions, wakeup: Wakeup | None) -> tuple[str, float]:
    """(job id, the time just before it was stored); the API's in-process signal after
    the commit, when it shares the dispatcher's wakeup."""
    with sessions() as session:
        submission = prepare(JOB, resolve(JOB, session=session, owner=LOCAL_OWNER))
        began = time.time()
        job, _ = store(session, [submission])[0]
    if wakeup is not None:
        wakeup.notify()
    return job.id, began


def finished(sessions, job_id: str, timeout_s: float = 120) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job.status in FINISHED_JOB:
                return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


def run_mode(kind: str, mode: str, folder: Path, args, cluster: Cluster, tracker: Tracker) -> dict:
    with database(kind, folder, args.postgres) as url:
        engine = make_engine(url)
        upgrade_schema(engine)
        sessions, datasets = session_factory(engine), DatasetStore(str(folder / "datasets"))
        with sessions() as session:
            register_bundled(session=session, store=datasets)
        shared = Wakeup() if mode == "in-process signal" else None
        kind_of = PollingDispatcher if mode.startswith("before") else Dispatcher
        dispatcher = kind_of(sessions=sessions, cluster=cluster, tracker=tracker, store=datasets,
                             max_active_jobs=1, poll_interval_s=args.poll, wakeup=shared)
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True)
        thread.start()
        latencies, run_times = [], []
        try:
            for _ in range(args.jobs + 1):  # the first warms Ray's workers up: not counted
                time.sleep(random.uniform(0, args.poll))
                job_id, began = submit(sessions, shared)
                job = finished(sessions, job_id)
                assert job.status is JobStatus.SUCCEEDED, job.error
                latencies.append(job.started_at.timestamp() - began)
                run_times.append((job.finished_at - job.started_at).total_seconds())
        finally:
            stop.set()
            thread.join(timeout=30)
            engine.dispose()
    return summary(kind, mode, latencies[1:], run_times[1:])


def summary(kind: str, mode: str, latencies: list[float], run_times: list[float]) -> dict:
    ms = sorted(1000 * v for v in latencies)
    return {"database": kind, "wakeup": mode, "jobs": len(ms), "start_p50_ms": statistics.median(ms),
            "start_mean_ms": statistics.mean(ms), "start_max_ms": ms[-1],
            "run_p50_s": statistics.median(run_times), "run_mean_s": statistics.mean(run_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per row")
    parser.add_argument("--poll", type=float, default=0.5, help="the poll interval, s (the default setting)")
    parser.add_argument("--postgres", default=os.environ.get(
        "CROSSFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="crossfold-wake-") as tmp:
        folder = Path(tmp)
        tracker = Tracker(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", artifacts_dir=folder / "artifacts")
        tracker.ensure_store()  # once, for every row
        cluster = Cluster(checkpoints=str(folder / "checkpoints"))
        rows = [run_mode(kind, mode, folder, args, cluster, tracker) for kind, mode in MODES]
    print(f"poll interval {args.poll} s; {args.jobs} jobs a row")
    print(f"{'database':<11} {'wakeup':<18} {'start p50 ms':>12} {'mean ms':>8} {'max ms':>7} "
          f"{'run p50 s':>9} {'mean s':>7}")
    for r in rows:
        print(f"{r['database']:<11} {r['wakeup']:<18} {r['start_p50_ms']:>12.0f} {r['start_mean_ms']:>8.0f} "
              f"{r['start_max_ms']:>7.0f} {r['run_p50_s']:>9.2f} {r['run_mean_s']:>7.2f}")
    write_results("wakeup_latency", {"poll_interval_s": args.poll, "jobs_per_row": args.jobs, "rows": rows})


if __name__ == "__main__":
    main()

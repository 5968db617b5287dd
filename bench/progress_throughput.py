"""Progress throughput: epochs from 100 concurrent fold tasks into PostgreSQL and MLflow.

100 fold tasks (20 jobs × 5 folds, one Ray task each) that train nothing: each reports its
epochs to the real progress board as fast as the board takes them (each report awaited
before the next; or one every --interval-ms). The real dispatcher claims the jobs, creates
their MLflow runs, reads the board and stores every epoch: the fold's latest figures in
PostgreSQL, its metrics in a real `mlflow server` process (MLflow's default 4 workers)
whose backend store is PostgreSQL too. Only the fold task is the bench's own: the
Cluster's submit starts it instead of the training task.

Figures: stored epoch events/s (from the first report to the last stored), and the lag
from report (the event's time_ms, stamped in the task) to storage (the dispatcher
acknowledging it on the board, which it does once MLflow and the database hold it):
p50, p99, max. Then checks that each fold's run holds each epoch once, and prints a table;
writes bench/results/progress_throughput.json.

    python bench/progress_throughput.py [--jobs 20] [--folds 5] [--epochs 300]
        [--interval-ms 0] [--timeout 600] [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
import ray
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_output import write_results  # noqa: E402  (bench/bench_output.py, beside this script)

from services.cluster import Cluster  # noqa: E402
from services.database import make_engine, session_factory, upgrade_schema  # noqa: E402
from services.dataset_store import DatasetStore  # noqa: E402
from services.datasets import register_bundled  # noqa: E402
from services.dispatcher import Dispatcher  # noqa: E402
from services.job_data import resolve  # noqa: E402
from services.models import Job  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.spec import JobSpec  # noqa: E402
from services.states import FINISHED_JOB  # noqa: E402
from services.submissions import prepare, store as store_jobs  # noqa: E402
from services.tracking import Tracker  # noqa: E402
from tests.helpers import free_port, mlflow_server  # noqa: E402
from workers.events import EpochEnded, FoldStarted  # noqa: E402
from workers.results import Ending, FoldResult  # noqa: E402

TARGETS = {"events_per_s": 2000, "p99_lag_s": 2.0}
MLFLOW_WORKERS = 4  # `mlflow server`'s default, as docker-compose.yml runs it


# -- The fold task: reports epochs, trains nothing ------------------------------------
@ray.remote(num_cpus=0)
class Gate:
    """Holds every task until all have started (starting 100 worker processes takes a
    while), so that they report together."""

    def __init__(self, tasks: int):
        self.waiting, self.open = tasks, asyncio.Event()

    async def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.open.set()
        await self.open.wait()


def metrics_of(epoch: int) -> dict[str, float]:
    """What a classification fold reports each epoch (workers.training)."""
    loss = 1.0 / epoch
    return {"train_loss": loss, "train_loss_ewma": loss * 1.1, "train_loss_ewma_corrected": loss * 1.05,
            "val_loss": loss * 1.2, "val_accuracy": 1.0 - loss / 2}


@ray.remote
def report_only(job_id: str, fold: int, board, gate, epochs: int, interval_s: float) -> list[FoldResult]:
    """A fold task's reports (as workers.task sends them through BoardClient.report, one
    board.report call each), without its training."""
    node = ray.get_runtime_context().get_node_id()
    board.report.remote(FoldStarted(job_id, fold, "cpu", f"bench:{os.getpid()}", 0, node))
    ray.get(gate.arrive.remote())
    for epoch in range(1, epochs + 1):
        ray.get(board.report.remote(EpochEnded(job_id, fold, epoch, metrics_of(epoch), best_epoch=epoch,
                                               time_ms=int(time.time() * 1000))))
        if interval_s:
            time.sleep(interval_s)
    return [FoldResult(fold, Ending.SUCCEEDED, best_epoch=epochs, epochs_run=epochs,
                       best_metrics=metrics_of(epochs))]


class ReportOnlyCluster(Cluster):
    """The real Cluster and progress board, whose fold tasks only report. Notes when the
    dispatcher acknowledges each epoch: it has stored it then."""

    def __init__(self, *, tasks: int, epochs: int, interval_s: float, **options):
        super().__init__(**options)
        self.gate, self.epochs, self.interval_s = Gate.remote(tasks), epochs, interval_s
        self.read: dict[str, list] = {}
        self.read_at = 0.0
        self.stored: list[tuple[float, float]] = []  # (stored at, its report's time) per epoch
        self.ticks: list[tuple[float, int]] = []  # (seconds from reading to acknowledging, events)

    def submit(self, source, plans, config, job_id):
        return {report_only.remote(job_id, plan.index, self.board, self.gate, self.epochs, self.interval_s):
                [plan.index] for plan in plans}

    def pending_progress(self, job_ids):
        self.read_at = time.time()
        self.read = super().pending_progress(job_ids)
        return self.read

    def acknowledge_progress(self, counts):
        super().acknowledge_progress(counts)
        stored = time.time()
        self.ticks.append((stored - self.read_at, sum(counts.values())))
        for job_id, count in counts.items():
            self.stored += [(stored, event.time_ms / 1000) for event in self.read[job_id][:count]
                            if isinstance(event, EpochEnded)]


# -- The bench ---------------------------------------------------------------------
@contextmanager
def databases(admin_url: str, names: list[str]):
    """Fresh PostgreSQL databases, dropped afterwards: their URLs."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [admin_url.rsplit("/", 1)[0] + f"/{name}" for name in names]
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def queue_jobs(sessions, n_jobs: int, folds: int, epochs: int) -> list[str]:
    spec = JobSpec.model_validate({"name": "progress", "dataset": "iris", "max_epochs": epochs,
                                   "model": {"type": "mlp", "hidden": [16]}, "optimizer": {"name": "adam", "lr": 0.01},
                                   "cv": {"folds": folds}})
    with sessions() as session:
        data = resolve(spec, session=session, owner="local")
        outcomes = store_jobs(session, [prepare(spec, data) for _ in range(n_jobs)])
        return [outcome[0].id for outcome in outcomes]


def run(admin_url: str, n_jobs: int, folds: int, epochs: int, interval_ms: float, timeout_s: float,
        folder: Path) -> dict:
    tag, port = uuid.uuid4().hex[:8], free_port()
    names = [f"crossfold_progress_{tag}", f"mlflow_progress_{tag}"]
    with databases(admin_url, names) as (jobs_url, mlflow_url), \
            mlflow_server(folder / "mlflow", port, workers=MLFLOW_WORKERS, startup_s=300,
                          backend_store=mlflow_url.replace("postgresql://", "postgresql+psycopg://")) as server:
        settings = Settings(data_dir=folder / "data", database_url=jobs_url, mlflow_tracking_uri=server)
        engine = make_engine(jobs_url)
        upgrade_schema(engine)
        sessions = session_factory(engine)
        datasets = DatasetStore(settings.resolved_dataset_store())
        with sessions() as session:
            register_bundled(session=session, store=datasets)
        job_ids = queue_jobs(sessions, n_jobs, folds, epochs)
        tasks = n_jobs * folds
        ray.init(num_cpus=tasks, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            cluster = ReportOnlyCluster(tasks=tasks, epochs=epochs, interval_s=interval_ms / 1000,
                                        checkpoints=settings.resolved_checkpoint_store())
            tracker = Tracker(tracking_uri=server)
            dispatcher = Dispatcher(sessions=sessions, cluster=cluster, tracker=tracker, store=datasets,
                                    max_active_jobs=n_jobs, poll_interval_s=settings.poll_interval_s,
                                    limits=replace(settings.default_limits(), max_running_folds=tasks))
            cpu = CpuMeter(port, names)
            began = time.time()
            stop = threading.Event()
            thread = threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True)
            thread.start()
            finished = wait_finished(sessions, job_ids, timeout=timeout_s)
            ended = time.time()
            cpu_s = cpu.used()
            stop.set()
            thread.join(timeout=60)
            duplicates, missing = check_runs(sessions, tracker, epochs)
        finally:
            ray.shutdown()
            engine.dispose()
    return {**figures(cluster.stored, tasks * epochs, began, ended, finished, duplicates, missing,
                      jobs=n_jobs, folds=folds, epochs=epochs, interval_ms=interval_ms),
            **tick_figures(cluster.ticks), **cpu_figures(cpu_s, len(cluster.stored))}


def wait_finished(sessions, job_ids: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            done = session.scalar(select(func.count(Job.id)).where(Job.id.in_(job_ids),
                                                                    Job.status.in_(FINISHED_JOB)))
        if done == len(job_ids):
            return done
        time.sleep(1)
    return done


def check_runs(sessions, tracker: Tracker, epochs: int) -> tuple[int, int]:
    """(epochs logged more than once, epochs missing) over every fold's run: val_loss."""
    duplicates = missing = 0
    with sessions() as session:
        runs = [fold.mlflow_run_id for job in session.scalars(select(Job)) for fold in job.folds]
    for run_id in runs:
        steps = [m.step for m in tracker.client.get_metric_history(run_id, "val_loss")]
        duplicates += len(steps) - len(set(steps))
        missing += len(set(range(1, epochs + 1)) - set(steps))
    return duplicates, missing


class CpuMeter:
    """CPU seconds used from now on by the MLflow server (its process group), by the
    PostgreSQL backends of each database, and by this process (the dispatcher). Linux's
    /proc; a backend that ends meanwhile takes its seconds with it (pools keep theirs)."""

    def __init__(self, port: int, databases: list[str]):
        self.port, self.databases = port, databases
        self.start = self.sample()

    def sample(self) -> dict[str, float]:
        stats = dict(process_stats())
        leaders = [pid for pid, (_, command) in stats.items()
                   if "mlflow" in command and "server" in command and str(self.port) in command]
        groups = {stats[pid][0][2] for pid in leaders}
        sample = {"mlflow_server": sum(cpu_of(fields) for fields, _ in stats.values() if fields[2] in groups)}
        for name in self.databases:
            sample[f"postgres:{name.split('_')[0]}"] = sum(
                cpu_of(fields) for fields, command in stats.values()
                if command.startswith("postgres:") and f" {name} " in command)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sample["dispatcher_process"] = usage.ru_utime + usage.ru_stime
        return sample

    def used(self) -> dict[str, float]:
        return {name: value - self.start.get(name, 0.0) for name, value in self.sample().items()}


def process_stats():
    """(pid, (the fields of /proc/pid/stat after its name, its command line)) of every process."""
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
            command = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(folder.name), (fields, command)


def cpu_of(fields: list[str]) -> float:
    """utime + stime, and those of children waited for (fields 14 to 17 of /proc/pid/stat)."""
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tick_figures(ticks: list[tuple[float, int]]) -> dict:
    """The dispatcher's progress ticks: from reading the board to acknowledging it."""
    seconds = [s for s, _ in ticks]
    return {"ticks": len(ticks), "tick_s_p50": statistics.median(seconds), "tick_s_max": max(seconds),
            "events_per_tick_max": max(n for _, n in ticks)}


def cpu_figures(cpu_s: dict[str, float], events: int) -> dict:
    """CPU milliseconds each stored epoch cost, where: what a faster machine divides."""
    return {"cpu_s": cpu_s, "cpu_ms_per_event": {name: 1000 * value / max(events, 1)
                                                 for name, value in cpu_s.items()}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(stored: list[tuple[float, float]], expected: int, began: float, ended: float, finished: int,
            duplicates: int, missing: int, **setup) -> dict:
    """Rates over the time from the first report to the last stored, or to the bench's
    timeout when some were never stored (their lags then missing from the percentiles)."""
    lags = [at - reported for at, reported in stored]
    first_report = min(reported for _, reported in stored)
    span = (max(at for at, _ in stored) if len(stored) == expected else ended) - first_report
    return {**setup, "events_expected": expected, "events_stored": len(stored), "complete": len(stored) == expected,
            "jobs_finished": finished,
            "mlflow_duplicates": duplicates, "mlflow_missing": missing,
            "startup_s": first_report - began, "seconds": span, "events_per_s": len(stored) / span,
            "reported_per_s": len(stored) / (max(r for _, r in stored) - first_report),
            "lag_p50_s": statistics.median(lags), "lag_p99_s": percentile(lags, 0.99), "lag_max_s": max(lags),
            "targets": TARGETS, "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300, help="epochs each fold reports")
    parser.add_argument("--interval-ms", type=float, default=0, help="pause between a fold's reports")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every job to end")
    parser.add_argument("--postgres", default=os.environ.get(
        "CROSSFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crossfold-progress-") as folder:
        result = run(args.postgres, args.jobs, args.folds, args.epochs, args.interval_ms, args.timeout,
                     Path(folder))
    print(f"{'tasks':>6} {'events':>7} {'stored':>7} {'dupes':>6} {'missing':>8} {'events/s':>9} "
          f"{'reported/s':>11} {'p50 lag s':>10} {'p99 lag s':>10} {'max lag s':>10}")
    print(f"{args.jobs * args.folds:>6} {result['events_expected']:>7} {result['events_stored']:>7} "
          f"{result['mlflow_duplicates']:>6} {result['mlflow_missing']:>8} {result['events_per_s']:>9.0f} "
          f"{result['reported_per_s']:>11.0f} {result['lag_p50_s']:>10.2f} {result['lag_p99_s']:>10.2f} "
          f"{result['lag_max_s']:>10.2f}")
    write_results("progress_throughput", result)


if __name__ == "__main__":
    main()

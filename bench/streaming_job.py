"""A 5-fold job over HTTP on a generated 10,000,000-row dataset, streamed, on this machine.

Starts `crossfold serve --no-ui` (API, dispatcher, a local Ray, the MLflow store) in a
fresh data folder, submits a synthetic dataset of `--rows` rows × 64 features with
`data_loading: "stream"`, 2 epochs, MLP 64-256-256-10 with batch norm and dropout, Adam,
batch 256, and follows it to its end. Meanwhile it reads every process of the service
(the API and dispatcher process, Ray's workers and daemons) once a second, keeping each
one's peak resident memory (VmHWM). Prints the job's wall time and the peaks; writes
bench/results/streaming_job.json.

    python bench/streaming_job.py [--rows 10000000] [--folder /tmp/crossfold-streaming-job]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from bench_output import write_results  # bench/bench_output.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def job(rows: int) -> dict:
    return {"name": "streaming-10m", "data_loading": "stream",
            "dataset": {"name": "synthetic", "rows": rows, "features": 64, "classes": 10, "seed": 0},
            "model": {"type": "mlp", "hidden": [256, 256], "batch_norm": True, "dropout": 0.2},
            "optimizer": {"name": "adam", "lr": 0.001}, "batch_size": 256, "max_epochs": 2,
            "cv": {"folds": 5, "seed": 0}, "checkpoint_interval_s": 60}


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += map(int, children)
        frontier += map(int, children)
    return found


def peak_and_name(pid: int) -> tuple[int, str] | None:
    """The process's peak resident memory (bytes) and its command, or None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), None)
    return None if kib is None else (kib * 1024, command)  # a zombie has no memory left to report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/crossfold-streaming-job"))
    parser.add_argument("--port", type=int, default=8771)
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(args.folder), "CROSSFOLD_API_PORT": str(args.port),
           "CROSSFOLD_MAX_ACTIVE_JOBS": "1"}
    service = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--no-ui"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks: dict[int, tuple[int, str]] = {}
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_until(lambda: answers(f"{url}/healthz"), 180)
        started = time.monotonic()
        submitted = httpx.post(f"{url}/jobs", json=job(args.rows), timeout=60).json()
        status = follow(url, submitted["id"], service.pid, peaks)
        wall = time.monotonic() - started
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
    report(status, wall, peaks, args.rows)


def follow(url: str, job_id: str, root: int, peaks: dict) -> dict:
    """Poll the job to its end, noting every service process's peak memory meanwhile."""
    while True:
        for pid in [root, *descendants(root)]:
            if (found := peak_and_name(pid)) is not None:
                peaks[pid] = max(found, peaks.get(pid, (0, "")))
        status = httpx.get(f"{url}/jobs/{job_id}", timeout=60).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(1.0)


def report(status: dict, wall: float, peaks: dict, rows: int) -> None:
    print(f"job {status['status']} in {wall:,.0f} s; data_loading {status['data_loading']}; "
          f"test accuracy {status['summary'].get('test_accuracy_mean', float('nan')):.4f}")
    for fold in status["folds"]:
        print(f"  fold {fold['index']}: {fold['status']}, {fold['epoch']} epochs, {fold['test_metrics']}")
    ranked = sorted(peaks.items(), key=lambda item: -item[1][0])
    for pid, (peak, command) in ranked:
        print(f"  {peak / 2**20:>8,.0f} MiB  {pid:>7}  {command}")
    write_results("streaming_job", {
        "rows": rows, "status": status["status"], "wall_s": wall, "summary": status["summary"],
        "error": status["error"], "folds": [{k: f[k] for k in ("index", "status", "epoch", "test_metrics")}
                                            for f in status["folds"]],
        "peaks": [{"pid": pid, "peak_rss_bytes": peak, "command": command} for pid, (peak, command) in ranked]})


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout} s")
        time.sleep(0.5)


if __name__ == "__main__":
    main()

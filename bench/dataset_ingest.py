"""Dataset ingest: a large CSV uploaded over HTTP, against the same conversion by hand.

Generates a CSV of --rows rows × 50 columns (46 numbers, 3 strings, a 3-class label),
then, in one run:
- uploads it to a running API (`crossfold api`, its own process, SQLite) and reports MB/s
  and the API process's peak memory growth while it received, converted and described
  the file (it converts while the file arrives);
- converts it as a user would write it, `pandas.read_csv` then `to_parquet`, in a
  process of its own, and reports its time and peak memory growth;
- runs a 5-fold job on the uploaded dataset (a `crossfold dispatcher` with its own
  local Ray joins the API's database), which must succeed.
Targets: crossfold at least as fast as the pandas path, with at most a quarter of its
peak memory. Writes bench/results/dataset_ingest.json.

    python bench/dataset_ingest.py [--rows 1000000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
from bench_output import write_results  # bench/bench_output.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import JobsClient  # noqa: E402

NUMBERS, STRINGS = 46, 3
PANDAS = """
import sys, time, pandas
from pathlib import Path
def peak(): return int(next(l for l in Path("/proc/self/status").read_text().splitlines()
                            if l.startswith("VmHWM")).split()[1]) * 1024
def now(): return int(next(l for l in Path("/proc/self/status").read_text().splitlines()
                           if l.startswith("VmRSS")).split()[1]) * 1024
before = now()
began = time.perf_counter()
pandas.read_csv(sys.argv[1]).to_parquet(sys.argv[2])
print(time.perf_counter() - began, peak() - before)
"""


def make_csv(path: Path, rows: int, seed: int = 0) -> None:
    """Numbers, a few strings, and a label the numbers and strings predict."""
    rng = np.random.default_rng(seed)
    columns, chunk = {}, 250_000
    with pv.CSVWriter(path, pa.schema([*(pa.field(f"x{i}", pa.float64()) for i in range(NUMBERS)),
                                        *(pa.field(f"s{i}", pa.string()) for i in range(STRINGS)),
                                        pa.field("label", pa.string())])) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, NUMBERS)).round(5)
            kinds = rng.integers(0, 8, size=(n, STRINGS))
            score = x[:, 0] + x[:, 1] - x[:, 2] + (kinds[:, 0] > 3)
            label = np.where(score < -0.5, "low", np.where(score < 1.0, "mid", "high"))
            columns = {**{f"x{i}": x[:, i] for i in range(NUMBERS)},
                       **{f"s{i}": np.array([f"kind-{k}" for k in kinds[:, i]]) for i in range(STRINGS)},
                       "label": label}
            writer.write_table(pa.table(columns))


def memory(pid: int, field: str) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) * 1024


def start(command: str, folder: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "CROSSFOLD_DATA_DIR": str(folder / "data"), "CROSSFOLD_API_PORT": str(port),
           "CROSSFOLD_RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "api.cli", command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def upload(csv: Path, folder: Path, port: int, epochs: int) -> dict:
    api = start("api", folder, port)
    client = JobsClient(f"http://127.0.0.1:{port}", timeout=600)
    dispatcher = None
    try:
        deadline = time.monotonic() + 120
        while not client.healthy():
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.5)
        before = memory(api.pid, "VmRSS")
        began = time.perf_counter()
        dataset = client.upload_dataset(csv)
        seconds = time.perf_counter() - began
        growth = memory(api.pid, "VmHWM") - before
        dispatcher = start("dispatcher", folder, port)
        job = run_job(client, dataset["id"], epochs)
    finally:
        for process in (dispatcher, api):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)
    return {"seconds": seconds, "mb_per_s": csv.stat().st_size / 2**20 / seconds, "peak_growth": growth,
            "rows": dataset["rows"], "columns": len(dataset["columns"]), "stored_bytes": dataset["size"],
            "job": job}


def run_job(client: JobsClient, dataset_id: str, epochs: int) -> dict:
    spec = {"name": "ingest-bench", "dataset": {"id": dataset_id, "label": "label"},
            "optimizer": {"name": "adam", "lr": 0.001}, "model": {"type": "mlp", "hidden": [64]},
            "batch_size": 1024, "max_epochs": epochs, "cv": {"folds": 5}}
    began = time.perf_counter()
    job = client.submit(spec)
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client.get(job["id"])
    return {"status": job["status"], "seconds": time.perf_counter() - began, "error": job["error"],
            "test_accuracy_mean": (job["summary"] or {}).get("test_accuracy_mean")}


def pandas_path(csv: Path, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PANDAS, str(csv), str(folder / "pandas.parquet")],
                         capture_output=True, text=True, check=True).stdout.split()
    seconds, growth = float(out[0]), int(out[1])
    return {"seconds": seconds, "mb_per_s": csv.stat().st_size / 2**20 / seconds, "peak_growth": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2, help="of the 5-fold job on the upload")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        csv = folder / "big.csv"
        make_csv(csv, args.rows)
        size = csv.stat().st_size
        print(f"CSV: {args.rows:,} rows × {NUMBERS + STRINGS + 1} columns, {size / 2**20:,.0f} MiB", flush=True)
        by_hand = pandas_path(csv, folder)
        crossfold = upload(csv, folder, args.port, args.epochs)
    print(f"{'path':<24} {'seconds':>8} {'MB/s':>7} {'peak memory growth':>19}")
    for label, figures in (("crossfold upload", crossfold), ("pandas read + parquet", by_hand)):
        print(f"{label:<24} {figures['seconds']:>8.1f} {figures['mb_per_s']:>7.1f} "
              f"{figures['peak_growth'] / 2**20:>15,.0f} MiB")
    speed = crossfold["mb_per_s"] / by_hand["mb_per_s"]
    share = crossfold["peak_growth"] / by_hand["peak_growth"]
    print(f"speed vs pandas {speed:.2f} (target ≥ 1), memory vs pandas {share:.2f} (target ≤ 0.25)")
    job = crossfold["job"]
    print(f"5-fold job on the upload: {job['status']} in {job['seconds']:.0f} s, "
          f"test accuracy {job['test_accuracy_mean']}")
    write_results("dataset_ingest", {"rows": args.rows, "csv_bytes": size, "crossfold": crossfold,
                                     "pandas": by_hand, "speed_ratio": speed, "memory_ratio": share})
    if job["status"] != "succeeded":
        sys.exit(f"the job failed: {job['error']}")


if __name__ == "__main__":
    main()

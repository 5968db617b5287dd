"""Streaming against memory: peak memory flat in the number of rows, and the speed of a
streamed epoch against the in-memory core.

Generates Parquet datasets of 1,000,000 and 10,000,000 rows × 64 float32 features (10
classes around fixed centroids; row groups of 131,072 rows), then, each in a process of
its own, trains one fold for one epoch (MLP 64-256-256-10 with batch norm and dropout,
Adam, batch 256) streamed; on the 1M dataset it also runs the in-memory core. Each
process reports its peak resident memory (getrusage) and the training pass's samples/s.
Prints a table; writes bench/results/streaming.json.

    python bench/streaming.py [--sizes 1000000 10000000] [--folder /tmp/crossfold-streaming]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_output import write_results  # noqa: E402  (bench/bench_output.py, beside this script)

FEATURES, CLASSES, GROUP_ROWS, FOLDS = 64, 10, 131_072, 5
TARGETS = {"peak_10m_over_1m": 1.15, "peak_bytes": 2**30, "stream_over_memory_speed": 0.8}


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Learnable data, written a row group at a time (never the whole table in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    centroids = np.random.default_rng(seed).normal(size=(CLASSES, FEATURES)).astype(np.float32)
    schema = pa.schema([*(pa.field(f"f{i}", pa.float32()) for i in range(FEATURES)), pa.field("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for chunk, start in enumerate(range(0, rows, GROUP_ROWS)):
            rng = np.random.default_rng([seed, chunk])
            n = min(GROUP_ROWS, rows - start)
            y = rng.integers(0, CLASSES, n)
            x = centroids[y] + rng.normal(size=(n, FEATURES)).astype(np.float32)
            writer.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(FEATURES)}, "label": y},
                                        schema=schema))


def fold_map(rows: int) -> np.ndarray:
    # int8 from the start, as a fold task reads its fold map: no int64 array of every row
    return np.random.default_rng(1).integers(0, FOLDS, rows, dtype=np.int8)


def config():
    from workers.config import AdamConfig, MLPConfig, ResourcesConfig, StoppingConfig, TrainingConfig
    return TrainingConfig(model=MLPConfig((256, 256), batch_norm=True, dropout=0.2),
                          optimizer=AdamConfig(lr=0.001, beta1=0.9, beta2=0.98, eps=1e-8, bias_correction=True),
                          batch_size=256, max_epochs=1, early_stopping=StoppingConfig("val_loss", 10, 0.0),
                          seed=0, loss_ewma_beta=0.9, checkpoint_interval_s=0, pack_folds=False,
                          resources=ResourcesConfig(cpus_per_fold=2, gpus_per_fold=0),
                          data_loading="stream", shuffle_buffer_rows=65_536)


def child(mode: str, path: str) -> dict:
    """One fold's training pass, in this process: (samples/s, rows trained)."""
    import torch

    from workers.plans import DataInfo, FoldPlan
    from workers.stream.source import ParquetSource
    torch.set_num_threads(2)
    source = ParquetSource(path, [f"f{i}" for i in range(FEATURES)], "label")
    plan = FoldPlan(0, fold_map(source.rows), FOLDS)
    info = DataInfo("classification", (FEATURES,), CLASSES, tuple(range(CLASSES)))
    run = train_streamed if mode == "stream" else train_in_memory
    seconds, trained = run(source, info, plan)
    return {"samples_per_s": trained / seconds, "rows_trained": trained, "seconds": seconds}


def model_and_optimizer(info, task):
    import torch
    from workers.models import build_model
    from workers.optimizers import build_optimizer
    torch.manual_seed(0)
    model = build_model(config().model, info.input_shape, task.n_outputs)
    return model, build_optimizer(model.parameters(), config().optimizer)


def train_streamed(source, info, plan) -> tuple[float, int]:
    import torch

    from workers.encoding import encode_with
    from workers.stream.fold import Rows, StreamedData, train_streamed_epoch
    from workers.stream.stats import fit_encoding
    from workers.tasks import Classification
    rows = Rows.of(plan)
    encoding = fit_encoding(source, rows.train)
    data = StreamedData(source, rows, lambda t: (encode_with(t.features, encoding), t.label.astype(np.int64)),
                        config().shuffle_buffer_rows)
    task = Classification(CLASSES)
    model, optimizer = model_and_optimizer(info, task)
    start = time.perf_counter()
    train_streamed_epoch(model, optimizer, task, data, 256, epoch_seed=0, device=torch.device("cpu")).item()
    return time.perf_counter() - start, int(rows.train.sum())


def train_in_memory(source, info, plan) -> tuple[float, int]:
    import torch

    from workers.fold import prepare, to_split
    from workers.table import read_table
    from workers.training import train_one_epoch
    table = read_table(source.uri, source.features, source.label)
    data = prepare(table, info, plan.train)
    model, optimizer = model_and_optimizer(info, data.task)
    train = to_split(data.x, data.y, plan.train, torch.device("cpu"))
    start = time.perf_counter()
    train_one_epoch(model, optimizer, data.task, train, 256, torch.Generator().manual_seed(0)).item()
    return time.perf_counter() - start, len(train)


def measured(mode: str, path: Path) -> dict:
    """The child's figures and its peak resident memory."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/crossfold-streaming"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = child(*args.child)
        figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(figures))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for rows in args.sizes:
        path = args.folder / f"streaming-{rows}.parquet"
        if not path.exists():
            started = time.perf_counter()
            generate(path, rows)
            print(f"generated {rows:,} rows in {time.perf_counter() - started:.0f} s ({path.stat().st_size / 2**20:.0f} MiB)")
        modes = ["stream", "memory"] if rows == min(args.sizes) else ["stream"]
        for mode in modes:
            runs.append({"rows": rows, "mode": mode, **measured(mode, path)})
            print(f"{rows:>12,} {mode:<7} {runs[-1]['samples_per_s']:>10,.0f} samples/s  "
                  f"peak {runs[-1]['peak_rss_bytes'] / 2**20:>7,.0f} MiB")
    write_results("streaming", {"runs": runs, "ratios": ratios(runs, args.sizes), "targets": TARGETS})


def ratios(runs: list[dict], sizes: list[int]) -> dict:
    by = {(r["rows"], r["mode"]): r for r in runs}
    small, large = min(sizes), max(sizes)
    found = {"stream_over_memory_speed": by[small, "stream"]["samples_per_s"] / by[small, "memory"]["samples_per_s"]}
    if large != small:
        found["peak_10m_over_1m"] = by[large, "stream"]["peak_rss_bytes"] / by[small, "stream"]["peak_rss_bytes"]
    found["peak_bytes"] = max(r["peak_rss_bytes"] for r in runs if r["mode"] == "stream")
    for name, value in found.items():
        print(f"{name:<28} {value:,.3f}  (target {'≥' if name.endswith('speed') else '≤'} {TARGETS[name]:,})")
    return found


if __name__ == "__main__":
    main()

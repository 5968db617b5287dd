"""Training throughput of the crossfold core against reference loops, in one process.

Reference workload: synthetic 10-class data (200,000 × 64), MLP 64-256-256-10 with batch
norm and dropout 0.2, Adam (β = 0.9, 0.98), batch sizes 64, 256 and 1024. Each method
trains the same model for about --seconds per batch size; the table gives samples/s
and ratios within this run (the machines are shared: compare ratios, not absolutes).

    python bench/train_throughput.py [--device cuda] [--rows 200000] [--seconds 3] [--repeats 3]

Runs unchanged on CPU and GPU; the CUDA-graphed loop only on CUDA. The reference loops
(dataloader, tight, graphed) use textbook pieces: nn.Dropout and torch.optim.Adam with its
defaults; core and packed5 use crossfold's own model and optimizer, as a fold task does.
packed5 is five folds trained as one stacked model (samples/s counts all five). gemm is
a ceiling, not a method: only the matrix multiplies of forward and backward, no batch
norm, dropout, loss or optimizer, so no loop built on torch's kernels can beat it.
Writes bench/results/train_throughput-<device>.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_output import write_results  # bench/bench_output.py, beside this script
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.config import AdamConfig, MLPConfig  # noqa: E402
from workers.early_stopping import EarlyStopping  # noqa: E402
from workers.graphed import step_graph  # noqa: E402
from workers.models import build_model  # noqa: E402
from workers.optimizers import build_optimizer  # noqa: E402
from workers.packed.model import PackedMLP  # noqa: E402
from workers.packed.optimizer import PackedOptimizer  # noqa: E402
from workers.packed.training import (PackedFold, Stack, packed_step,  # noqa: E402
                                     train_one_packed_epoch)
from workers.tasks import Classification  # noqa: E402
from workers.training import LossAverage, Split, train_one_epoch  # noqa: E402

FEATURES, CLASSES = 64, 10
MODEL = MLPConfig(hidden=(256, 256), batch_norm=True, dropout=0.2)
ADAM = AdamConfig(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-8, bias_correction=True)
STEPS_PER_CORE_EPOCH = 200  # the core is timed over epochs of this many steps


def make_data(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, FEATURES, generator=generator)
    y = (x[:, :10].argmax(1) + (x[:, 10] > 1).long()) % CLASSES
    return x, y


def new_model(device):
    """crossfold's model and optimizer for the reference workload."""
    torch.manual_seed(0)
    model = build_model(MODEL, (FEATURES,), CLASSES).to(device)
    return model, build_optimizer(model.parameters(), ADAM)


def plain_model(device):
    """The same network and initial weights from textbook parts, as a user would write it."""
    torch.manual_seed(0)
    width, layers = FEATURES, []
    for size in MODEL.hidden:
        layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.ReLU(),
                   nn.Dropout(MODEL.dropout)]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, CLASSES)).to(device)
    return model, torch.optim.Adam(model.parameters(), ADAM.lr, betas=(ADAM.beta1, ADAM.beta2))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run_chunk, device, seconds: float) -> float:
    """Samples/s of `run_chunk` (which trains and returns how many samples it saw)."""
    run_chunk()  # warm-up: allocations, kernel selection, graph capture
    sync(device)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples += run_chunk()
        sync(device)
    return samples / (time.perf_counter() - start)


def dataloader_loop(x, y, batch, device, seconds):
    """The textbook loop: a shuffling DataLoader over a TensorDataset, copied per batch."""
    from torch.utils.data import DataLoader, TensorDataset
    model, optimizer = plain_model(device)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    batches = iter(loader)

    def chunk():
        nonlocal batches
        for _ in range(20):
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(loader)
                xb, yb = next(batches)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return 20 * batch
    return timed(chunk, device, seconds)


def tight_loop(x, y, batch, device, seconds):
    """The fastest plain loop: data on the device, index slices of a permutation."""
    model, optimizer = plain_model(device)
    xd, yd = x.to(device), y.to(device)
    steps = min(STEPS_PER_CORE_EPOCH, len(yd) // batch)  # full batches only
    model.train()

    def chunk():
        order = torch.randperm(len(yd), device=device)
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            loss = F.cross_entropy(model(xd[idx]), yd[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * batch
    return timed(chunk, device, seconds)


def core_loop(x, y, batch, device, seconds):
    """crossfold's own epoch function, as a fold task runs it (on CUDA: its captured step)."""
    model, optimizer = new_model(device)
    rows = min(len(y), batch * STEPS_PER_CORE_EPOCH)
    data = Split(x[:rows].to(device), y[:rows].to(device))
    task, generator = Classification(CLASSES), torch.Generator().manual_seed(0)
    graph = step_graph(model, optimizer, task.loss, data.x, data.y, batch)  # as fit() does; CUDA only

    def chunk():
        train_one_epoch(model, optimizer, task, data, batch, generator, graph).item()
        return rows
    return timed(chunk, device, seconds)


def graphed_loop(x, y, batch, device, seconds):
    """The tight loop with forward, backward and Adam captured in one CUDA graph."""
    model, _ = plain_model(device)
    optimizer = torch.optim.Adam(model.parameters(), ADAM.lr, betas=(ADAM.beta1, ADAM.beta2),
                                 capturable=True)
    xd, yd = x.to(device), y.to(device)
    steps = min(STEPS_PER_CORE_EPOCH, len(yd) // batch)
    idx = torch.randint(0, len(yd), (batch,), device=device)

    def step():
        F.cross_entropy(model(xd[idx]), yd[idx]).backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()

    def chunk():
        order = torch.randperm(len(yd), device=device)
        for s in range(steps):
            idx.copy_(order[s * batch:(s + 1) * batch])
            graph.replay()
        return steps * batch
    return timed(chunk, device, seconds)


def packed_loop(x, y, batch, device, seconds, k=5):
    """crossfold's packed epoch: k folds (each its own rows) as one stacked model (on
    CUDA: its captured step)."""
    rows = min(len(y) // k, batch * STEPS_PER_CORE_EPOCH)
    models = []
    for fold in range(k):
        torch.manual_seed(fold)
        models.append(build_model(MODEL, (FEATURES,), CLASSES))
    model = PackedMLP(models).to(device)
    optimizer = PackedOptimizer(model.parameters(), ADAM, k)
    task = Classification(CLASSES)
    folds = [PackedFold(i, i, task, EarlyStopping(monitor="val_loss", patience=10, min_delta=0.0),
                        LossAverage(0.9)) for i in range(k)]
    data = Stack.of([Split(x[i * rows:(i + 1) * rows].to(device), y[i * rows:(i + 1) * rows].to(device))
                     for i in range(k)])

    step = packed_step(model, optimizer, task, data, batch, min_rows=2)  # as fit_packed does

    def chunk():
        train_one_packed_epoch(model, optimizer, task, data, folds, batch, 2, step).tolist()
        return k * rows
    return timed(chunk, device, seconds)


def gemm_ceiling(x, y, batch, device, seconds):
    """Only the network's matrix multiplies, forward and backward, on one fixed batch."""
    torch.manual_seed(0)
    widths = [FEATURES, *MODEL.hidden, CLASSES]
    weights = [torch.randn(a, b, device=device, requires_grad=True) for a, b in zip(widths, widths[1:])]
    xb = x[:batch].to(device)

    def chunk():
        for _ in range(STEPS_PER_CORE_EPOCH):
            h = xb
            for w in weights:
                h = h @ w
            h.backward(torch.ones_like(h))
        return STEPS_PER_CORE_EPOCH * batch
    return timed(chunk, device, seconds)


def methods(device) -> dict:
    found = {"dataloader": dataloader_loop, "tight": tight_loop, "core": core_loop,
             "packed5": packed_loop, "gemm": gemm_ceiling}
    if device.type == "cuda":
        found["graphed"] = graphed_loop
    return found


def run(device: torch.device, rows: int, seconds: float, batches: list[int], repeats: int) -> dict:
    """Best of `repeats` rounds per method, the methods taking turns within each round, so
    that a noisy stretch of a shared machine hits them alike and rarely decides a ratio."""
    x, y = make_data(rows)
    table = {}
    for batch in batches:
        best = {name: [] for name in methods(device)}
        for _ in range(repeats):
            for name, method in methods(device).items():
                try:
                    best[name].append(method(x, y, batch, device, seconds))
                except Exception as error:  # one failing method must not lose the others
                    print(f"  {name} at batch {batch} failed: {type(error).__name__}: {error}")
        table[batch] = {name: max(values, default=float("nan")) for name, values in best.items()}
    return table


def ratios(row: dict) -> dict:
    out = {"core/tight": row["core"] / row["tight"], "core/dataloader": row["core"] / row["dataloader"],
           "packed5/core": row["packed5"] / row["core"], "core/gemm": row["core"] / row["gemm"]}
    if "graphed" in row:
        out["core/graphed"] = row["core"] / row["graphed"]
    return out


def print_table(table: dict) -> None:
    names = list(next(iter(table.values())))
    print(f"{'batch':>6} " + " ".join(f"{n:>12}" for n in names) + "   ratios")
    for batch, row in table.items():
        cells = " ".join(f"{row[n] / 1e3:>10.1f}k" for n in names)
        print(f"{batch:>6} {cells}   " + "  ".join(f"{k} {v:.2f}" for k, v in ratios(row).items()))
    print("(samples/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each is kept")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rows} rows")
    table = run(device, args.rows, args.seconds, args.batches, args.repeats)
    print_table(table)
    write_results(f"train_throughput-{device.type}", {
        "device": str(device), "device_name": name, "torch": torch.__version__, "rows": args.rows,
        "seconds": args.seconds, "repeats": args.repeats, "samples_per_s": table,
        "ratios": {b: ratios(r) for b, r in table.items()}})


if __name__ == "__main__":
    main()

"""Cross-validated test metrics of every job in examples/, trained by the crossfold core.

Runs each example's folds in this process, as the service's fold tasks would (packed
when the spec says pack_folds), and prints mean ± standard deviation of the test
metrics per example. The speed work must not cost accuracy: every digits example
should reach a mean test accuracy of at least 0.95.

    python bench/example_accuracy.py [examples/digits-sgd.json ...]

Writes bench/results/example_accuracy.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from bench_output import write_results  # bench/bench_output.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.datasets import load_dataset  # noqa: E402
from services.results import summarize  # noqa: E402
from services.spec import JobSpec  # noqa: E402
from services.splits import fold_rows, make_groups  # noqa: E402
from workers.fold import FoldPlan, run_fold, run_packed_folds  # noqa: E402


def cross_validate(spec: JobSpec) -> list[dict]:
    data = load_dataset(spec.dataset)
    groups = make_groups(data.strata(), spec.cv.folds, seed=spec.cv.seed, stratify=spec.cv.stratify)
    plans = [FoldPlan(i, *fold_rows(groups, i)) for i in range(spec.cv.folds)]
    job, cpu = spec.model_dump(mode="json"), torch.device("cpu")
    if spec.pack_folds:
        outcomes = run_packed_folds(data.x, data.y, data.info, plans, job, device=cpu,
                                    report=lambda i, r: None)
    else:
        outcomes = [run_fold(data.x, data.y, data.info, p, job, device=cpu, report=lambda r: None)
                    for p in plans]
    return [o.test_metrics for o in outcomes]


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "examples").glob("*.json"))
    results = {}
    print(f"{'example':<28} {'seconds':>8}  test metrics (mean ± std over folds)")
    for path in paths:
        spec = JobSpec.model_validate(json.loads(path.read_text()))
        start = time.perf_counter()
        summary = summarize(cross_validate(spec))
        seconds = time.perf_counter() - start
        names = sorted({k[5:-5] for k in summary if k.endswith("_mean")})
        shown = "  ".join(f"{n} {summary[f'test_{n}_mean']:.4f} ± {summary[f'test_{n}_std']:.4f}"
                          for n in names)
        print(f"{path.name:<28} {seconds:>8.1f}  {shown}", flush=True)
        results[path.name] = {"seconds": seconds, **summary}
    write_results("example_accuracy", results)


if __name__ == "__main__":
    main()

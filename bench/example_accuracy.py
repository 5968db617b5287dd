"""Cross-validated test metrics of every job in examples/, trained by the crossfold core.

Runs each example's folds in this process, as the service's fold tasks would (packed
when the spec says pack_folds), and prints mean ± standard deviation of the test
metrics per example. The speed work must not cost accuracy: every digits example
must reach a mean test accuracy of at least 0.95, and the script exits with status 1,
naming the examples, when one does not.

    python bench/example_accuracy.py [examples/digits-sgd.json ...]

Writes bench/results/example_accuracy.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_output import write_results  # bench/bench_output.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.data_spec import DatasetSpec  # noqa: E402
from services.dataset_store import DatasetStore  # noqa: E402
from services.datasets import BUNDLED, bundled_id, bundled_parquet  # noqa: E402
from services.ingest import ingest  # noqa: E402
from services.job_data import generated_data, stored_data  # noqa: E402
from services.job_inputs import source_of, split_plans  # noqa: E402
from services.models import Dataset  # noqa: E402
from services.results import summarize  # noqa: E402
from services.spec import JobSpec  # noqa: E402
from workers.results import Ending  # noqa: E402
from workers.table import read_table  # noqa: E402
from workers.task import train_folds  # noqa: E402

TARGET_ACCURACY = 0.95  # every digits example's mean test accuracy


def data_of(spec: JobSpec, store: DatasetStore):
    """The job's data as the service resolves it (services.job_data), without a database:
    a bundled dataset is stored in a scratch store first, as the service registers it."""
    if spec.dataset.name not in BUNDLED:
        return generated_data(spec.dataset)
    name, path = spec.dataset.name, Path(store.root) / "upload.parquet"
    path.write_bytes(bundled_parquet(name))
    stored = ingest(path, store, bundled_id(name))
    task = "regression" if name == "diabetes" else "classification"
    dataset = Dataset(id=bundled_id(name), name=name, uri=store.uri_of(bundled_id(name)), digest=stored.digest,
                      rows=stored.rows, columns=stored.columns, extra={
                          "image_shape": [1, 8, 8] if name == "digits" else []})
    return stored_data(DatasetSpec(id=dataset.id, label="target", task=task), dataset)


def cross_validate(spec: JobSpec) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        store = DatasetStore(folder)
        data = data_of(spec, store)
        source = source_of(data, store)
        plans = split_plans(data, source, spec.cv, list(range(spec.cv.folds)))
        table = read_table(source.uri, list(source.features), source.label)
    results = train_folds(table, source.info, plans, spec.training_config(), device=torch.device("cpu"))
    failed = [r.error for r in results if r.status is not Ending.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{spec.name}: {failed}")
    return [r.test_metrics for r in results]


def below_target(results: dict[str, dict]) -> list[str]:
    return [name for name, result in results.items() if name.startswith("digits")
            and result["test_accuracy_mean"] < TARGET_ACCURACY]


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
    if missed := below_target(results):
        print(f"below the {TARGET_ACCURACY} target: {', '.join(missed)}")
        sys.exit(1)
    print(f"every digits example reached a mean test accuracy of {TARGET_ACCURACY} or more")


if __name__ == "__main__":
    main()

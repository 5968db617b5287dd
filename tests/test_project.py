"""The project's shape: the import direction, what the GPU machine can import, the examples
(the compose file has tests/test_compose.py, tests/test_compose_credentials.py and
tests/test_deploy_scripts.py)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("workers", {"services", "api", "ray", "mlflow", "sqlalchemy", "fastapi"}),
    ("services", {"api", "fastapi"}),
])
def test_imports_flow_api_to_services_to_workers(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        assert not imports_of(path) & forbidden, f"{path} imports {imports_of(path) & forbidden}"


# What the GPU machine offers (its image has torch, numpy, scikit-learn and pytest, none
# of the service's packages): bench/device_check.sh runs tests/workers and the throughput
# bench there.
GPU_MACHINE_HAS = set(sys.stdlib_module_names) | {"__future__", "torch", "numpy", "sklearn", "pytest",
                                                  "workers", "bench_output",
                                                  "tests"}  # tests.workers: checked here too


# Reading Parquet needs pyarrow, which the GPU machine lacks: workers/table.py imports it
# inside read_table only, and the tests that need it skip without it.
# Read Parquet, importing pyarrow inside functions (or skipping without it): the GPU
# machine's worker tests run without it, and streaming (workers.stream) needs it.
LAZY_PYARROW = {ROOT / "workers" / "table.py", ROOT / "workers" / "stream" / "source.py",
                ROOT / "workers" / "storage.py", ROOT / "workers" / "checkpoint_store.py",
                *(ROOT / "tests" / "workers" / name for name in ("test_task.py", "test_stream_fold.py",
                                                                "test_stream_stats.py", "test_stream_batches.py"))}


def test_the_gpu_check_imports_only_what_the_gpu_machine_has():
    paths = [*(ROOT / "workers").rglob("*.py"), *(ROOT / "tests" / "workers").glob("*.py"),
             ROOT / "bench" / "train_throughput.py", ROOT / "bench" / "bench_output.py"]
    for path in paths:
        allowed = GPU_MACHINE_HAS | ({"pyarrow"} if path in LAZY_PYARROW else set())
        assert imports_of(path) <= allowed, f"{path} imports {imports_of(path) - allowed}"
    top_level = {node.names[0].name.split(".")[0] for node in ast.parse((ROOT / "workers" / "table.py")
                 .read_text()).body if isinstance(node, ast.Import)}
    assert "pyarrow" not in top_level  # inside read_table only


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.json")), ids=lambda p: p.name)
def test_examples_are_valid_jobs_or_studies(path):
    example = json.loads(path.read_text())
    if "base" in example:  # a study (crossfold study FILE): each of its variants a valid job
        from services.study_spec import StudySpec, expand
        assert len(expand(StudySpec.model_validate(example))) >= 2
    else:
        JobSpec.model_validate(example)


# MLflow's tracking API, and its server's authentication (a separate client and API).
@pytest.mark.parametrize("library, owners", [("ray", {"cluster.py"}), ("mlflow", {"tracking.py", "mlflow_access.py"})])
def test_one_services_module_owns_each_heavy_dependency(library, owners):
    users = {p.name for p in (ROOT / "services").rglob("*.py") if library in imports_of(p)}
    assert users == owners


def test_the_api_does_not_import_the_training_stack():
    """A lighter API process: quicker to start, and a smaller heap for the garbage
    collector (see api.main.lifespan). Checked in a fresh interpreter."""
    probe = "import sys, api.main; print(sorted({'torch', 'ray', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_folds_ending_is_one_of_its_end_states():
    from services.states import FINISHED_FOLD
    from workers.results import Ending
    assert {ending.value for ending in Ending} == {status.value for status in FINISHED_FOLD}


def test_every_torch_load_is_weights_only():
    """A checkpoint is data, never code: torch.load without weights_only=True would run
    whatever a crafted file names as it loads (workers.checkpointing, workers.exported)."""
    loads = {"torch.load", "torch.serialization.load"}
    found, unsafe = 0, []
    for path in ROOT.rglob("*.py"):
        if {".venv", ".git"} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and f"{node.module}.load" in loads \
                    and any(alias.name == "load" for alias in node.names):
                unsafe.append(f"{where} imports load by itself")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in loads:
                found += 1
                if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords):
                    unsafe.append(f"{where} {ast.unparse(node)}")
    assert found >= 2 and not unsafe, unsafe

"""The project's shape: the compose file, the import direction, the examples."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from api.cli import build_parser
from services.settings import Settings
from services.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_every_production_service():
    assert set(SERVICES) == {"postgres", "mlflow", "ray-head", "ray-gpu-worker", "api", "dispatcher"}
    gpu = SERVICES["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and "--num-gpus=1" in SERVICES["ray-gpu-worker"]["command"]


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "command" in s])
def test_each_compose_command_is_a_real_entry_point(name):
    command = SERVICES[name]["command"]
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert command[0] in scripts, f"{command[0]} is not an installed console script"
    if command[0] == "crossfold":
        build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command
    else:
        # The first word after the program is its subcommand; it must exist.
        exe = Path(sys.executable).parent / command[0]
        assert subprocess.run([str(exe), command[1], "--help"], capture_output=True,
                              timeout=120).returncode == 0


def test_compose_sets_only_settings_that_exist():
    known = {f"CROSSFOLD_{name.upper()}" for name in Settings.model_fields}
    known |= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    for name, service in SERVICES.items():
        if service.get("image") == "crossfold:latest":
            assert set(service["environment"]) <= known, name


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
LAZY_PYARROW = {ROOT / "workers" / "table.py", ROOT / "tests" / "workers" / "test_task.py"}


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
def test_examples_are_valid_jobs(path):
    JobSpec.model_validate(json.loads(path.read_text()))


@pytest.mark.parametrize("library, owner", [("ray", "cluster.py"), ("mlflow", "tracking.py")])
def test_one_services_module_owns_each_heavy_dependency(library, owner):
    users = {p.name for p in (ROOT / "services").rglob("*.py") if library in imports_of(p)}
    assert users == {owner}


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

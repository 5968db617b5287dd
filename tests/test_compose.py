"""The production layout: docker-compose.yml, parsed, not run (no Docker engine here):
every command is a real entry point, every setting exists and is valid, every host a
service names is a service it waits for, the stores are the object store's bucket and
only the API, MLflow and local dashboards publish ports. The credentials each service
receives: tests/test_compose_credentials.py; the deploy/ scripts: tests/test_deploy_scripts.py."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from api.cli import build_parser
from services.settings import Settings
from tests.compose_file import (COMPOSE, INTERPOLATION, ROOT, SERVICES, dependencies_of, environment_of,
                                settings_of, store_uris, waits_for)


def test_compose_has_every_production_service():
    assert set(SERVICES) == {"postgres", "mlflow", "minio", "minio-init", "ray-head", "ray-gpu-worker",
                             "api", "dispatcher"}
    gpu = SERVICES["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and "--num-gpus=1" in SERVICES["ray-gpu-worker"]["command"]


# The images not built from this repository, and the subcommands of their programs that the
# file may run (MinIO's image runs `minio <command>`; PostgreSQL's, its own start-up).
EXTERNAL_COMMANDS = {"postgres:16": set(), "minio/minio": {"server"}}


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("image") != "crossfold:latest"])
def test_each_other_image_is_known_and_runs_a_command_it_has(name):
    service = SERVICES[name]
    assert service["image"] in EXTERNAL_COMMANDS, f"{name}: an image the tests do not know"
    if "command" in service:
        assert service["command"][0] in EXTERNAL_COMMANDS[service["image"]], name


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "entrypoint" in s])
def test_each_entrypoint_is_a_deploy_script_the_service_mounts(name):
    service = SERVICES[name]
    shell, script = service["entrypoint"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}
    assert shell == "sh" and mounts[script].startswith("./deploy/"), name


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items()
                                  if "command" in s and s.get("image") == "crossfold:latest"])
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


def mlflow_environment_variables() -> set[str]:
    """The variables MLflow reads (mlflow/environment_variables.py), without importing it."""
    source = Path(importlib.util.find_spec("mlflow").origin).parent / "environment_variables.py"
    return set(re.findall(r'EnvironmentVariable\(\s*"(MLFLOW_[A-Z0-9_]+)"', source.read_text()))


def test_compose_sets_only_settings_that_exist():
    known = {f"CROSSFOLD_{name.upper()}" for name in Settings.model_fields}
    known |= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} | mlflow_environment_variables()
    known |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # read by pyarrow's S3 client
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH"} <= known
    for name, service in SERVICES.items():
        if service.get("image") == "crossfold:latest":
            assert set(environment_of(service)) <= known, name


# A host:port in a value (a URL's host, `--address=host:port`, `host:port,host:port`).
HOST_PORT = re.compile(r"(?:^|[/@=,])([a-z][a-z0-9.-]*):(\d{2,5})\b")
LOCAL_NAMES = {"localhost", "0.0.0.0", "127.0.0.1"}  # the host's, for links and the UI


def hosts_named(service: dict) -> set[str]:
    texts = [*environment_of(service).values(), *map(str, service.get("command", []))]
    return {host for text in texts for host, _ in HOST_PORT.findall(text)} - LOCAL_NAMES


@pytest.mark.parametrize("name", SERVICES)
def test_each_dependency_exists_and_each_host_named_is_a_service_waited_for(name):
    service = SERVICES[name]
    for target, condition in dependencies_of(service).items():
        assert target in SERVICES, f"{name} depends on {target}, which is not a service"
        if condition == "service_healthy":
            assert "healthcheck" in SERVICES[target], f"{name} waits for {target}'s health, never checked"
        if condition == "service_completed_successfully":
            assert target in ONE_SHOT, f"{name} waits for {target} to exit, and it never does"
    assert hosts_named(service) - {name} <= waits_for(name), f"{name} starts before a service it calls"


ONE_SHOT = {"minio-init"}  # the services that do their work and exit
STORE_USERS = {"api", "dispatcher", "ray-gpu-worker"}  # whoever opens the dataset or checkpoint store


def test_every_named_volume_is_declared_and_used():
    used = {volume.split(":")[0] for service in SERVICES.values() for volume in service.get("volumes", [])
            if not volume.startswith(("./", "/"))}
    assert used == set(COMPOSE["volumes"])


def test_the_api_and_the_dispatcher_read_valid_settings_and_share_the_stores(monkeypatch):
    api, dispatcher = settings_of("api", monkeypatch), settings_of("dispatcher", monkeypatch)
    assert api.resolved_dataset_store() == dispatcher.resolved_dataset_store()  # uploads are what jobs read
    assert api.resolved_checkpoint_store() == dispatcher.resolved_checkpoint_store()
    assert api.resolved_database_url() == dispatcher.resolved_database_url()
    assert dispatcher.ray_address and dispatcher.mlflow_tracking_uri and dispatcher.mlflow_auth


def test_the_stores_are_in_the_bucket_minio_init_creates_on_the_object_store_service(monkeypatch):
    init = environment_of(SERVICES["minio-init"])
    for uri in store_uris(monkeypatch):
        parts = urlsplit(uri)
        options = {key: value for key, [value] in parse_qs(parts.query).items()}
        assert parts.scheme == "s3" and parts.hostname == init["STORE_BUCKET"], uri
        # Any node opens it from the URI alone: the endpoint is in it, and it is MinIO
        # (which serves S3 on port 9000 unless its command says otherwise).
        host, port = options["endpoint_override"].split(":")
        assert SERVICES[host]["image"] == "minio/minio" and "--address" not in SERVICES[host]["command"]
        assert (port, options["scheme"]) == ("9000", "http")
        assert "@" not in parts.netloc  # no credentials: URIs are logged


def test_each_service_that_opens_a_store_logs_in_as_the_user_minio_init_creates():
    init = environment_of(SERVICES["minio-init"])
    secret_variable = COMPOSE["secrets"]["crossfold_s3_secret_key"]["environment"]
    for name, service in SERVICES.items():
        environment = environment_of(service)
        if name in STORE_USERS:
            assert environment["AWS_ACCESS_KEY_ID"] == init["STORE_USER"], name
            assert INTERPOLATION.findall(environment["AWS_SECRET_ACCESS_KEY"]) == [secret_variable], name
            assert {"minio-init", "minio"} <= waits_for(name)
        else:
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(environment), name
    assert environment_of(SERVICES["minio"])["MINIO_ROOT_USER"] == init["MINIO_ROOT_USER"]


def test_mlflow_runs_its_basic_auth_app_and_the_dispatcher_logs_in_as_its_admin():
    mlflow = SERVICES["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"] and command[command.index("--app-name") + 1] == "basic-auth"
    assert "--allowed-hosts" in command and "--backend-store-uri" not in command  # the entrypoint's
    assert mlflow["entrypoint"] == ["sh", "/deploy/mlflow-entrypoint.sh"]
    assert environment_of(mlflow)["MLFLOW_AUTH_CONFIG_PATH"].startswith(tuple(mlflow["tmpfs"]))
    dispatcher = environment_of(SERVICES["dispatcher"])
    assert dispatcher["MLFLOW_TRACKING_USERNAME"] == "crossfold"
    assert dispatcher["CROSSFOLD_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The image has what the basic-auth app imports (Flask-WTF, for its CSRF protection).
    assert '"mlflow[auth]"' in (ROOT / "Dockerfile").read_text()


def test_only_the_api_mlflow_and_the_local_ray_dashboard_publish_ports():
    published = {name: [str(port) for port in service["ports"]]
                 for name, service in SERVICES.items() if service.get("ports")}
    # The Ray dashboard (and its job-submission API, which runs code) on the host's loopback.
    assert published == {"api": ["8000:8000"], "mlflow": ["5000:5000"], "ray-head": ["127.0.0.1:8265:8265"],
                         "minio": ["127.0.0.1:9001:9001"]}  # MinIO's console, for operators


def test_the_dispatcher_joins_the_ray_cluster_as_a_node_that_runs_no_folds():
    """A Ray driver attaches to a node on its own machine: the dispatcher's container
    starts one (no CPUs, no GPUs, so no fold lands there) before its command."""
    dispatcher = SERVICES["dispatcher"]
    assert dispatcher["entrypoint"] == ["sh", "/deploy/join-ray.sh"]
    script = (ROOT / "deploy" / "join-ray.sh").read_text()
    start = next(line for line in script.splitlines() if line.startswith("ray start"))
    start += next(line for line in script.splitlines() if "--num-cpus" in line)
    assert '--address="${CROSSFOLD_RAY_ADDRESS' in start and "--num-cpus=0" in start and "--num-gpus=0" in start
    assert 'exec "$@"' in script
    assert environment_of(dispatcher)["CROSSFOLD_RAY_ADDRESS"] == "ray-head:6379"

"""The production layout: docker-compose.yml and the deploy/ scripts it mounts. Parsed, not
run (no Docker engine here): every command is a real entry point, every setting exists and
is valid, every host a service names is a service it waits for, the stores are the object
store's bucket, each service receives only the credentials it uses, no password is written
in the file, and the scripts do what the services count on."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from api.cli import build_parser
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


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


def environment_of(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (compose accepts a mapping or KEY=VALUE lines)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(line.split("=", 1) for line in environment)
    return {key: str(value) for key, value in environment.items()}


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


def settings_of(name: str, monkeypatch) -> Settings:
    """The settings a crossfold service reads from its compose environment, interpolations
    filled with placeholders: the values must be valid, not only the names."""
    for variable in os.environ:
        if variable.startswith(("CROSSFOLD_", "AWS_")):
            monkeypatch.delenv(variable)
    for key, value in environment_of(SERVICES[name]).items():
        monkeypatch.setenv(key, INTERPOLATION.sub("placeholder", value))
    return Settings()


def dependencies_of(service: dict) -> dict[str, str]:
    """depends_on as {service: condition} (compose accepts a list or a mapping)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {target: (how or {}).get("condition", "service_started") for target, how in depends_on.items()}


def waits_for(name: str) -> set[str]:
    """Every service `name` starts after, directly or through others."""
    direct = set(dependencies_of(SERVICES[name]))
    return direct.union(*(waits_for(other) for other in direct))


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


def store_uris(monkeypatch) -> list[str]:
    settings = settings_of("dispatcher", monkeypatch)  # the URIs it hands to fold tasks
    return [settings.resolved_dataset_store(), settings.resolved_checkpoint_store()]


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


FAKE_MC = """#!/bin/sh
# Records each call; answers `admin user info` as MinIO does for a user with the policy.
echo "$*" >> "$MC_LOG"
case "$1 $2" in "admin policy") [ "$3" = create ] && cp "$6" "$MC_LOG.policy" ;; esac
case "$*" in *"admin user info"*) echo "PolicyName: crossfold-stores" ;; esac
[ -z "${MC_ATTACH_FAILS:-}" ] || case "$*" in *"policy attach"*) exit 1 ;; esac
"""


def run_minio_init(tmp_path: Path, secrets: dict[str, str], **extra: str):
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    for name, value in secrets.items():
        (folder / name).write_text(value)
    (tmp_path / "bin").mkdir(exist_ok=True)
    mc = tmp_path / "bin" / "mc"
    mc.write_text(FAKE_MC)
    mc.chmod(0o755)
    environment = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SECRETS_DIR": str(folder),
                   "MC_LOG": str(tmp_path / "mc.log"), **environment_of(SERVICES["minio-init"]), **extra}
    return subprocess.run(["sh", str(ROOT / "deploy" / "minio-init.sh")], env=environment,
                          capture_output=True, text=True, timeout=60)


MINIO_SECRETS = {"minio_root_password": "root-password\n", "crossfold_s3_secret_key": "store-secret-key"}


@pytest.mark.parametrize("attached_before", [False, True], ids=["first-run", "run-again"])
def test_minio_init_creates_the_bucket_and_user_the_services_use(tmp_path, monkeypatch, attached_before):
    extra = {"MC_ATTACH_FAILS": "1"} if attached_before else {}
    out = run_minio_init(tmp_path, MINIO_SECRETS, **extra)
    assert out.returncode == 0, out.stderr
    bucket = urlsplit(store_uris(monkeypatch)[0]).hostname
    user = environment_of(SERVICES["api"])["AWS_ACCESS_KEY_ID"]
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls[0] == "alias set store http://minio:9000 minio-admin root-password"
    assert f"mb --ignore-existing store/{bucket}" in calls
    assert f"admin user add store {user} store-secret-key" in calls
    assert f"admin policy attach store crossfold-stores --user {user}" in calls
    # The user may use that bucket and nothing else.
    policy = json.loads((tmp_path / "mc.log.policy").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert not any(action.startswith("admin:") or action == "s3:*"
                   for statement in policy["Statement"] for action in statement["Action"])


def test_minio_init_refuses_a_missing_secret(tmp_path):
    out = run_minio_init(tmp_path, {"minio_root_password": "root-password"})
    assert out.returncode != 0 and "crossfold_s3_secret_key is missing or empty" in out.stderr
    assert not (tmp_path / "mc.log").exists()


# Security: each secret, named by the environment variable it is read from when compose
# starts, and the services allowed to receive it, as an interpolated value (anywhere in the
# service: environment, command) or as a compose secret (/run/secrets/<name>). A service
# gets exactly these: the workers hold no database or MLflow credential, the API no Ray
# token and no MLflow login, MLflow neither the Ray token nor the crossfold database.
CREDENTIALS = {
    "POSTGRES_SUPERUSER_PASSWORD": {"postgres"},
    "CROSSFOLD_DB_PASSWORD": {"postgres", "api", "dispatcher"},
    "MLFLOW_DB_PASSWORD": {"postgres", "mlflow"},
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "dispatcher"},
    "MLFLOW_FLASK_SECRET_KEY": {"mlflow"},
    "RAY_AUTH_TOKEN": {"ray-head", "ray-gpu-worker", "dispatcher"},
    "MINIO_ROOT_PASSWORD": {"minio", "minio-init"},
    # The stores' S3 user: whoever opens a store (uploads; fold tasks' data and checkpoints).
    "CROSSFOLD_S3_SECRET_KEY": {"minio-init", "api", "dispatcher", "ray-gpu-worker"},
}
# The environment variables that carry a secret (or name its file), and who may have them.
CREDENTIAL_SETTINGS = {
    "POSTGRES_PASSWORD_FILE": {"postgres"},
    "CROSSFOLD_DB_PASSWORD_FILE": {"postgres"},
    "MLFLOW_DB_PASSWORD_FILE": {"postgres"},
    "CROSSFOLD_DATABASE_URL": {"api", "dispatcher"},
    "MLFLOW_TRACKING_PASSWORD": {"dispatcher"},
    "RAY_AUTH_TOKEN": {"ray-head", "ray-gpu-worker", "dispatcher"},
    "MINIO_ROOT_PASSWORD_FILE": {"minio"},
    "AWS_SECRET_ACCESS_KEY": {"api", "dispatcher", "ray-gpu-worker"},
}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
ONLY_AN_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}")
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:/@\s]+):(?P<password>\$\{[^}]*\}|[^@\s/]+)@")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")


def strings_in(node) -> list[str]:
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in strings_in(key) + strings_in(value)]
    if isinstance(node, list):
        return [text for item in node for text in strings_in(item)]
    return [str(node)] if node is not None else []


def secrets_of(service: dict) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def credentials_of(compose: dict, name: str) -> set[str]:
    """Every secret a service receives, by the variable it comes from."""
    service = compose["services"][name]
    received = {var for text in strings_in(service) for var in INTERPOLATION.findall(text)}
    received |= {compose["secrets"][secret].get("environment", secret) for secret in secrets_of(service)}
    # Plain settings (none yet) would be interpolated too: only secret-looking ones count.
    return {var for var in received if var in CREDENTIALS or SECRET_NAME.search(var)}


def credential_mismatches(compose: dict) -> list[str]:
    found = []
    for name in compose["services"]:
        expected = {var for var, allowed in CREDENTIALS.items() if name in allowed}
        received = credentials_of(compose, name)
        found += [f"{name} receives {var}" for var in sorted(received - expected)]
        found += [f"{name} lacks {var}" for var in sorted(expected - received)]
        for key, value in environment_of(compose["services"][name]).items():
            if key in CREDENTIAL_SETTINGS:
                if name not in CREDENTIAL_SETTINGS[key]:
                    found.append(f"{name} receives {key}")
            elif SECRET_NAME.search(key) or URL_PASSWORD.search(value):
                found.append(f"{name}: {key} carries a credential missing from CREDENTIAL_SETTINGS")
    return sorted(set(found))


def literal_secrets(compose: dict) -> list[str]:
    """Passwords written in the file instead of read from the environment or a secret."""
    found = []
    for name, service in compose["services"].items():
        for key, value in environment_of(service).items():
            if key.endswith("_FILE"):
                if value.removeprefix("/run/secrets/") not in secrets_of(service):
                    found.append(f"{name}: {key} is not one of its secrets")
            elif SECRET_NAME.search(key) and not ONLY_AN_INTERPOLATION.fullmatch(value):
                found.append(f"{name}: {key} is a literal")
        for text in strings_in(service):
            for url in URL_PASSWORD.finditer(text):
                if not ONLY_AN_INTERPOLATION.fullmatch(url["password"]):
                    found.append(f"{name}: a literal password in {text}")
    for secret, source in compose.get("secrets", {}).items():
        if set(source) != {"environment"}:  # a file (in the repository?) or a literal
            found.append(f"secret {secret} is not read from the environment")
    return found


def test_each_service_receives_only_the_credentials_it_uses():
    assert credential_mismatches(COMPOSE) == []
    assert set(COMPOSE["secrets"]) == {secret for s in SERVICES.values() for secret in secrets_of(s)}


def test_no_password_is_written_in_the_compose_file():
    assert literal_secrets(COMPOSE) == []
    assert {source["environment"] for source in COMPOSE["secrets"].values()} <= set(CREDENTIALS)


def with_change(path: str, value):
    compose = copy.deepcopy(COMPOSE)
    *parents, last = path.split("/")
    node = compose
    for key in parents:
        node = node[key]
    node[last] = value
    return compose


@pytest.mark.parametrize("compose, check", [
    # The layout the security review found: every service got the whole environment.
    (with_change("services/api/environment/RAY_AUTH_TOKEN", "${RAY_AUTH_TOKEN}"), credential_mismatches),
    (with_change("services/ray-gpu-worker/environment/CROSSFOLD_DATABASE_URL",
                 "postgresql://crossfold:${CROSSFOLD_DB_PASSWORD}@postgres/crossfold"),
     credential_mismatches),
    (with_change("services/ray-gpu-worker/environment/CROSSFOLD_DATABASE_URL",
                 "postgresql://crossfold:crossfold@postgres/crossfold"), credential_mismatches),
    (with_change("services/api/environment/MLFLOW_TRACKING_PASSWORD", "${MLFLOW_ADMIN_PASSWORD}"),
     credential_mismatches),
    (with_change("services/mlflow/secrets", ["mlflow_db_password", "mlflow_flask_secret_key"]),
     credential_mismatches),
    (with_change("services/ray-head/secrets", ["mlflow_admin_password"]), credential_mismatches),
    (with_change("services/postgres/environment/POSTGRES_PASSWORD", "crossfold"), literal_secrets),
    (with_change("services/api/environment/CROSSFOLD_DATABASE_URL",
                 "postgresql://crossfold:crossfold@postgres:5432/crossfold"), literal_secrets),
    (with_change("services/postgres/environment/POSTGRES_PASSWORD_FILE", "/etc/pw"), literal_secrets),
    (with_change("secrets/mlflow_admin_password", {"file": "./deploy/admin-password"}), literal_secrets),
    (with_change("services/ray-head/environment", {"AWS_SECRET_ACCESS_KEY": "${CROSSFOLD_S3_SECRET_KEY}"}),
     credential_mismatches),
    (with_change("services/api/secrets", ["minio_root_password"]), credential_mismatches),
    (with_change("services/api/environment/AWS_SECRET_ACCESS_KEY", "minio-secret"), literal_secrets),
], ids=["ray-token-to-api", "database-to-worker", "database-url-to-worker", "mlflow-login-to-api",
        "mlflow-lacks-its-admin-password", "mlflow-login-to-ray", "literal-superuser-password",
        "literal-url-password", "password-file-not-a-secret", "secret-from-a-file", "s3-key-to-ray-head",
        "minio-root-to-api", "literal-s3-key"])
def test_the_credential_checks_catch(compose, check):
    assert check(compose) != []


def database_urls(compose: dict) -> list[tuple[str, str]]:
    return [(name, text) for name, service in compose["services"].items()
            for text in strings_in(service) if text.startswith("postgresql")]


def test_the_services_connect_as_their_own_database_roles_not_the_superuser():
    superuser = environment_of(SERVICES["postgres"]).get("POSTGRES_USER", "postgres")
    assert superuser == "postgres" and "POSTGRES_PASSWORD" not in environment_of(SERVICES["postgres"])
    urls = database_urls(COMPOSE)
    assert {name for name, _ in urls} == {"api", "dispatcher"}
    for name, url in urls:
        parts = urlsplit(INTERPOLATION.sub("secret", url))
        assert (parts.username, parts.hostname, parts.path) == ("crossfold", "postgres", "/crossfold"), name
    # MLflow's URLs are built by its entrypoint from its own role's password.
    entrypoint = (ROOT / "deploy" / "mlflow-entrypoint.sh").read_text()
    mlflow_urls = re.findall(r"postgresql\+psycopg://([^:]+):(\$\w+)@\$database/(\w+)", entrypoint)
    assert sorted(mlflow_urls) == [("mlflow", "$db_password", "mlflow"),
                                   ("mlflow", "$db_password", "mlflow_auth")]
    init = (ROOT / "deploy" / "postgres-init.sh").read_text()
    for role in ("crossfold", "mlflow"):
        assert re.search(rf"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'", init)


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


def test_the_deploy_scripts_exist_and_compose_mounts_each():
    mounted = {volume.split(":")[0]: volume.split(":")[1] for service in SERVICES.values()
               for volume in service.get("volumes", []) if volume.startswith("./")}
    scripts = {f"./deploy/{path.name}" for path in (ROOT / "deploy").iterdir()}
    assert scripts == {"./deploy/postgres-init.sh", "./deploy/mlflow-entrypoint.sh", "./deploy/minio-init.sh",
                       "./deploy/join-ray.sh"}
    assert set(mounted) == scripts
    assert mounted["./deploy/postgres-init.sh"].startswith("/docker-entrypoint-initdb.d/")
    for script in scripts:
        path = ROOT / script
        assert path.read_text().startswith("#!/bin/sh\n") and path.stat().st_mode & stat.S_IXUSR
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0


def run_mlflow_entrypoint(tmp_path: Path, secrets: dict[str, str], command: list[str]):
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    for name, value in secrets.items():
        (folder / name).write_text(value)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    environment |= {"SECRETS_DIR": str(folder), "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "run" / "auth.ini")}
    return subprocess.run(["sh", str(ROOT / "deploy" / "mlflow-entrypoint.sh"), *command], env=environment,
                          capture_output=True, text=True, timeout=120)


MLFLOW_SECRETS = {"mlflow_db_password": "0123456789abcdef\n", "mlflow_admin_password": "admin 100% secret",
                  "mlflow_flask_secret_key": "flask-key"}


def test_the_mlflow_entrypoint_writes_the_auth_config_mlflow_reads(tmp_path):
    # MLflow's own reader, loaded from its file: the package mlflow.server.auth needs
    # Flask-WTF, which the image has (mlflow[auth]) and this environment may lack.
    reader = Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "auth" / "config.py"
    probe = ("import importlib.util, json, os, sys; "
             "spec = importlib.util.spec_from_file_location('auth_config', sys.argv[1]); "
             "config = importlib.util.module_from_spec(spec); spec.loader.exec_module(config); "
             "print(json.dumps([config.read_auth_config()._asdict(), os.environ['MLFLOW_BACKEND_STORE_URI'], "
             "os.environ['MLFLOW_FLASK_SERVER_SECRET_KEY']]))")
    out = run_mlflow_entrypoint(tmp_path, MLFLOW_SECRETS, [sys.executable, "-c", probe, str(reader)])
    assert out.returncode == 0, out.stderr
    config, backend, key = json.loads(out.stdout)
    assert config["default_permission"] == "NO_PERMISSIONS"
    assert (config["admin_username"], config["admin_password"]) == ("crossfold", "admin 100% secret")
    assert config["database_uri"] == "postgresql+psycopg://mlflow:0123456789abcdef@postgres:5432/mlflow_auth"
    assert config["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert backend == "postgresql+psycopg://mlflow:0123456789abcdef@postgres:5432/mlflow"
    assert key == "flask-key"
    assert stat.S_IMODE((tmp_path / "run" / "auth.ini").stat().st_mode) == 0o600


@pytest.mark.parametrize("secrets, message", [
    ({**MLFLOW_SECRETS, "mlflow_admin_password": ""}, "mlflow_admin_password is missing or empty"),
    ({k: v for k, v in MLFLOW_SECRETS.items() if k != "mlflow_flask_secret_key"},
     "mlflow_flask_secret_key is missing or empty"),
    ({**MLFLOW_SECRETS, "mlflow_db_password": "p@ss/word"}, "must be URL-safe"),
])
def test_the_mlflow_entrypoint_refuses_missing_or_unusable_secrets(tmp_path, secrets, message):
    out = run_mlflow_entrypoint(tmp_path, secrets, ["echo", "STARTED"])
    assert out.returncode != 0 and message in out.stderr and "STARTED" not in out.stdout


def test_the_postgres_init_script_creates_roles_that_are_not_superusers(tmp_path):
    """On a PostgreSQL of its own (roles are cluster-wide): the roles, their databases, and
    the crossfold role can bring its database to the newest schema."""
    import psycopg

    from services.database import make_engine, upgrade_schema
    from tests.helpers import PrivatePostgres
    if (why := PrivatePostgres.available()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the PostgreSQL init script test: {why}")
        pytest.skip(why)
    server = PrivatePostgres().create()
    try:
        for name in ("crossfold", "mlflow"):
            (server.folder / name).write_text(f"{name}-password\n")
        environment = {"PGHOST": str(server.folder), "PGPORT": str(server.port),
                       "CROSSFOLD_DB_PASSWORD_FILE": str(server.folder / "crossfold"),
                       "MLFLOW_DB_PASSWORD_FILE": str(server.folder / "mlflow")}
        run = subprocess.run([*server.user, "env", *(f"{k}={v}" for k, v in environment.items()),
                              str(ROOT / "deploy" / "postgres-init.sh")],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        with psycopg.connect(server.url, autocommit=True) as admin:
            roles = admin.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolpassword "
                                  "FROM pg_authid WHERE rolname IN ('crossfold', 'mlflow')").fetchall()
            owners = dict(admin.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database")
                          .fetchall())
        assert sorted(role[:4] for role in roles) == [("crossfold", False, False, False),
                                                       ("mlflow", False, False, False)]
        assert all(role[4].startswith("SCRAM-SHA-256$") for role in roles)
        assert {db: owners[db] for db in ("crossfold", "mlflow", "mlflow_auth")} == \
            {"crossfold": "crossfold", "mlflow": "mlflow", "mlflow_auth": "mlflow"}
        base = f"postgresql://{{}}@127.0.0.1:{server.port}/{{}}"
        with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
            psycopg.connect(base.format("mlflow", "crossfold")).close()
        with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
            psycopg.connect(base.format("crossfold", "mlflow_auth")).close()
        engine = make_engine(base.format("crossfold", "crossfold"))
        upgrade_schema(engine)
        engine.dispose()
    finally:
        server.remove()


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

"""The production layout: docker-compose.yml and the deploy/ scripts it mounts. Parsed, not
run (no Docker engine here): every command is a real entry point, every setting exists,
each service receives only the credentials it uses, no password is written in the file,
and the scripts do what the services count on."""
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
from urllib.parse import urlsplit

import pytest
import yaml

from api.cli import build_parser
from services.settings import Settings

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
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH"} <= known
    for name, service in SERVICES.items():
        if service.get("image") == "crossfold:latest":
            assert set(environment_of(service)) <= known, name


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
}
# The environment variables that carry a secret (or name its file), and who may have them.
CREDENTIAL_SETTINGS = {
    "POSTGRES_PASSWORD_FILE": {"postgres"},
    "CROSSFOLD_DB_PASSWORD_FILE": {"postgres"},
    "MLFLOW_DB_PASSWORD_FILE": {"postgres"},
    "CROSSFOLD_DATABASE_URL": {"api", "dispatcher"},
    "MLFLOW_TRACKING_PASSWORD": {"dispatcher"},
    "RAY_AUTH_TOKEN": {"ray-head", "ray-gpu-worker", "dispatcher"},
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
], ids=["ray-token-to-api", "database-to-worker", "database-url-to-worker", "mlflow-login-to-api",
        "mlflow-lacks-its-admin-password", "mlflow-login-to-ray", "literal-superuser-password",
        "literal-url-password", "password-file-not-a-secret", "secret-from-a-file"])
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
    assert published == {"api": ["8000:8000"], "mlflow": ["5000:5000"], "ray-head": ["127.0.0.1:8265:8265"]}


def test_the_deploy_scripts_exist_and_compose_mounts_each():
    mounted = {volume.split(":")[0]: volume.split(":")[1] for service in SERVICES.values()
               for volume in service.get("volumes", []) if volume.startswith("./")}
    scripts = {f"./deploy/{path.name}" for path in (ROOT / "deploy").iterdir()}
    assert scripts == {"./deploy/postgres-init.sh", "./deploy/mlflow-entrypoint.sh"}
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

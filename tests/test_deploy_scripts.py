"""The deploy/ scripts docker-compose.yml mounts, run here for real (each with a stand-in
for what its container holds): minio-init creates the bucket and the user the services
use, the MLflow entrypoint writes the auth config MLflow reads, the PostgreSQL init script
creates roles that are not superusers."""
from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.compose_file import ROOT, SERVICES, environment_of, store_uris


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

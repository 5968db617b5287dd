"""Security of the production layout (docker-compose.yml, parsed): each service receives
only the credentials it uses, no password is written in the file, the checks catch the
mistakes a review found, and the services connect as their own database roles."""
from __future__ import annotations

import copy
import re
from urllib.parse import urlsplit

import pytest

from tests.compose_file import COMPOSE, INTERPOLATION, ROOT, SERVICES, environment_of


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

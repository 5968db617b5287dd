#!/bin/sh
# Creates the services' database roles, run once by the postgres image on an empty data
# directory (/docker-entrypoint-initdb.d, as the superuser, over the local socket).
#   crossfold  owns the database crossfold (the API and the dispatcher)
#   mlflow     owns the databases mlflow (tracking) and mlflow_auth (MLflow's users)
# Neither is a superuser, neither can create roles or databases, and each database refuses
# connections from the other role. The passwords come from secret files (SQL cannot read the
# environment); psql quotes them (:'name'), and PostgreSQL stores them as SCRAM hashes.
# The image sources this file when it is not executable (its entrypoint already runs with
# `set -e`): a missing secret stops the initialization either way.
set -e

crossfold_read_secret() {
    if [ ! -s "$1" ]; then
        echo "postgres-init: the secret file $1 is missing or empty" >&2
        exit 1  # leaves the command substitution only; set -e stops the script
    fi
    cat "$1"
}

crossfold_db_password=$(crossfold_read_secret "${CROSSFOLD_DB_PASSWORD_FILE:-/run/secrets/crossfold_db_password}")
mlflow_db_password=$(crossfold_read_secret "${MLFLOW_DB_PASSWORD_FILE:-/run/secrets/mlflow_db_password}")
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v crossfold_password="$crossfold_db_password" -v mlflow_password="$mlflow_db_password" <<'SQL'
CREATE ROLE crossfold LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'crossfold_password';
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'mlflow_password';
CREATE DATABASE crossfold OWNER crossfold;
-- MLflow keeps its own schema (and its own alembic_version table) in a database of its own,
-- and its users and permissions (the basic-auth app) in another.
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE crossfold FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
SQL

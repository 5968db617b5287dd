#!/bin/sh
# Starts the MLflow server (the command, e.g. `mlflow server --app-name basic-auth ...`) with
# its secrets read at start-up, so that no password is written in the repository:
#   /run/secrets/mlflow_db_password       the `mlflow` database role's password
#   /run/secrets/mlflow_admin_password    the password of the MLflow admin `crossfold`
#   /run/secrets/mlflow_flask_secret_key  the key that signs the basic-auth app's CSRF tokens
# It writes the basic-auth ini to MLFLOW_AUTH_CONFIG_PATH (a tmpfs in docker-compose.yml),
# readable by its owner only, and exports the backend store URI, then runs the command.
# SECRETS_DIR and MLFLOW_DATABASE_HOST (host:port) move the secrets and the database (tests).
set -eu

secrets_dir=${SECRETS_DIR:-/run/secrets}
config=${MLFLOW_AUTH_CONFIG_PATH:-/run/mlflow/basic_auth.ini}
database=${MLFLOW_DATABASE_HOST:-postgres:5432}

read_secret() {
    if [ ! -s "$secrets_dir/$1" ]; then
        echo "mlflow-entrypoint: the secret $secrets_dir/$1 is missing or empty" >&2
        exit 1
    fi
    cat "$secrets_dir/$1"
}

db_password=$(read_secret mlflow_db_password)
admin_password=$(read_secret mlflow_admin_password)
MLFLOW_FLASK_SERVER_SECRET_KEY=$(read_secret mlflow_flask_secret_key)

# The password goes into URLs as it is: only unreserved characters (openssl rand -hex 32).
case $db_password in
    *[!A-Za-z0-9._~-]*)
        echo "mlflow-entrypoint: mlflow_db_password must be URL-safe ([A-Za-z0-9._~-])" >&2
        exit 1 ;;
esac
case $admin_password in
    *"
"*) echo "mlflow-entrypoint: mlflow_admin_password must be one line" >&2; exit 1 ;;
esac

umask 077
mkdir -p "$(dirname "$config")"
# configparser reads `%` as interpolation: written as `%%`.
cat > "$config" <<INI
[mlflow]
# Nobody sees an experiment unless granted: the dispatcher (the admin) grants each owner
# READ on their own jobs' experiments.
default_permission = NO_PERMISSIONS
database_uri = postgresql+psycopg://mlflow:$db_password@$database/mlflow_auth
admin_username = crossfold
admin_password = $(printf '%s' "$admin_password" | sed 's/%/%%/g')
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://mlflow:$db_password@$database/mlflow"
export MLFLOW_AUTH_CONFIG_PATH="$config" MLFLOW_BACKEND_STORE_URI MLFLOW_FLASK_SERVER_SECRET_KEY
unset db_password admin_password
exec "$@"

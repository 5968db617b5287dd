-- MLflow keeps its own schema (and its own alembic_version table) in a database of its own.
CREATE DATABASE mlflow;

"""The service's own logic, no HTTP: settings, database, jobs and their lifecycle,
the dispatcher, datasets, splits and MLflow tracking."""

"""Who sees what in MLflow, where its server runs its basic-auth app: each owner an
MLflow user granted READ on their own experiments and registered models."""
from __future__ import annotations

import secrets

from mlflow.exceptions import MlflowException

EXPERIMENT = "experiment"  # MLflow's resource type for an experiment's permissions
REGISTERED_MODEL = "registered_model"  # and for a registered model's


class MlflowAccess:
    """Who sees what, where the MLflow server runs its basic-auth app (docker-compose.yml).

    The server shows nothing to anyone not granted it (`default_permission =
    NO_PERMISSIONS`). The dispatcher logs in as MLflow's admin (MLFLOW_TRACKING_USERNAME /
    _PASSWORD, read by MLflow's client) and, creating an owner's experiment, grants that
    owner READ on it. Each owner is an MLflow user of the same name whose password is an
    API key of theirs, set by `crossfold keys create`: they log in to the UI with their
    owner name and key, and see their own jobs' experiments, runs and checkpoints only."""

    def __init__(self, tracking_uri: str):
        from mlflow.server.auth.client import AuthServiceClient  # loads MLflow's whole server
        self.client = AuthServiceClient(tracking_uri)

    def grant_read(self, owner: str, experiment_id: str) -> None:
        """Let `owner` read one experiment (its runs, metrics and artifacts), nothing more."""
        self.grant(owner, EXPERIMENT, experiment_id)

    def grant_model_read(self, owner: str, name: str) -> None:
        """Let `owner` read one registered model (its versions), nothing more."""
        self.grant(owner, REGISTERED_MODEL, name)

    def grant(self, owner: str, resource_type: str, resource_id: str) -> None:
        self.ensure_user(owner)
        try:
            self.client.grant_user_permission(owner, resource_type, resource_id, "READ")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # granted before: nothing to do
                raise

    def ensure_user(self, owner: str) -> None:
        """The owner's MLflow user; created with an unusable random password until a key
        of theirs sets one (set_password)."""
        if not self.exists(owner):
            self.create(owner, secrets.token_urlsafe(32))

    def set_password(self, owner: str, password: str) -> None:
        if self.exists(owner):
            self.client.update_user_password(owner, password)
        else:
            self.create(owner, password)

    def exists(self, owner: str) -> bool:
        try:
            self.client.get_user(owner)
            return True
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def create(self, owner: str, password: str) -> None:
        try:
            self.client.create_user(owner, password)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another dispatcher got there first
                raise

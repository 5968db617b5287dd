"""All configuration, read once from CROSSFOLD_* environment variables.

Invalid values fail at start-up, not on the first job.
"""
from __future__ import annotations

import ipaddress
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.quotas import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROSSFOLD_", extra="ignore")

    data_dir: Path = Path("crossfold-data")
    # Empty means: SQLite under data_dir. Set a postgresql+psycopg:// URL for production.
    database_url: str = ""
    # Empty means: a local MLflow store (SQLite + artifacts) under data_dir.
    mlflow_tracking_uri: str = ""
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    # The MLflow server runs its basic-auth app (docker-compose.yml): the dispatcher, its
    # admin, grants each owner their own experiments, and `crossfold keys create` sets the
    # owner's MLflow password to the new key (services.mlflow_access).
    mlflow_auth: bool = False
    # Where datasets are stored, as a pyarrow.fs URI (s3://bucket/prefix on a cluster, which
    # every Ray node must reach). Empty means: a folder under data_dir.
    dataset_store: str = ""
    max_upload_bytes: int = Field(4 * 2**30, ge=1024, description="larger dataset uploads get 413")
    # Empty means: start a local Ray; RAY_ADDRESS (or this) joins an existing cluster.
    ray_address: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="API processes (`crossfold api` only)")
    api_threads: int = Field(4, ge=1, le=256, description="worker threads per API process")
    # Authentication: None (default) means on whenever the API binds to a non-loopback
    # address; true or false forces it.
    auth_required: bool | None = None
    # With authentication off, the API answers only requests whose Host header names this
    # machine's loopback (or api_host): a web page cannot reach it by DNS rebinding. Other
    # names it may be called by, comma-separated (a reverse proxy needs authentication on).
    allowed_hosts: str = ""
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    # A job whose fold would need more memory than this (services.memory's estimate) is
    # refused at submission: GPU nodes are shared, and an oversized fold fails them all.
    max_fold_memory_bytes: int = Field(8 * 2**30, ge=2**20)
    # data_loading "auto" streams a dataset whose encoded features would take more than
    # this: a fold task then holds a shuffle buffer and a few row groups, not the dataset.
    stream_above_bytes: int = Field(2**30, ge=0)
    # Per-owner limits (services.quotas); the administrator may set an owner's own with
    # `crossfold keys limits`.
    max_queued_jobs: int = Field(100, ge=1)
    max_running_folds: int = Field(20, ge=1)
    submissions_per_minute: int = Field(120, ge=1)
    max_dataset_bytes: int = Field(20 * 2**30, ge=1)
    max_job_runtime_s: int = Field(86_400, ge=1, le=30 * 86_400)
    poll_interval_s: float = Field(0.5, gt=0, le=10)
    # A dispatcher renews its jobs' leases every poll; a job whose lease lapses (its
    # dispatcher died) is adopted by another dispatcher.
    lease_s: float = Field(30.0, ge=1, le=3600)
    fold_max_retries: int = Field(2, ge=0, le=10)
    # Jobs one dispatcher runs at once; the others wait in the queue.
    max_active_jobs: int = Field(2, ge=1, le=1000)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if url and not url.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return url

    def requires_auth(self) -> bool:
        if self.auth_required is not None:
            return self.auth_required
        return not is_loopback(self.api_host)

    def default_limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})

    def trusted_hosts(self) -> list[str]:
        extra = [name.strip() for name in self.allowed_hosts.split(",") if name.strip()]
        own = f"[{self.api_host}]" if ":" in self.api_host else self.api_host  # an IPv6 literal
        return ["127.0.0.1", "[::1]", "localhost", own, *extra]

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'crossfold.db'}"

    def resolved_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir.resolve() / 'mlflow.db'}"

    def resolved_dataset_store(self) -> str:
        return self.dataset_store or str(self.data_dir.resolve() / "datasets")

    def uploads_dir(self) -> Path:
        """Where uploads are received before they are checked and stored."""
        return self.data_dir.resolve() / "uploads"

    def artifacts_dir(self) -> Path | None:
        """Artifacts of the local MLflow store; None when an MLflow server keeps them."""
        return None if self.mlflow_tracking_uri else self.data_dir.resolve() / "mlartifacts"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@lru_cache
def get_settings() -> Settings:
    return Settings()

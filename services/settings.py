"""All configuration, read once from CROSSFOLD_* environment variables.

Invalid values fail at start-up, not on the first job.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.quotas import Limits
from workers.storage import has_credentials, with_options


class Settings(BaseSettings):
    # validate_by_name: the S3 settings also read the standard AWS variables (aliases), and
    # code and tests still set them by name. hide_input_in_errors: a start-up error must not
    # print the values it was given (a secret key, a database URL's password).
    model_config = SettingsConfigDict(env_prefix="CROSSFOLD_", extra="ignore", validate_by_name=True,
                                      hide_input_in_errors=True)

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
    # Where fold tasks keep epoch checkpoints to resume from and best checkpoints on their
    # way to MLflow, as a pyarrow.fs URI every Ray node reaches. Empty means: a folder
    # under data_dir. A job's are deleted when it ends.
    checkpoint_store: str = ""
    # The object store of s3:// stores. Its endpoint (http://minio:9000) and region go into
    # the store URIs handed to fold tasks (store_uri), so any node opens the same store from
    # the URI alone. Unset, each is read from the standard AWS variable; an empty endpoint
    # means AWS itself.
    s3_endpoint: str = Field("", validation_alias=AliasChoices(
        "CROSSFOLD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    s3_region: str = Field("", validation_alias=AliasChoices(
        "CROSSFOLD_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))
    # S3 credentials never go into a URI: URIs are logged to MLflow (the dataset source) and
    # shown in job JSON. Every process, and every Ray node, reads them from its environment
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as any AWS client does. These two, when
    # set, are exported there at start-up (export_s3_credentials): for this process's
    # pyarrow and the local Ray it may start; a real cluster's nodes need the AWS variables.
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
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
    # The dispatcher's longest wait between ticks, and the pace at which progress is stored:
    # a submission, a cancel or a fold task that returns wakes it sooner (services.wakeups);
    # the poll is what finds the jobs of an API on SQLite in another process.
    poll_interval_s: float = Field(0.5, gt=0, le=10)
    # A dispatcher renews its jobs' leases every poll; a job whose lease lapses (its
    # dispatcher died) is adopted by another dispatcher.
    lease_s: float = Field(30.0, ge=1, le=3600)
    fold_max_retries: int = Field(2, ge=0, le=10)
    # Jobs are started while the cluster has room for their folds (services.capacity);
    # this bounds the jobs one dispatcher runs at once besides. None: no bound.
    max_active_jobs: int | None = Field(None, ge=1, le=100_000)
    # An autoscaler adds nodes on demand: a job no node can run yet waits, queued, with
    # its reason shown, instead of being refused at submission.
    cluster_can_grow: bool = False
    # A `crossfold dispatcher` process serves its own metrics (tick durations, progress
    # lag: services.metrics) on this port, on every address; None: not served. Under
    # `crossfold serve` the API's /metrics has them.
    dispatcher_metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if url and not url.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return url

    @field_validator("dataset_store", "checkpoint_store")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        if has_credentials(uri):
            raise ValueError("must not hold credentials (it is logged and shown): set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
        return uri

    @model_validator(mode="after")
    def _both_s3_keys_or_neither(self) -> "Settings":
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key.get_secret_value()):
            raise ValueError("set both CROSSFOLD_S3_ACCESS_KEY_ID and CROSSFOLD_S3_SECRET_ACCESS_KEY, or neither")
        return self

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
        return self.store_uri(self.dataset_store) or str(self.data_dir.resolve() / "datasets")

    def resolved_checkpoint_store(self) -> str:
        return self.store_uri(self.checkpoint_store) or str(self.data_dir.resolve() / "checkpoints")

    def store_uri(self, uri: str) -> str:
        """A store as fold tasks receive it: an s3:// URI gains the endpoint and region
        (options the URI sets itself win); other URIs are left as they are."""
        return with_options(uri, self.s3_options()) if uri.startswith("s3://") else uri

    def s3_options(self) -> dict[str, str]:
        """The options of pyarrow's S3 URIs (S3FileSystem.from_uri) these settings give."""
        options = {"region": self.s3_region} if self.s3_region else {}
        if "://" in self.s3_endpoint:  # http://host:port: pyarrow wants the scheme apart
            endpoint = urlsplit(self.s3_endpoint)
            options |= {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme}
        elif self.s3_endpoint:
            options["endpoint_override"] = self.s3_endpoint
        return options

    def export_s3_credentials(self) -> None:
        """Put the S3 credentials of these settings where pyarrow (and any Ray worker this
        process starts) reads them: the standard AWS variables of this process."""
        if self.s3_access_key_id:
            os.environ["AWS_ACCESS_KEY_ID"] = self.s3_access_key_id
            os.environ["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_access_key.get_secret_value()

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

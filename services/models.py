"""Database tables: one row per job, one per fold of a job."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Integer, String,
                        Text, TypeDecorator, UniqueConstraint, false)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.states import FoldStatus, JobStatus


LOCAL_OWNER = "local"  # the owner of every job when authentication is off
BUNDLED_OWNER = "bundled"  # the owner of the bundled datasets, which every owner can read


class Base(DeclarativeBase):
    pass


def _status(enum_type) -> Enum:
    # Stored as plain strings (no PostgreSQL ENUM type), so adding a state is a
    # code change, not a type migration.
    return Enum(enum_type, native_enum=False, length=16,
                values_callable=lambda members: [m.value for m in members])


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Times in UTC, read back with their time zone: SQLite drops it on storage, and an
    API answer without an offset is not a valid RFC 3339 date-time."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100), default=LOCAL_OWNER, server_default=LOCAL_OWNER,
                                       index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    # The data it trains on, resolved at submission (services.job_data.JobData), and the
    # stored dataset that is, if any: a dataset in use cannot be deleted.
    data: Mapped[dict | None] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # A client's Idempotency-Key and a hash of the body it came with: the same key
    # returns the same job; the same key with another body is a conflict.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(_status(JobStatus), default=JobStatus.QUEUED, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatcher_id: Mapped[str | None] = mapped_column(String(64))
    # The running dispatcher renews this; once it lapses, another dispatcher adopts the job.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict | None] = mapped_column(JSON)  # test_<metric>_mean / _std
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    # A start that failed for a passing reason (MLflow unreachable) puts the job back in the
    # queue; it is not claimed again before `not_before`, later each time.
    start_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The spec's priority, as a column for the claim query to order by (higher first).
    # Not indexed: the order also depends on the owner's turn, so the queued rows are
    # sorted anyway; the status index finds them.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Why a queued job is not started yet when that is not just the queue (no node can
    # run its folds until the cluster grows); None otherwise.
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    # A study's variant: the study, and the variant's label (services.studies).
    study_id: Mapped[str | None] = mapped_column(String(36), index=True)
    variant: Mapped[str | None] = mapped_column(String(100))
    # A refit (services.refits): the job whose folds it follows, trained on every row, and
    # the MLflow Model Registry version it registered ({"name", "version"}).
    refit_of: Mapped[str | None] = mapped_column(String(36), index=True, unique=True)  # one refit a job
    registered_model: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    folds: Mapped[list[Fold]] = relationship(back_populates="job", order_by="Fold.index",
                                             cascade="all, delete-orphan")
    # Its refit, once asked for (at most one: services.refits).
    refits: Mapped[list[Job]] = relationship(primaryjoin="Job.id == foreign(Job.refit_of)", viewonly=True,
                                             lazy="selectin", join_depth=1)  # loaded with the job: the API shows it


class Study(Base):
    """Several variants of one job on identical folds (services.studies): each variant
    is an ordinary job with study_id set; the study's state is its jobs'."""
    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_studies_owner_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    spec: Mapped[dict] = mapped_column(JSON)  # the request, its variants expanded
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    # When its MLflow run received the leaderboard, figures and report, and was closed.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow, index=True)


class ApiKey(Base):
    """An API key, stored only as its SHA-256: the key itself is shown once, at creation."""
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str | None] = mapped_column(String(16))  # the key's first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # to the minute
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # This key is its owner's MLflow password (where MLflow runs basic-auth): revoked or
    # expired, the password is replaced (services.mlflow_logins).
    mlflow_login: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ClusterNode(Base):
    """An alive Ray node as the dispatcher last saw it (services.capacity): what the API
    judges a job's resources by, with no link to Ray of its own."""
    __tablename__ = "cluster_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OwnerLimits(Base):
    """One owner's own limits, set by the administrator; a missing value (or row) means
    the setting's default (services.quotas)."""
    __tablename__ = "owner_limits"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_folds: Mapped[int | None] = mapped_column(Integer)
    submissions_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_dataset_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_job_runtime_s: Mapped[int | None] = mapped_column(Integer)


class OwnerTurn(Base):
    """When each owner was last served a job, as a claim number (services.lifecycle):
    the owner served longest ago goes first. A counter, not a time, so that dispatchers
    on machines whose clocks disagree still take turns in order."""
    __tablename__ = "owner_turns"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    turn: Mapped[int] = mapped_column(BigInteger)  # the number of its latest claim, 1, 2, ...


class Fold(Base):
    __tablename__ = "folds"
    __table_args__ = (UniqueConstraint("job_id", "fold_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column("fold_index", Integer)
    status: Mapped[FoldStatus] = mapped_column(_status(FoldStatus), default=FoldStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The latest epoch's figures, and the best epoch's (the one early stopping keeps).
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_val_loss: Mapped[float | None] = mapped_column(Float)
    best_val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_metrics: Mapped[dict | None] = mapped_column(JSON)
    confusion: Mapped[list | None] = mapped_column(JSON)  # on its test rows: [true][predicted]
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))  # host:pid of its latest attempt
    # Each attempt, in order: {"attempt", "node" (the Ray node's id), "resumed_after_epoch"}.
    nodes: Mapped[list | None] = mapped_column(JSON)
    target_epoch: Mapped[int | None] = mapped_column(Integer)  # the first epoch at the job's target_val_loss
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    job: Mapped[Job] = relationship(back_populates="folds")


class Dataset(Base):
    """A stored dataset: one Parquet file in the dataset store, and its description."""
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_datasets_owner_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    format: Mapped[str] = mapped_column(String(16))        # as uploaded: csv or parquet
    uri: Mapped[str] = mapped_column(String(1000))          # the stored Parquet file
    digest: Mapped[str] = mapped_column(String(64))         # sha256 of that file
    size: Mapped[int] = mapped_column(BigInteger)           # its bytes
    rows: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[list] = mapped_column(JSON)             # services.profiles descriptions
    extra: Mapped[dict] = mapped_column(JSON, default=dict)  # e.g. a bundled dataset's label and image shape
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)

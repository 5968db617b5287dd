"""Datasets as a resource: created from an upload, read, listed and deleted (no HTTP here).

Datasets belong to owners exactly as jobs do: another owner's dataset does not exist for
you. The bundled datasets belong to BUNDLED_OWNER, which every owner can read and nobody
can delete.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.dataset_store import DatasetStore
from services.errors import BundledDataset, DatasetInUse, DatasetNameTaken, DatasetNotFound
from services.growing import GrowingFile
from services.ingest import Ingested, ingest
from services.models import BUNDLED_OWNER, Dataset, Job
from services.states import JobStatus

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def readable_by(owner: str | None):
    """The datasets `owner` may see: its own and the bundled ones (None: every dataset)."""
    return True if owner is None else or_(Dataset.owner == owner, Dataset.owner == BUNDLED_OWNER)


def store_upload(*, store: DatasetStore, upload: Path | GrowingFile) -> tuple[str, Ingested]:
    """Check, convert and store an upload (as it arrives, given a GrowingFile): a new
    dataset's id and what was stored; nothing is kept if it is refused."""
    dataset_id = str(uuid.uuid4())
    return dataset_id, ingest(upload, store, dataset_id)


def add_dataset(*, session: Session, store: DatasetStore, dataset_id: str, stored: Ingested, name: str,
                owner: str) -> Dataset:
    """The stored upload as `owner`'s dataset `name`; its file is removed if it cannot be."""
    dataset = Dataset(id=dataset_id, name=name, owner=owner, format=stored.format,
                      uri=store.uri_of(dataset_id), digest=stored.digest, size=stored.size,
                      rows=stored.rows, columns=stored.columns, extra={})
    session.add(dataset)
    try:
        session.commit()
    except BaseException as error:
        session.rollback()
        store.delete(dataset_id)  # the row is not there: neither is the file
        if isinstance(error, IntegrityError):  # the owner has a dataset of that name
            raise DatasetNameTaken(f"you have a dataset named {name!r} already") from None
        raise
    return dataset


def get_dataset(*, session: Session, dataset_id: str, owner: str | None = None) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, readable_by(owner)))
    if dataset is None:
        raise DatasetNotFound(f"dataset {dataset_id} not found")
    return dataset


def find_dataset(*, session: Session, name: str, owner: str | None) -> Dataset:
    """A dataset by name: the caller's own first, then a bundled one."""
    found = session.scalars(select(Dataset).where(Dataset.name == name, readable_by(owner))).all()
    found.sort(key=lambda dataset: dataset.owner == BUNDLED_OWNER)
    if not found:
        raise DatasetNotFound(f"no dataset named {name!r}")
    return found[0]


def list_datasets(*, session: Session, owner: str | None, limit: int = 50,
                  offset: int = 0) -> tuple[list[Dataset], int]:
    """A page of the datasets `owner` can read, newest first, and their total count."""
    query = select(Dataset).where(readable_by(owner))
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset))
    return list(page), total


def delete_dataset(*, session: Session, store: DatasetStore, dataset_id: str, owner: str | None) -> None:
    dataset = get_dataset(session=session, dataset_id=dataset_id, owner=owner)
    if dataset.owner == BUNDLED_OWNER:
        raise BundledDataset(f"{dataset.name} is a bundled dataset: it cannot be deleted")
    users = session.scalars(select(Job.id).where(Job.dataset_id == dataset_id,
                                                 Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))
    if users := list(users):
        raise DatasetInUse(f"dataset {dataset_id} is used by queued or running jobs: {', '.join(users)}")
    session.delete(dataset)
    session.commit()
    store.delete(dataset_id)  # after the commit: a failure here leaves a file, never a row without one

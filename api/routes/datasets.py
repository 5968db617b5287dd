"""/datasets: upload a CSV or Parquet file, read, list and delete datasets, each scoped to
the caller (the bundled datasets are readable by everyone).

An owner's datasets keep at most `max_dataset_bytes` bytes of stored Parquet (the
setting, or the owner's override; bundled datasets do not count): an owner already at
the limit is refused (429) before the body is read, and an upload whose stored file would
pass it is removed and refused (429) before it is recorded. Deleting datasets frees room.
"""
from __future__ import annotations

import asyncio
import re
import threading
import uuid
from pathlib import PurePath
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.schemas import DatasetOut, DatasetPage, dataset_out
from api.uploads import receive_upload
from services import catalog
from services.dataset_store import DatasetStore
from services.errors import InvalidDataset
from services.growing import GrowingFile
from services.ingest import Ingested
from services.models import Dataset
from services.quotas import Limits, QuotaExceeded, check_storage, limits_of

router = APIRouter(prefix="/datasets", tags=["datasets"], responses={
    503: {"description": "the database cannot be reached; try again after Retry-After seconds"}})

UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV (UTF-8) or Parquet"},
        "name": {"type": "string", "pattern": catalog.NAME_PATTERN,
                 "description": "defaults to the file's name, without its extension"}}}}}}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut, openapi_extra=UPLOAD_FORM,
             responses={409: {"description": "you have a dataset of that name already"},
                        413: {"description": "the file is over CROSSFOLD_MAX_UPLOAD_BYTES"},
                        415: {"description": "neither CSV nor Parquet"},
                        422: {"description": "the file cannot be a dataset (the reason, and the line)"},
                        429: {"description": "your datasets would keep more bytes than your limit "
                                              "(CROSSFOLD_MAX_DATASET_BYTES): delete some first; "
                                              "Retry-After says when to try again"}})
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         owner: OwnerDep) -> JSONResponse:
    defaults = settings.default_limits()
    # An owner with no room left is told before a byte of the body is read.
    await anyio.to_thread.run_sync(lambda: check_room(session, owner, defaults))
    store, folder = request.app.state.store, settings.uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    growing = GrowingFile(folder / f"{uuid.uuid4().hex}.upload")
    growing.path.touch()
    # Checked, converted and described while it arrives (CPU work: in a worker thread).
    storing = asyncio.ensure_future(anyio.to_thread.run_sync(
        lambda: catalog.store_upload(store=store, upload=growing)))
    try:
        try:
            upload = await receive_upload(request, growing, settings.max_upload_bytes)
        except BaseException as error:
            growing.fail(error)
            await asyncio.gather(storing, return_exceptions=True)  # it stops, keeping nothing
            raise
        dataset_id, stored = await storing
        try:
            name = dataset_name(upload.fields.get("name"), upload.filename)
        except InvalidDataset:
            store.delete(dataset_id)
            raise
        dataset = await anyio.to_thread.run_sync(lambda: keep_dataset(
            session=session, store=store, defaults=defaults, dataset_id=dataset_id, stored=stored,
            name=name, owner=owner))
    finally:
        growing.path.unlink(missing_ok=True)
    return JSONResponse(dataset_out(dataset).model_dump(mode="json"), status_code=status.HTTP_201_CREATED,
                        headers={"Location": f"/datasets/{dataset.id}"})


STORAGE_RETRY_AFTER_S = 3600  # room comes back only when the owner deletes datasets


def kept_bytes(session: Session, owner: str) -> int:
    return session.scalar(select(func.coalesce(func.sum(Dataset.size), 0)).where(Dataset.owner == owner))


def check_room(session: Session, owner: str, defaults: Limits) -> None:
    """QuotaExceeded if the owner's datasets are at or over their limit already. Its
    transaction is ended here: none stays open while the upload arrives."""
    try:
        limit = limits_of(session, owner, defaults).max_dataset_bytes
        kept = kept_bytes(session, owner)
    finally:
        session.rollback()
    if kept >= limit:
        raise QuotaExceeded(f"your datasets keep {kept:,} bytes, your limit is {limit:,} "
                            "(CROSSFOLD_MAX_DATASET_BYTES): delete datasets to upload more",
                            STORAGE_RETRY_AFTER_S)


# On SQLite (one API process) the check and the insert of one owner's uploads are
# serialized in the process; on PostgreSQL by a lock of the owner in the database.
_sqlite_storage_locks: dict[str, threading.Lock] = {}
_sqlite_storage_locks_guard = threading.Lock()


def sqlite_storage_lock(owner: str) -> threading.Lock:
    with _sqlite_storage_locks_guard:
        return _sqlite_storage_locks.setdefault(owner, threading.Lock())


def keep_dataset(*, session: Session, store: DatasetStore, defaults: Limits, dataset_id: str,
                 stored: Ingested, name: str, owner: str) -> Dataset:
    """The stored upload as the owner's dataset, if it fits in the owner's storage limit:
    the check and the insert are one transaction, under a lock of the owner, so that
    uploads arriving together cannot together pass the limit. If it does not fit, its
    file is removed and nothing is recorded (QuotaExceeded)."""
    if session.get_bind().dialect.name == "postgresql":
        return check_and_add(session, store, defaults, dataset_id, stored, name, owner, lock=True)
    with sqlite_storage_lock(owner):
        return check_and_add(session, store, defaults, dataset_id, stored, name, owner, lock=False)


def check_and_add(session: Session, store: DatasetStore, defaults: Limits, dataset_id: str,
                  stored: Ingested, name: str, owner: str, *, lock: bool) -> Dataset:
    try:
        if lock:  # held until the commit (or rollback) that ends this transaction
            session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"crossfold-storage:{owner}"))))
        check_storage(session, owner, limits_of(session, owner, defaults), stored.size)
    except BaseException:
        session.rollback()
        store.delete(dataset_id)  # refused: its file is not kept
        raise
    # Commits in this same transaction (and removes the file if the insert fails).
    return catalog.add_dataset(session=session, store=store, dataset_id=dataset_id, stored=stored,
                               name=name, owner=owner)


def dataset_name(given: str | None, filename: str | None) -> str:
    name = given if given is not None else PurePath(filename or "").stem  # "" is a bad name, not none
    if not re.fullmatch(catalog.NAME_PATTERN, name or ""):
        raise InvalidDataset(f"name {name!r}: 1 to 100 letters, digits, '_', '.' or '-', "
                             "starting with a letter or a digit")
    return name


@router.get("", response_model=DatasetPage)
def list_datasets(session: SessionDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0):
    page, total = catalog.list_datasets(session=session, owner=owner, limit=limit, offset=offset)
    return DatasetPage(items=[dataset_out(d) for d in page], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {"description": "no such dataset"}})
def read_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep):
    return dataset_out(catalog.get_dataset(session=session, dataset_id=dataset_id, owner=owner))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={403: {"description": "a bundled dataset"}, 404: {"description": "no such dataset"},
                          409: {"description": "a queued or running job uses it"}})
def delete_dataset(dataset_id: str, request: Request, session: SessionDep, owner: OwnerDep) -> Response:
    catalog.delete_dataset(session=session, store=request.app.state.store, dataset_id=dataset_id,
                           owner=owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

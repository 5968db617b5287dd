"""/datasets: upload a CSV or Parquet file, read, list and delete datasets, each scoped to
the caller (the bundled datasets are readable by everyone)."""
from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import PurePath
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.schemas import DatasetOut, DatasetPage, dataset_out
from api.uploads import receive_upload
from services import catalog
from services.errors import InvalidDataset
from services.growing import GrowingFile

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
                        422: {"description": "the file cannot be a dataset (the reason, and the line)"}})
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         owner: OwnerDep) -> JSONResponse:
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
        dataset = await anyio.to_thread.run_sync(lambda: catalog.add_dataset(
            session=session, store=store, dataset_id=dataset_id, stored=stored, name=name, owner=owner))
    finally:
        growing.path.unlink(missing_ok=True)
    return JSONResponse(dataset_out(dataset).model_dump(mode="json"), status_code=status.HTTP_201_CREATED,
                        headers={"Location": f"/datasets/{dataset.id}"})


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

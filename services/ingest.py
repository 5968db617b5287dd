"""Turning an uploaded file into a stored dataset: checked, converted, described.

The format comes from the content: Parquet by its magic bytes, CSV for UTF-8 text, and
anything else (a zip, an image, binary data) is refused. A CSV is converted once, with
pyarrow's streaming reader, into Parquet row groups: memory stays at a few blocks
whatever the file's size. Column types are inferred from the first block; where a later
block holds a value that does not fit (1.5 in a column of integers, text in a column of
numbers), the column is widened (integer → float → string) and the conversion starts
again. The description (services.profiles) is computed during the same pass.

Every refusal raises InvalidDataset (422) or UnsupportedFormat (415), naming the line or
the column where it can; the store then holds nothing new (DatasetStore.writing).
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

from services.dataset_store import DatasetStore
from services.errors import InvalidDataset, UnsupportedFormat
from services.profiles import TableProfile

PARQUET_MAGIC = b"PAR1"
BINARY_MAGIC = {b"PK\x03\x04": "a zip archive (an Excel workbook?)", b"\x1f\x8b": "a gzip file",
                b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"\xff\xd8\xff": "a JPEG image"}
CHUNK = 1 << 20
BLOCK_SIZE = 8 << 20           # CSV bytes per parsed block (types are inferred from the first)
ROW_GROUP_ROWS = 128 * 1024    # rows per Parquet row group: what a fold task streams later
# What a column becomes when a value does not fit its type; a column that began empty
# (null) is tried as numbers first.
WIDER = {"int64": pa.float64(), "null": pa.float64(), "double": pa.string(), "bool": pa.string()}


@dataclass(frozen=True)
class Ingested:
    format: str                 # "csv" or "parquet", as uploaded
    rows: int
    size: int                   # bytes of the stored Parquet file
    digest: str                 # sha256 of the stored Parquet file
    columns: list[dict]         # services.profiles descriptions


def ingest(upload: Path, store: DatasetStore, dataset_id: str) -> Ingested:
    """Store `upload` as dataset `dataset_id` and describe it, or raise without storing."""
    kind = sniff(upload)
    with store.writing(dataset_id) as staging:
        if kind == "parquet":
            profile = copy_parquet(upload, store, staging)
        else:
            check_text(upload)
            profile = convert_csv(upload, store, staging)
        if profile.rows == 0:
            raise InvalidDataset("the file has a header but no rows")
        size, digest = size_and_digest(store, staging)
    return Ingested(kind, profile.rows, size, digest, profile.describe())


def sniff(upload: Path) -> str:
    with open(upload, "rb") as file:
        head = file.read(4096)
    if not head:
        raise InvalidDataset("the file is empty")
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    for magic, what in BINARY_MAGIC.items():
        if head.startswith(magic):
            raise UnsupportedFormat(f"the file is {what}; upload CSV or Parquet")
    if b"\x00" in head:
        raise UnsupportedFormat("the file is binary data, neither CSV nor Parquet")
    return "csv"


def check_text(upload: Path) -> None:
    """UTF-8 throughout; otherwise the line where it stops being so."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(upload, "rb") as file:
        while chunk := file.read(CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line += chunk.count(b"\n", 0, error.start)
                raise InvalidDataset(f"line {line} is not UTF-8 text (byte {error.object[error.start]:#x}); "
                                     "save the file as UTF-8") from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InvalidDataset(f"line {line} ends in the middle of a UTF-8 character") from None


def header_of(upload: Path) -> list[str]:
    with open(upload, newline="", encoding="utf-8") as file:
        names = next(csv.reader(file), [])
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise InvalidDataset(f"column {blank[0]} of the header has no name")
    check_unique(names)
    return names


def check_unique(names: list[str]) -> None:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidDataset(f"duplicate column names: {', '.join(twice)}")


def convert_csv(upload: Path, store: DatasetStore, staging: str) -> TableProfile:
    names = header_of(upload)
    types: dict[str, pa.DataType] = {}
    for _ in range(2 * len(names) + 1):  # each retry widens one column at least once
        try:
            return write_csv_as_parquet(upload, store, staging, types)
        except pa.ArrowInvalid as error:
            types = widened(str(error), names, types) or raise_unreadable(upload, error)
    raise InvalidDataset("the column types could not be settled")


def write_csv_as_parquet(upload: Path, store: DatasetStore, staging: str,
                         types: dict[str, pa.DataType]) -> TableProfile:
    reader = pv.open_csv(upload, read_options=pv.ReadOptions(block_size=BLOCK_SIZE),
                         convert_options=pv.ConvertOptions(column_types=types, strings_can_be_null=True))
    profile = TableProfile(reader.schema)
    with store.fs.open_output_stream(staging) as sink, pq.ParquetWriter(sink, reader.schema) as writer:
        for batch in reader:
            profile.add(batch)
            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
    return profile


CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+)")


def widened(message: str, names: list[str], types: dict) -> dict | None:
    """The column types with the one that failed to convert widened, or None when the
    error is not a conversion (a ragged row, say) or cannot widen further."""
    found = CONVERSION.search(message)
    if not found or int(found.group(1)) >= len(names):
        return None
    wider = WIDER.get(found.group(2), pa.string() if found.group(2) != "string" else None)
    if wider is None:
        return None
    return {**types, names[int(found.group(1))]: wider}


def raise_unreadable(upload: Path, error: pa.ArrowInvalid):
    """A row with the wrong number of fields, by its line; any other parse error as is."""
    with open(upload, newline="", encoding="utf-8") as file:
        rows = csv.reader(file)
        width = len(next(rows))
        for row in rows:
            if len(row) != width and row:
                raise InvalidDataset(f"line {rows.line_num} has {len(row)} fields; the header has "
                                     f"{width}") from None
    raise InvalidDataset(f"the CSV file cannot be read: {error}") from None


def copy_parquet(upload: Path, store: DatasetStore, staging: str) -> TableProfile:
    """A Parquet upload is checked and described by row group, and stored as it came."""
    try:
        parquet = pq.ParquetFile(upload)
        check_unique(parquet.schema_arrow.names)
        profile = TableProfile(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
            profile.add(batch)
    except (pa.ArrowException, OSError) as error:
        raise InvalidDataset(f"the file is not a readable Parquet file: {error}") from None
    with open(upload, "rb") as source, store.fs.open_output_stream(staging) as sink:
        while chunk := source.read(CHUNK):
            sink.write(chunk)
    return profile


def size_and_digest(store: DatasetStore, path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with store.fs.open_input_stream(path) as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()

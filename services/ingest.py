"""Turning an uploaded file into a stored dataset: checked, converted, described.

The format comes from the content: Parquet by its magic bytes, CSV for UTF-8 text, and
anything else (a zip, an image, binary data) is refused. A CSV is converted once, with
pyarrow's streaming reader, into Parquet row groups: memory stays at a few small blocks
whatever the file's size. Column types are inferred from the file's first SAMPLE_BYTES;
where a later block holds a value that does not fit (1.5 in a column of integers, text
in a column of numbers), the column is widened (integer → float → string) and the
conversion starts again. While the reader parses the next blocks, a thread writes the
Parquet file (hashing it as it goes) and the description (services.profiles) is
computed: one pass over the file.

Every refusal raises InvalidDataset (422) or UnsupportedFormat (415), naming the line or
the column where it can; the store then holds nothing new (DatasetStore.writing).
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

from services.dataset_store import DatasetStore
from services.errors import InvalidDataset, UnsupportedFormat
from services.growing import GrowingFile
from services.profiles import TableProfile

PARQUET_MAGIC = b"PAR1"
BINARY_MAGIC = {b"PK\x03\x04": "a zip archive (an Excel workbook?)", b"\x1f\x8b": "a gzip file",
                b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"\xff\xd8\xff": "a JPEG image"}
CHUNK = 1 << 20
SAMPLE_BYTES = 16 << 20        # the column types are inferred from this much of the file
BLOCK_SIZE = 1 << 20           # CSV bytes per parsed block: the reader keeps a few in flight
PROFILE_BATCHES = 16           # blocks described together (fewer, larger kernel calls)
ROW_GROUP_ROWS = 128 * 1024    # rows per Parquet row group, at most
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


def ingest(upload: Path | GrowingFile, store: DatasetStore, dataset_id: str) -> Ingested:
    """Store `upload` as dataset `dataset_id` and describe it, or raise without storing. An
    upload still arriving (GrowingFile) is converted as it comes."""
    upload = upload if isinstance(upload, GrowingFile) else GrowingFile.whole(upload)
    kind = sniff(upload)
    with store.writing(dataset_id) as staging:
        def output() -> HashingSink:  # (again, for each attempt at the conversion)
            return HashingSink(store.fs.open_output_stream(staging))
        profile, sink = copy_parquet(upload, output) if kind == "parquet" else convert_csv(upload, output)
        if profile.rows == 0:
            raise InvalidDataset("the file has a header but no rows")
    return Ingested(kind, profile.rows, sink.size, sink.digest.hexdigest(), profile.describe())


class HashingSink:
    """An output stream that hashes (sha256) and counts what goes through it."""

    def __init__(self, stream):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0
        self.closed = False

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True

    def __enter__(self) -> "HashingSink":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def sniff(upload: GrowingFile) -> str:
    with upload.open() as file:
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


def check_text(upload: GrowingFile) -> None:
    """UTF-8 throughout; otherwise the line where it stops being so."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with upload.open() as file:
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


def header_of(upload: GrowingFile) -> list[str]:
    """The column names as pyarrow reads them: from the first line that is not empty,
    a line ending at \r, \n or \r\n."""
    with upload.open() as file:
        start = file.read(1 << 20)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(start)  # a cut character waits
    except UnicodeDecodeError:
        check_text(upload)  # says where, and raises
    header = next((line for line in re.split(r"\r\n|\r|\n", text) if line), "")
    try:
        names = next(csv.reader([header]), [])
    except csv.Error as error:
        raise InvalidDataset(f"the header is not CSV: {error}") from None
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise InvalidDataset(f"column {blank[0]} of the header has no name")
    check_unique(names)
    return names


def check_unique(names: list[str]) -> None:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidDataset(f"duplicate column names: {', '.join(twice)}")


def convert_csv(upload: GrowingFile, output: Callable[[], HashingSink]) -> tuple[TableProfile, HashingSink]:
    names = header_of(upload)
    types = sample_types(upload)
    for _ in range(2 * len(names) + 1):  # each retry widens one column at least once
        try:
            with output() as sink:
                return write_csv_as_parquet(upload, sink, types), sink
        except pa.ArrowInvalid as error:
            if "UTF8" in str(error):
                check_text(upload)  # says which line, and raises
            types = widened(str(error), names, types) or raise_unreadable(upload, error)
    raise InvalidDataset("the column types could not be settled")


def sample_types(upload: GrowingFile) -> dict[str, pa.DataType]:
    """Column types inferred from the file's first SAMPLE_BYTES (whole lines)."""
    with upload.open() as file:
        sample = file.read(SAMPLE_BYTES)
    if len(sample) == SAMPLE_BYTES:
        sample = sample[:sample.rfind(b"\n") + 1] or sample
    try:
        schema = pv.read_csv(pa.BufferReader(sample)).schema
    except pa.ArrowInvalid as error:
        raise_unreadable(upload, error)
    if any(pa.types.is_binary(field.type) for field in schema):  # bytes that are not UTF-8
        check_text(upload)
    return {field.name: field.type for field in schema}


def write_csv_as_parquet(upload: GrowingFile, sink, types: dict[str, pa.DataType]) -> TableProfile:
    with upload.open() as source:
        reader = pv.open_csv(pa.PythonFile(source, mode="r"), read_options=pv.ReadOptions(block_size=BLOCK_SIZE),
                             convert_options=pv.ConvertOptions(column_types=types, strings_can_be_null=True))
        return write_batches(reader, sink)


def write_batches(reader: pv.CSVStreamingReader, sink) -> TableProfile:
    strings = [f.name for f in reader.schema if pa.types.is_string(f.type)]
    profile = TableProfile(reader.schema)
    # Dictionary encoding for the string columns only: tried on numbers, it costs more
    # than it saves.
    with pq.ParquetWriter(sink, reader.schema, use_dictionary=strings) as writer, \
            BackgroundWriter(writer) as background:
        pending = []
        for batch in reader:
            background.write(batch)
            pending.append(batch)
            if len(pending) == PROFILE_BATCHES:
                profile.add(pa.Table.from_batches(pending))
                pending = []
        if pending:
            profile.add(pa.Table.from_batches(pending))
    return profile


class BackgroundWriter:
    """Writes record batches to a ParquetWriter from a thread of its own, so that encoding
    and compressing overlap parsing (pyarrow releases the GIL in both). The queue is
    bounded: the reader waits rather than pile blocks up in memory."""

    def __init__(self, writer: pq.ParquetWriter, depth: int = 8):
        self.writer, self.queue, self.error = writer, queue.Queue(maxsize=depth), None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                except BaseException as error:  # raised in the caller's thread, at the end
                    self.error = error

    def write(self, batch: pa.RecordBatch) -> None:
        self.queue.put(batch)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *_) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


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


def raise_unreadable(upload: GrowingFile, error: pa.ArrowInvalid):
    """A row with the wrong number of fields, by its line; any other parse error as is."""
    with open(upload.complete(), newline="", encoding="utf-8", errors="replace") as file:
        rows = csv.reader(file)
        width = len(next(rows))
        for row in rows:
            if len(row) != width and row:
                raise InvalidDataset(f"line {rows.line_num} has {len(row)} fields; the header has "
                                     f"{width}") from None
    raise InvalidDataset(f"the CSV file cannot be read: {error}") from None


def copy_parquet(upload: GrowingFile, output: Callable[[], HashingSink]) -> tuple[TableProfile, HashingSink]:
    """A Parquet upload is checked and described by row group, and stored as it came (its
    footer is at its end: it is read once it has all arrived)."""
    path = upload.complete()
    try:
        parquet = pq.ParquetFile(path)
        check_unique(parquet.schema_arrow.names)
        profile = TableProfile(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS):
            profile.add(batch)
    except (pa.ArrowException, OSError) as error:
        raise InvalidDataset(f"the file is not a readable Parquet file: {error}") from None
    with open(path, "rb") as source, output() as sink:
        while chunk := source.read(CHUNK):
            sink.write(chunk)
    return profile, sink

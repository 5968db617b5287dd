"""Receiving a file upload (multipart/form-data) straight to disk, chunk by chunk.

The request body is parsed as it arrives (python-multipart's streaming parser): the
`file` part goes to a file (a services.growing.GrowingFile, which the conversion reads
while it grows), small text fields stay in memory, and the API process never holds the
file. The size limit is checked as the bytes arrive, so an oversized upload is refused
(UploadTooLarge) without being read to its end. On any failure the file is marked failed
(its readers stop) and removed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.errors import InvalidDataset, UnsupportedFormat, UploadTooLarge
from services.growing import GrowingFile

MAX_FIELD_BYTES = 4096  # a text field (the dataset's name) is short
# A malformed body is the client's to hear about (422), not a warning in our log per request.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class UploadReader:
    """Feeds a multipart body to the parser; writes the `file` part to `path`."""

    def __init__(self, boundary: bytes, growing: GrowingFile):
        self.growing, self.file, self.fields = growing, None, {}
        self.filename: str | None = None
        self.part, self.header = Part(), [b"", b""]
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self.part_begin, "on_header_field": self.header_field,
            "on_header_value": self.header_value, "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
            "on_part_end": self.part_end})

    def part_begin(self) -> None:
        self.part = Part()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header[0] += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.header[1] += data[start:end]

    def header_end(self) -> None:
        self.part.headers[self.header[0].decode("latin-1").lower()] = self.header[1].decode("latin-1")
        self.header = [b"", b""]

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get("content-disposition", ""))
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self.part.name == "file":
            if self.file is not None:
                raise InvalidDataset("send one file per upload")
            # Unbuffered: each chunk is in the file, for its readers, once `grew` says so.
            self.file, self.filename = open(self.growing.path, "wb", buffering=0), self.part.filename

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.name == "file":
            self.file.write(data[start:end])
            self.growing.grew(end - start)
        elif len(self.part.data) + end - start <= MAX_FIELD_BYTES:
            self.part.data += data[start:end]
        else:
            raise InvalidDataset(f"the form field {self.part.name!r} is over {MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self.part.name != "file":
            self.fields[self.part.name] = self.part.data.decode("utf-8", "replace")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass(frozen=True)
class Upload:
    path: Path
    filename: str | None
    fields: dict[str, str]


async def receive_upload(request: Request, growing: GrowingFile, max_bytes: int) -> Upload:
    """The request's `file` part, written to `growing`, and its other form fields."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedFormat("send the file as multipart/form-data, in a field named 'file'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadTooLarge(f"the upload is over CROSSFOLD_MAX_UPLOAD_BYTES ({max_bytes:,} bytes)")
    reader = UploadReader(options[b"boundary"], growing)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:  # counted as it streams: a chunked body has no length
                raise UploadTooLarge(f"the upload is over CROSSFOLD_MAX_UPLOAD_BYTES ({max_bytes:,} bytes)")
            reader.parser.write(chunk)
        reader.parser.finalize()
        if reader.file is None:
            raise InvalidDataset("the form has no field named 'file'")
    except BaseException as error:
        reader.close()
        if isinstance(error, MultipartParseError):
            error = InvalidDataset(f"the multipart body is malformed: {error}")
        growing.fail(error)
        raise error from None
    reader.close()
    growing.finish()
    return Upload(growing.path, reader.filename, reader.fields)

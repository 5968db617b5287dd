"""A file read while it is written (services.growing): what lets an upload be converted
as it arrives."""
import threading
import time

import pytest

from services.growing import GrowingFile, UploadAborted


def test_a_reader_waits_for_the_bytes_and_stops_at_the_end(tmp_path):
    growing = GrowingFile(tmp_path / "upload")
    growing.path.touch()
    read = []

    def reader():
        with growing.open() as file:
            while chunk := file.read(3):
                read.append(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    with open(growing.path, "wb", buffering=0) as file:
        for part in (b"abc", b"defg", b"h"):
            time.sleep(0.05)
            file.write(part)
            growing.grew(len(part))
    growing.finish()
    thread.join(timeout=5)
    assert b"".join(read) == b"abcdefgh" and not thread.is_alive()


def test_a_failed_upload_stops_its_readers(tmp_path):
    growing = GrowingFile(tmp_path / "upload")
    growing.path.write_bytes(b"12")
    growing.grew(2)
    errors = []

    def reader():
        try:
            with growing.open() as file:
                while file.read(1):
                    pass
        except UploadAborted as error:
            errors.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.1)
    growing.fail(ValueError("too large"))
    thread.join(timeout=5)
    assert len(errors) == 1 and "too large" in str(errors[0])
    with pytest.raises(UploadAborted):
        growing.complete()

"""A file that is still being written, read by another thread as it grows.

An upload is converted while it arrives: the API writes the received bytes to a file
and says so (`grew`); the conversion, in a worker thread, reads the same file through
`open()`, whose reads wait for more bytes until the upload is complete (`finish`) or
has failed (`fail`: the reads then raise UploadAborted).
"""
from __future__ import annotations

import io
import threading
from pathlib import Path

from services.errors import CrossfoldError


class UploadAborted(CrossfoldError):
    """The upload stopped before its end (too large, malformed, the client went away)."""


class GrowingFile:
    def __init__(self, path: Path):
        self.path, self.size, self.done, self.error = path, 0, False, None
        self.changed = threading.Condition()

    @classmethod
    def whole(cls, path: Path) -> "GrowingFile":
        """A file that has all arrived already."""
        growing = cls(path)
        growing.grew(path.stat().st_size)
        growing.finish()
        return growing

    def grew(self, count: int) -> None:
        with self.changed:
            self.size += count
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.changed:
            self.error = error
            self.changed.notify_all()

    def available(self, position: int) -> int:
        """Bytes readable from `position`: waits for some, 0 only at the complete end."""
        with self.changed:
            self.changed.wait_for(lambda: self.error or self.done or self.size > position)
            if self.error is not None:
                raise UploadAborted(f"the upload stopped: {self.error}")
            return self.size - position

    def complete(self) -> Path:
        """The whole file, once it has all arrived."""
        while self.available(self.size):
            pass
        return self.path

    def open(self) -> io.BufferedReader:
        return io.BufferedReader(GrowingReader(self), buffer_size=1 << 20)


class GrowingReader(io.RawIOBase):
    def __init__(self, growing: GrowingFile):
        self.growing, self.file, self.position = growing, open(growing.path, "rb"), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.growing.available(self.position))
        read = self.file.readinto(memoryview(buffer)[:count])
        self.position += read
        return read

    def close(self) -> None:
        self.file.close()
        super().close()

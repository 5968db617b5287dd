"""An epoch's mini-batches from a Parquet dataset larger than memory, read ahead.

Training (`training_batches`) reads the row groups in an order shuffled per epoch, keeps
the fold's training rows of each, encodes them, and mixes them through a bounded shuffle
buffer: once the buffer is full, every row group that comes in pushes out as many rows,
drawn at random from the buffer and the group together; at the end of the epoch the
buffer is drained in random order. Every training row is yielded exactly once per epoch,
in batches of exactly `batch_size` rows, the last one holding the remainder.

This is a buffered shuffle, not a full permutation: a row can only move within about
`buffer_rows` rows of its row group's place in the shuffled group order (and the rows of
one group tend to stay near each other). Choose `buffer_rows` to cover a few row groups
at least; a buffer smaller than one group only mixes a group with its neighbours.
DEFAULT_BUFFER_ROWS is 65,536 rows: the CSV ingest (services.ingest) writes a row group
per MiB of CSV, some thousands to tens of thousands of rows, so the buffer spans several
groups; and at 256 float32 inputs it is 64 MiB, which a worker affords beside its model.
Row groups of uploaded Parquet files can be larger (pyarrow writes up to 1Mi rows a
group): pass a larger buffer_rows for those, memory permitting.

Reading and decoding overlap training: a background thread, with its own opened source
(pyarrow files are not shared between threads), reads and encodes the row groups into a
queue of `prefetch` of them; the consuming thread only mixes and cuts batches. An error
in the thread is raised in the consumer; abandoning the iterator (close(), or dropping
it) stops the thread after the read it is in. Memory is bounded by the buffer and the
groups in flight, not by the dataset: at most max(buffer_rows, batch_size) + (prefetch
+ 2) row groups + batch_size encoded rows at a time (prefetch queued, one being read, one
being mixed; HeldRows counts them).

`evaluation_chunks` reads a mask's rows (validation, test) the same way, in file order,
one chunk per row group; `to_device` moves a batch onto the training device.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workers.stream.source import ParquetSource, RowGroup
from workers.table import Table

DEFAULT_BUFFER_ROWS = 65_536
POLL_S = 0.05  # how often a reader blocked on a full queue looks whether it should stop

Batch = tuple[np.ndarray, np.ndarray]  # (x float32 [n, inputs], y [n])
Encode = Callable[[Table], Batch]


class HeldRows:
    """How many encoded rows an iterator holds (read ahead, in the shuffle buffer, or
    waiting to complete a batch), and the most it held at once: rows count from their
    encoding until they are yielded. For tests and diagnostics; thread-safe."""

    def __init__(self):
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def add(self, rows: int) -> None:
        with self.lock:
            self.now += rows
            self.peak = max(self.peak, self.now)


def training_batches(source: ParquetSource, rows: np.ndarray, encode: Encode, *, batch_size: int,
                     epoch_seed: int, buffer_rows: int = DEFAULT_BUFFER_ROWS, prefetch: int = 2,
                     held: HeldRows | None = None) -> Iterator[Batch]:
    """One epoch's mini-batches of the training rows `rows` (a boolean mask over all the
    source's rows), through a shuffle buffer (see the module's docstring). The same
    `epoch_seed` gives the same batches. A batch_size above buffer_rows raises the buffer
    to one batch: a batch is held whole anyway. The arguments are checked at the call;
    reading starts at the first batch asked for."""
    check_mask(source, rows)
    if batch_size < 1 or buffer_rows < 1 or prefetch < 1:
        raise ValueError(f"batch_size ({batch_size}), buffer_rows ({buffer_rows}) and prefetch "
                         f"({prefetch}) must be at least 1")
    rng = np.random.default_rng(epoch_seed)
    order = [source.groups[i] for i in rng.permutation(len(source.groups))]
    return mixed_batches(ReadAhead(source, order, rows, encode, prefetch, held or HeldRows()),
                         ShuffleBuffer(max(buffer_rows, batch_size), rng), batch_size)


def evaluation_chunks(source: ParquetSource, rows_mask: np.ndarray, encode: Encode,
                      prefetch: int = 2) -> Iterator[Batch]:
    """The rows of a mask (validation or test) in file order, encoded: one chunk per row
    group that has any of them, read ahead by a background thread."""
    check_mask(source, rows_mask)
    if prefetch < 1:
        raise ValueError(f"prefetch ({prefetch}) must be at least 1")
    return ReadAhead(source, source.groups, rows_mask, encode, prefetch, HeldRows()).chunks()


def to_device(x: np.ndarray, y: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as tensors on `device`. On the CPU they share the arrays' memory
    (from_numpy, no copy). On CUDA they go through pinned (page-locked) memory with
    non_blocking=True: the copy is queued on the current stream and the host goes on
    preparing the next batch meanwhile; kernels queued after it on that stream see the
    data, and PyTorch's pinned-memory allocator keeps the host block until the copy is
    done, so the arrays may be dropped at once."""
    device = torch.device(device)
    xt, yt = host_tensor(x), host_tensor(y)
    if device.type != "cuda":
        return xt.to(device), yt.to(device)
    return xt.pin_memory().to(device, non_blocking=True), yt.pin_memory().to(device, non_blocking=True)


def host_tensor(array: np.ndarray) -> torch.Tensor:
    # from_numpy wants contiguous memory, and warns on a read-only array (an Arrow
    # buffer seen through numpy is one): copy only then.
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def check_mask(source: ParquetSource, mask: np.ndarray) -> None:
    if mask.dtype != np.bool_ or mask.shape != (source.rows,):
        raise ValueError(f"the row mask must be {source.rows} booleans (one per row of "
                         f"{source.uri}), not {mask.dtype} of shape {mask.shape}")


# --- Training: the shuffle buffer and the batches it feeds ----------------------------------

def mixed_batches(reader: "ReadAhead", buffer: "ShuffleBuffer", batch_size: int) -> Iterator[Batch]:
    batcher, chunks = Batcher(batch_size), reader.chunks()
    try:
        for x, y in chunks:
            pushed_out = buffer.add(x, y)
            if pushed_out is not None:
                yield from reader.yielded(batcher.add(*pushed_out))
    finally:  # abandoned midway: stop the reader now, not whenever this frame is collected
        chunks.close()
    yield from reader.yielded(batcher.add(*buffer.drain()))
    yield from reader.yielded(batcher.rest())


class ShuffleBuffer:
    """At most `capacity` rows, kept in arrays allocated once (at the first rows, whose
    width and types they take). Rows leave it in a random order, so where a row sits in
    it does not matter."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.x = self.y = None
        self.filled = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> Batch | None:
        """Takes a chunk's rows; once they overflow the buffer, the rows pushed out:
        as many as overflow, drawn uniformly from the buffer and the chunk together,
        in a random order (None while the buffer is still filling)."""
        if self.x is None:
            self.x = np.empty((self.capacity, *x.shape[1:]), x.dtype)
            self.y = np.empty((self.capacity, *y.shape[1:]), y.dtype)
        if self.filled + len(y) <= self.capacity:
            self.x[self.filled:self.filled + len(y)], self.y[self.filled:self.filled + len(y)] = x, y
            self.filled += len(y)
            return None
        return self.push_out(x, y)

    def push_out(self, x: np.ndarray, y: np.ndarray) -> Batch:
        # Numbering the buffer's rows 0..filled-1 and the chunk's after them, draw the
        # rows that leave; the chunk's rows that stay fill the places of those that left
        # the buffer, then its empty tail.
        filled, leaving = self.filled, self.filled + len(y) - self.capacity
        drawn = self.rng.choice(filled + len(y), leaving, replace=False)  # in a random order
        from_buffer = drawn < filled
        out_x, out_y = np.empty((leaving, *x.shape[1:]), x.dtype), np.empty((leaving, *y.shape[1:]), y.dtype)
        out_x[from_buffer], out_y[from_buffer] = self.x[drawn[from_buffer]], self.y[drawn[from_buffer]]
        out_x[~from_buffer], out_y[~from_buffer] = x[drawn[~from_buffer] - filled], y[drawn[~from_buffer] - filled]
        staying = np.ones(len(y), bool)
        staying[drawn[~from_buffer] - filled] = False
        places = np.concatenate([drawn[from_buffer], np.arange(filled, self.capacity)])
        self.x[places], self.y[places] = x[staying], y[staying]
        self.filled = self.capacity
        return out_x, out_y

    def drain(self) -> Batch:
        """The rows left, in a random order; the buffer is empty after."""
        if self.x is None:
            return np.empty((0, 0), np.float32), np.empty(0, np.float32)
        order = self.rng.permutation(self.filled)
        self.filled = 0
        return self.x[order], self.y[order]  # copies: fancy indexing


class Batcher:
    """Cuts the rows it is given into batches of exactly `size` rows, keeping those that
    do not fill one yet for the next rows (or for `rest`, the last batch)."""

    def __init__(self, size: int):
        self.size, self.pieces, self.rows = size, deque(), 0

    def add(self, x: np.ndarray, y: np.ndarray) -> Iterator[Batch]:
        if len(y):
            self.pieces.append((x, y))
            self.rows += len(y)
        while self.rows >= self.size:
            yield self.take(self.size)

    def rest(self) -> Iterator[Batch]:
        if self.rows:
            yield self.take(self.rows)

    def take(self, rows: int) -> Batch:
        xs, ys = [], []
        self.rows -= rows
        while rows:
            x, y = self.pieces[0]
            if len(y) <= rows:
                self.pieces.popleft()
            else:  # the rest of this piece waits for the next batch
                self.pieces[0] = (x[rows:], y[rows:])
                x, y = x[:rows], y[:rows]
            xs.append(x)
            ys.append(y)
            rows -= len(y)
        return (xs[0], ys[0]) if len(xs) == 1 else (np.concatenate(xs), np.concatenate(ys))


# --- Reading ahead on a background thread ------------------------------------------------------

@dataclass(frozen=True)
class Failed:
    error: BaseException


DONE = object()  # what the reader queues after the last row group


class ReadAhead:
    """Reads and encodes the mask's rows of `groups`, in that order, on a thread of its
    own, at most `prefetch` encoded groups ahead of the consumer. Groups without any of
    the mask's rows are not even read."""

    def __init__(self, source: ParquetSource, groups: list[RowGroup], mask: np.ndarray, encode: Encode,
                 prefetch: int, held: HeldRows):
        self.source, self.groups, self.mask, self.encode, self.held = source, groups, mask, encode, held
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()

    def chunks(self) -> Iterator[Batch]:
        """The encoded chunks, in order. The thread starts with the first one asked for
        and is stopped and joined when this iterator ends, fails or is abandoned."""
        thread = threading.Thread(target=self.run, name=f"read-ahead {self.source.uri}", daemon=True)
        thread.start()
        try:
            while (item := self.queue.get()) is not DONE:
                if isinstance(item, Failed):
                    raise item.error
                yield item
        finally:
            self.stop.set()
            thread.join()  # at most the read it is in, then it sees `stop`

    def yielded(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The batches, counted out of `held` as they leave."""
        for x, y in batches:
            self.held.add(-len(y))
            yield x, y

    def run(self) -> None:
        try:
            source = self.source.reopen()
            for group in self.groups:
                if self.stop.is_set():
                    return
                if (chunk := self.read(source, group)) is not None and not self.offer(chunk):
                    return
            self.offer(DONE)
        except BaseException as error:  # raised again in the consumer, not lost with the thread
            self.offer(Failed(error))

    def read(self, source: ParquetSource, group: RowGroup) -> Batch | None:
        keep = self.mask[group.start:group.stop]
        if not keep.any():
            return None
        table = source.read(group, keep)
        x, y = self.encode(table)
        if len(x) != len(table) or len(y) != len(table):
            raise ValueError(f"encoding row group {group.index} gave {len(x)} inputs and {len(y)} "
                             f"targets for its {len(table)} rows")
        self.held.add(len(y))
        return x, y

    def offer(self, item) -> bool:
        """Queues `item`, waiting for room unless the consumer has gone; False then."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

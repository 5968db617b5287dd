"""workers.stream.batches: an epoch's mini-batches from Parquet row groups through a
bounded shuffle buffer, read ahead on a background thread."""
import threading
import time

import numpy as np
import pytest
import torch

from workers.stream.batches import (DEFAULT_BUFFER_ROWS, HeldRows, evaluation_chunks, to_device,
                                    training_batches)
from workers.stream.source import ParquetSource
from workers.table import Table

GROUPS, GROUP_ROWS = 50, 1000
ROWS = GROUPS * GROUP_ROWS
EMPTY_GROUPS = (3, 17)  # row groups holding no training row at all


def write_dataset(path, groups=GROUPS, group_rows=GROUP_ROWS) -> ParquetSource:
    """row_id (the row's number in the file) and a second feature; the label is
    2·row_id, so a batch shows whether its rows kept their labels."""
    pa = pytest.importorskip("pyarrow")  # not at the top: the GPU machine has no pyarrow
    pq = pytest.importorskip("pyarrow.parquet")
    row_id = np.arange(groups * group_rows)
    pq.write_table(pa.table({"row_id": row_id.astype(np.float64), "other": np.sin(row_id),
                             "label": 2 * row_id}), path, row_group_size=group_rows)
    return ParquetSource(str(path), ["row_id", "other"], "label")


def stack_columns(table: Table) -> tuple[np.ndarray, np.ndarray]:
    return np.stack(list(table.features.values()), axis=1).astype(np.float32), table.label


def training_mask(rows=ROWS, seed=0) -> np.ndarray:
    """About 80% of the rows (a fold's training rows), none of EMPTY_GROUPS'."""
    mask = np.random.default_rng(seed).random(rows) < 0.8
    for group in EMPTY_GROUPS:
        mask[group * GROUP_ROWS:(group + 1) * GROUP_ROWS] = False
    return mask


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("stream") / "data.parquet")


def epoch(source, mask, **options) -> list[tuple[np.ndarray, np.ndarray]]:
    options = {"batch_size": 64, "epoch_seed": 0, "buffer_rows": 8000, **options}
    return list(training_batches(source, mask, stack_columns, **options))


def ids(batches) -> np.ndarray:
    return np.concatenate([x[:, 0] for x, _ in batches]).astype(np.int64)


def threads_back_to(count: int, within_s: float = 1.0) -> bool:
    deadline = time.monotonic() + within_s
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count() == count


def test_every_training_row_comes_exactly_once_with_its_label(source):
    mask = training_mask()
    batches = epoch(source, mask)
    seen = ids(batches)
    assert len(seen) == mask.sum()
    assert np.array_equal(np.sort(seen), np.flatnonzero(mask))  # each once, and only training rows
    for x, y in batches:
        assert x.dtype == np.float32 and np.array_equal(y, 2 * x[:, 0].astype(np.int64))


def test_batches_are_exactly_batch_size_and_the_last_one_the_remainder(source):
    mask = training_mask()
    remainder = mask.sum() % 64
    assert remainder  # the case worth checking
    sizes = [len(y) for _, y in epoch(source, mask)]
    assert sizes == [64] * (mask.sum() // 64) + [remainder]


@pytest.mark.parametrize("batch_size, buffer_rows", [(64, 300),     # a buffer smaller than a group
                                                      (5000, 1000),  # a batch larger than the buffer
                                                      (40, 40)])
def test_any_buffer_and_batch_size_still_give_every_row_once(source, batch_size, buffer_rows):
    mask = training_mask()
    batches = epoch(source, mask, batch_size=batch_size, buffer_rows=buffer_rows)
    assert np.array_equal(np.sort(ids(batches)), np.flatnonzero(mask))
    assert all(len(y) == batch_size for _, y in batches[:-1]) and 0 < len(batches[-1][1]) <= batch_size


def test_the_same_seed_gives_the_same_batches_and_another_seed_other_ones(source):
    mask = training_mask()
    first, again, other = epoch(source, mask, epoch_seed=7), epoch(source, mask, epoch_seed=7), \
        epoch(source, mask, epoch_seed=8)
    assert len(first) == len(again) and all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                                            for a, b in zip(first, again))
    assert not np.array_equal(ids(first), ids(other))
    assert np.array_equal(np.sort(ids(first)), np.sort(ids(other)))


def test_two_epochs_read_the_groups_in_different_orders(source):
    mask = training_mask()
    # The group whose rows come first in each epoch: with 48 groups read in a shuffled
    # order, two epochs (seeds 0 and 1) starting alike would be a 1-in-48 coincidence,
    # hence the positions of the groups' median rows.
    def group_order(batches):
        groups = ids(batches) // GROUP_ROWS
        return np.argsort([np.median(np.flatnonzero(groups == g)) for g in np.unique(groups)])
    assert not np.array_equal(group_order(epoch(source, mask, epoch_seed=0)),
                              group_order(epoch(source, mask, epoch_seed=1)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def test_the_order_is_mixed_across_and_within_row_groups(source):
    mask = training_mask()
    seen = ids(epoch(source, mask, buffer_rows=8000))  # about 10 groups' training rows
    assert abs(spearman(np.arange(len(seen)), seen)) < 0.3  # not the file's order
    positions = np.empty(ROWS, np.int64)
    positions[seen] = np.arange(len(seen))
    within = [spearman(positions[rows], rows) for g in range(GROUPS)
              if len(rows := np.flatnonzero(mask[g * GROUP_ROWS:(g + 1) * GROUP_ROWS]) + g * GROUP_ROWS)]
    assert abs(np.mean(within)) < 0.1  # nor is a group's own order kept
    # A batch draws from many groups, not just the one or two being read.
    groups_per_batch = np.mean([len(np.unique(x[:, 0] // GROUP_ROWS)) for x, _ in
                                epoch(source, mask, buffer_rows=8000)])
    assert groups_per_batch > 12


def test_a_buffer_of_one_batch_barely_mixes_groups(source):
    """The counterpart of the test above: the buffer is what mixes the groups."""
    mask = training_mask()
    groups_per_batch = np.mean([len(np.unique(x[:, 0] // GROUP_ROWS)) for x, _ in
                                epoch(source, mask, buffer_rows=64)])
    assert groups_per_batch < 3


def test_rows_held_stay_within_the_buffer_and_the_groups_read_ahead(source):
    mask, held = training_mask(), HeldRows()
    batches = training_batches(source, mask, stack_columns, batch_size=64, epoch_seed=0,
                               buffer_rows=4000, prefetch=2, held=held)
    next(batches)
    time.sleep(0.5)  # a slow training step: the reader runs as far ahead as it may
    ahead = held.now
    for _ in batches:
        pass
    bound = 4000 + (2 + 2) * GROUP_ROWS + 64  # buffer, prefetch + 2 groups, one batch
    assert 4000 <= held.peak <= bound
    assert ahead > 4000  # the reader did read ahead while the consumer slept
    assert held.now == 0  # everything read was yielded
    assert held.peak < mask.sum() / 4  # bounded by the buffer, not the dataset


def test_encoding_runs_on_a_background_thread(source):
    threads = set()

    def encode(table):
        threads.add(threading.current_thread())
        return stack_columns(table)
    list(training_batches(source, training_mask(), encode, batch_size=64, epoch_seed=0))
    assert threads and threading.main_thread() not in threads


def test_an_error_in_the_background_thread_reaches_the_consumer(source):
    before, calls = threading.active_count(), []

    def encode(table):
        calls.append(len(table))
        if len(calls) == 5:
            raise RuntimeError("cannot encode this row group")
        return stack_columns(table)
    batches = training_batches(source, training_mask(), encode, batch_size=64, epoch_seed=0,
                               buffer_rows=1000)
    with pytest.raises(RuntimeError, match="cannot encode this row group"):
        for _ in batches:
            pass
    assert threads_back_to(before)


def test_a_wrong_encoding_is_an_error_not_a_silent_loss_of_rows(source):
    def short(table):
        x, y = stack_columns(table)
        return x[1:], y[1:]
    with pytest.raises(ValueError, match="gave .* inputs"):
        list(training_batches(source, training_mask(), short, batch_size=64, epoch_seed=0))


@pytest.mark.parametrize("leave", ["close", "drop"])
def test_abandoning_the_batches_midway_stops_the_reader(source, leave):
    before = threading.active_count()
    batches = training_batches(source, training_mask(), stack_columns, batch_size=64, epoch_seed=0,
                               buffer_rows=2000)
    for _ in range(3):
        next(batches)
    time.sleep(0.1)  # the reader is now waiting on a full queue
    assert threading.active_count() == before + 1
    if leave == "close":
        batches.close()
    else:
        del batches
    assert threads_back_to(before)


def test_nothing_is_read_before_the_first_batch_is_asked_for(source):
    before = threading.active_count()
    batches = training_batches(source, training_mask(), stack_columns, batch_size=64, epoch_seed=0)
    assert threading.active_count() == before
    del batches


def test_a_mask_of_the_wrong_length_is_refused_at_the_call(source):
    with pytest.raises(ValueError, match="one per row"):
        training_batches(source, np.ones(ROWS - 1, bool), stack_columns, batch_size=64, epoch_seed=0)
    with pytest.raises(ValueError, match="one per row"):
        evaluation_chunks(source, np.arange(ROWS), stack_columns)


def test_evaluation_chunks_are_the_masks_rows_in_file_order_one_per_group(source):
    mask = ~training_mask()
    mask[5 * GROUP_ROWS:6 * GROUP_ROWS] = False  # a group without validation rows: no chunk
    chunks = list(evaluation_chunks(source, mask, stack_columns))
    assert len(chunks) == GROUPS - 1
    assert np.array_equal(ids(chunks), np.flatnonzero(mask))
    assert all(np.array_equal(y, 2 * x[:, 0].astype(np.int64)) for x, y in chunks)


def test_an_empty_training_mask_gives_no_batches(source):
    assert epoch(source, np.zeros(ROWS, bool)) == []


def test_the_default_buffer_spans_several_row_groups_of_the_ingest():
    assert DEFAULT_BUFFER_ROWS >= 4 * 10_000


def test_to_device_on_the_cpu_shares_the_arrays_memory():
    x, y = np.ones((4, 3), np.float32), np.arange(4)
    xt, yt = to_device(x, y, "cpu")
    x[0, 0] = 5
    assert xt[0, 0] == 5 and yt.dtype == torch.int64


def test_to_device_copies_a_read_only_array_instead_of_warning():
    x = np.ones((4, 3), np.float32)
    x.flags.writeable = False
    xt, _ = to_device(x, np.arange(4), torch.device("cpu"))
    assert torch.equal(xt, torch.ones(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_on_cuda_goes_through_pinned_memory():
    x, y = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32), np.arange(1000)
    xt, yt = to_device(x, y, "cuda")
    torch.cuda.current_stream().synchronize()
    assert xt.is_cuda and yt.is_cuda
    assert np.array_equal(xt.cpu().numpy(), x) and np.array_equal(yt.cpu().numpy(), y)

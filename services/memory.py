"""How much memory one fold task needs, estimated at submission from the spec and its data.

A job the workers cannot hold must be refused when it is submitted, not fail (or take a
node down) when it runs. The estimate counts float32 values, as the fold task keeps them:
- parameters and their gradients;
- the optimizer's state: a velocity (momentum), a squared average (RMSprop), both (Adam);
- activations of one training batch (`batch_size`, or every training row for "full"),
  kept for the backward pass, which then needs about as much again for their gradients;
- the data: the dataset's encoded rows, once as loaded and once split into the folds; or,
  streamed (workers.stream), the shuffle buffer and the row groups read ahead, and for
  the full batch a row group's activations at a time.
Packed folds hold every fold's model and batch in one task. It is an estimate (allocator
slack and framework buffers come on top), meant to catch the orders of magnitude.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from services.errors import InvalidJob
from services.job_data import JobData
from services.spec import JobSpec

FLOAT = 4  # bytes
STREAM_CHUNK_ROWS = 1_048_576  # rows of the largest row group a streamed fold reads at once
READ_AHEAD_CHUNKS = 3  # row groups read ahead of training, plus the one in use
LABEL = 8  # an int64 class or float target, rounded up
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "rmsprop": 1, "adam": 2}  # values per parameter
BACKWARD = 2  # the saved activations, and as much again for their gradients


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # bytes of weights and gradients
    optimizer: int
    activations: int
    data: int
    batch_rows: int

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.activations + self.data

    def largest(self) -> str:
        """The spec field to change to need less: the batch, the model or the dataset."""
        parts = {"batch_size": self.activations, "model.hidden": self.parameters + self.optimizer,
                 "dataset": self.data}
        return max(parts, key=parts.get)

    def describe(self) -> str:
        return (f"{gib(self.total)} (parameters and gradients {gib(self.parameters)}, optimizer state "
                f"{gib(self.optimizer)}, activations of a {self.batch_rows:,}-row batch "
                f"{gib(self.activations)}, data {gib(self.data)})")


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def estimate(spec: JobSpec, data: JobData) -> MemoryEstimate:
    outputs = len(data.classes) or 1
    if spec.model.type == "cnn":
        parameters, per_row = cnn_sizes(spec.model, data.input_shape, outputs)
    else:
        parameters, per_row = mlp_sizes(spec.model, math.prod(data.input_shape), outputs)
    streamed = data.loading == "stream"
    # A full batch is a fold's training rows; a refit's (refit: true) is every row.
    full = data.rows if spec.refit else training_rows(data.rows, spec.cv.folds)
    batch_rows = full if spec.batch_size == "full" else spec.batch_size
    if streamed:  # the full batch is accumulated a row group at a time
        batch_rows = min(batch_rows, STREAM_CHUNK_ROWS)
    models = spec.cv.total_folds if spec.pack_folds else 1
    row_bytes = math.prod(data.input_shape) * FLOAT + LABEL
    held_rows = spec.shuffle_buffer_rows + READ_AHEAD_CHUNKS * STREAM_CHUNK_ROWS if streamed else 2 * data.rows
    return MemoryEstimate(
        parameters=2 * parameters * FLOAT * models,
        optimizer=OPTIMIZER_STATE[spec.optimizer.name] * parameters * FLOAT * models,
        activations=BACKWARD * per_row * batch_rows * FLOAT * models,
        data=held_rows * row_bytes, batch_rows=batch_rows)


def training_rows(rows: int, folds: int) -> int:
    """Rows a fold trains on: all but its test fold and its validation fold."""
    return rows - 2 * (rows // folds)


def values_per_unit(model) -> int:
    """Values kept per unit of a hidden layer: its output, batch norm's, ReLU's, and with
    dropout its mask and output."""
    return 2 + int(model.batch_norm) + 2 * int(model.dropout > 0)


def own_parameters(model, units: int) -> int:
    """A layer's bias, or batch norm's γ and β in its place (the bias would be redundant)."""
    return 2 * units if model.batch_norm else units


def mlp_sizes(model, inputs: int, outputs: int) -> tuple[int, int]:
    """(parameters, activation values per row) of the dense layers."""
    parameters, per_row, width = 0, inputs, inputs
    for size in model.hidden:
        parameters += width * size + own_parameters(model, size)
        per_row += values_per_unit(model) * size
        width = size
    return parameters + (width + 1) * outputs, per_row + 2 * outputs


def cnn_sizes(model, shape: tuple[int, ...], outputs: int) -> tuple[int, int]:
    """As workers.models.build_cnn builds it: 3×3 convolutions, each pooled 2×2 while the
    image is at least 2 pixels wide, then dense layers."""
    depth, height, width = shape
    parameters, per_row = 0, depth * height * width
    for size in model.channels:
        parameters += depth * size * 9 + own_parameters(model, size)
        per_row += values_per_unit(model) * size * height * width
        if min(height, width) >= 2:
            height, width = height // 2, width // 2
            per_row += size * height * width
        depth = size
    dense_parameters, dense_per_row = mlp_sizes(model, depth * height * width, outputs)
    return parameters + dense_parameters, per_row + dense_per_row


def loading_of(spec: JobSpec, data: JobData, stream_above_bytes: int) -> str:
    """How the fold tasks read the data: as the job says, or for "auto", streamed when its
    encoded features would pass `stream_above_bytes` (CROSSFOLD_STREAM_ABOVE_BYTES)."""
    if spec.data_loading != "auto":
        return spec.data_loading
    encoded = data.rows * math.prod(data.input_shape) * FLOAT
    return "stream" if encoded > stream_above_bytes and not spec.pack_folds else "memory"


def check_memory(spec: JobSpec, data: JobData, limit: int) -> MemoryEstimate:
    """Refuse (InvalidJob, a 422) a job whose fold would need more than `limit` bytes."""
    needed = estimate(spec, data)
    if needed.total > limit:
        raise InvalidJob(needed.largest(), f"a fold would need about {needed.describe()}, over the "
                         f"limit of {gib(limit)} (CROSSFOLD_MAX_FOLD_MEMORY_BYTES); use a smaller "
                         "batch, model or dataset")
    return needed

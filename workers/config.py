"""What a fold task is told about its job: one frozen, typed configuration.

services.spec builds it once from the validated job spec (JobSpec.training_config), and
it travels unchanged to every fold task. There are no defaults here on purpose: the spec
is the one place that has them, so a value seen here is the value the job ran with.
Plain data, no torch: the dispatcher and the API can import it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...]
    batch_norm: bool
    dropout: float


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    batch_norm: bool
    dropout: float


ModelConfig = Union[MLPConfig, CNNConfig]


@dataclass(frozen=True)
class SGDConfig:
    """W -= α dW."""
    lr: float


@dataclass(frozen=True)
class MomentumConfig:
    """V = βV + (1-β)dW, W -= αV."""
    lr: float
    beta: float


@dataclass(frozen=True)
class RMSpropConfig:
    """S = βS + (1-β)dW², W -= α dW / (√S + ε)."""
    lr: float
    beta: float
    eps: float


@dataclass(frozen=True)
class AdamConfig:
    """Momentum and RMSprop together, with or without Kingma and Ba's bias correction."""
    lr: float
    beta1: float
    beta2: float
    eps: float
    bias_correction: bool


OptimizerConfig = Union[SGDConfig, MomentumConfig, RMSpropConfig, AdamConfig]


@dataclass(frozen=True)
class StoppingConfig:
    monitor: Literal["val_loss", "val_accuracy"]
    patience: int | None          # None: early stopping is off (a fixed budget of max_epochs)
    min_delta: float
    target_val_loss: float | None = None  # each fold records the first epoch that reaches it


@dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_fold: float
    gpus_per_fold: float


@dataclass(frozen=True)
class TrainingConfig:
    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: int | None       # None: the full batch, one step per epoch
    max_epochs: int
    early_stopping: StoppingConfig
    seed: int                    # the job's cv.seed; fold i draws from seed·1000 + i
    loss_ewma_beta: float
    checkpoint_interval_s: float
    pack_folds: bool
    resources: ResourcesConfig
    data_loading: Literal["memory", "stream"]  # stream: read a row group at a time (workers.stream)
    shuffle_buffer_rows: int     # streaming: rows mixed at once (a buffered shuffle)

    def fold_seed(self, index: int) -> int:
        return self.seed * 1000 + index

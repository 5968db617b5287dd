"""The job specification: what a client may ask for, and the rules it must follow.

Every number is bounded so that one fold stays within a few GB, and unknown fields
are refused, so a typo ("learning_rate") is an error instead of a silent default.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Annotated, ClassVar, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      field_validator, model_validator)

from services.data_spec import DatasetSpec
from workers.config import (AdamConfig, CNNConfig, MLPConfig, MomentumConfig, ResourcesConfig,
                            RMSpropConfig, SGDConfig, StoppingConfig, TrainingConfig)

MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 4096
MAX_BATCH_SIZE = 1_000_000
MAX_PRIORITY = 100  # priorities run from -100 to 100; 0 is the default
MAX_REPEATS = 10
MAX_TOTAL_FOLDS = 100  # folds × repeats of one job


class StrictModel(BaseModel):
    # Strict: true is not 1 and "3" is not 3, as the published schema says; a JSON number
    # with no fraction (3.0) is an integer there, and here too (`integer`).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    config_type: ClassVar[type | None] = None  # the section's counterpart in workers.config

    def config(self):
        """This section as the fold tasks get it: the same fields, frozen (lists as tuples)."""
        values = {f.name: getattr(self, f.name) for f in fields(self.config_type)}
        return self.config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def whole(value):
    return int(value) if type(value) is float and value.is_integer() else value


def integer(**bounds):
    """An integer within `bounds` (ge, le), given as 3 or as 3.0."""
    return Annotated[int, Field(**bounds), BeforeValidator(whole)]


Width = integer(ge=1, le=MAX_LAYER_WIDTH)
Channels = integer(ge=1, le=512)
Seed = integer(ge=0, le=2**31 - 1)
Patience = integer(ge=1, le=1000)
Folds = integer(ge=3, le=20)
Epochs = integer(ge=1, le=10_000)
Priority = integer(ge=-MAX_PRIORITY, le=MAX_PRIORITY)
LearningRate = Annotated[float, Field(gt=0, le=10, description="α, > 0")]
Beta = Annotated[float, Field(ge=0, lt=1, description="in [0, 1)")]
Epsilon = Annotated[float, Field(gt=0, le=1)]


class SGDSpec(StrictModel):
    """Plain mini-batch gradient descent: W -= α dW."""
    config_type = SGDConfig
    name: Literal["sgd"]
    lr: LearningRate


class MomentumSpec(StrictModel):
    """V = βV + (1-β)dW, W -= αV."""
    config_type = MomentumConfig
    name: Literal["momentum"]
    lr: LearningRate
    beta: Beta = 0.9


class RMSpropSpec(StrictModel):
    """S = βS + (1-β)dW², W -= α dW / (√S + ε)."""
    config_type = RMSpropConfig
    name: Literal["rmsprop"]
    lr: LearningRate
    beta: Beta = 0.9
    eps: Epsilon = 1e-8


class AdamSpec(StrictModel):
    """Momentum and RMSprop combined; β2 = 0.98 as in the lecture. Bias correction as
    in Kingma and Ba, or off for the slide's uncorrected form."""
    config_type = AdamConfig
    name: Literal["adam"]
    lr: LearningRate
    beta1: Beta = 0.9
    beta2: Beta = 0.98
    eps: Epsilon = 1e-8
    bias_correction: bool = True


OptimizerSpec = Annotated[Union[SGDSpec, MomentumSpec, RMSpropSpec, AdamSpec],
                          Field(discriminator="name")]


class MLPSpec(StrictModel):
    """Dense layers, for tabular data."""
    config_type = MLPConfig
    type: Literal["mlp"] = "mlp"
    hidden: list[Width] = Field(default_factory=lambda: [128, 64], min_length=1,
                                max_length=MAX_HIDDEN_LAYERS)
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


class CNNSpec(StrictModel):
    """3×3 convolutions (one per entry of `channels`), then dense layers; image datasets only."""
    config_type = CNNConfig
    type: Literal["cnn"]
    channels: list[Channels] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=4)
    hidden: list[Width] = Field(default_factory=lambda: [64], max_length=MAX_HIDDEN_LAYERS)
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


def _model_type(value) -> str:
    # `type` may be left out: an MLP is the default model.
    return value.get("type", "mlp") if isinstance(value, dict) else getattr(value, "type", "mlp")


ModelSpec = Annotated[Union[Annotated[MLPSpec, Tag("mlp")], Annotated[CNNSpec, Tag("cnn")]],
                      Discriminator(_model_type)]


class EarlyStoppingSpec(StrictModel):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: Patience = 10
    min_delta: float = Field(0.0, ge=0)


class CVSpec(StrictModel):
    folds: Folds = Field(5, description="k ≥ 3: one test, one validation, ≥ 1 training group")
    stratify: bool = True
    seed: Seed = 0
    repeats: integer(ge=1, le=MAX_REPEATS) = Field(
        1, description="repeated k-fold: the split is made this many times, repetition r with "
                       "seed + r, so every row is tested once per repetition; the job has "
                       "folds × repeats folds")

    @property
    def total_folds(self) -> int:
        return self.folds * self.repeats

    @model_validator(mode="after")
    def _bounded_total(self):
        if self.total_folds > MAX_TOTAL_FOLDS:
            raise ValueError(f"folds × repeats is {self.total_folds}: at most {MAX_TOTAL_FOLDS}")
        return self


class ResourcesSpec(StrictModel):
    config_type = ResourcesConfig
    gpus_per_fold: float = Field(0, ge=0, le=8, description="a fraction up to 1 shares a GPU; "
                                                          "more than 1 must be a whole number")
    cpus_per_fold: float = Field(1, gt=0, le=64)

    @field_validator("gpus_per_fold", "cpus_per_fold")
    @classmethod
    def _as_ray_counts(cls, amount: float) -> float:
        # Ray refuses finer amounts ("precision ... cannot go beyond 0.0001").
        if round(amount, 4) != amount:
            raise ValueError("at most 4 decimal places (Ray counts resources in 0.0001 steps)")
        return amount

    @field_validator("gpus_per_fold")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        # Ray refuses the task otherwise ("GPU resource quantities >1 must be whole numbers").
        if gpus > 1 and not float(gpus).is_integer():
            raise ValueError("more than 1 GPU must be a whole number (Ray shares a GPU only "
                             "in fractions up to 1)")
        return gpus


class JobSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=MLPSpec)
    optimizer: OptimizerSpec
    batch_size: Union[int, Literal["full"]] = Field(
        64, description='samples per mini-batch: 1 (stochastic) to 1,000,000, or "full" '
                        '(classic gradient descent, one step per epoch)')
    max_epochs: Epochs = 100
    early_stopping: EarlyStoppingSpec | None = Field(
        default_factory=EarlyStoppingSpec,
        description="null: off, a fixed budget: every fold trains max_epochs epochs and keeps the last")
    target_val_loss: float | None = Field(
        None, gt=0, description="each fold records the first epoch whose validation loss is at most this "
                                "(epochs_to_target), so that \"converges in fewer epochs\" is a number")
    cv: CVSpec = Field(default_factory=CVSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    loss_ewma_beta: Beta = Field(0.9, description="β of the logged average of the training loss")
    pack_folds: bool = Field(False, description="train all folds in one task as one stacked model")
    data_loading: Literal["memory", "stream", "auto"] = Field(
        "auto", description="memory: each fold task holds the whole dataset; stream: it reads the "
                            "Parquet file a row group at a time, memory bounded by the shuffle "
                            "buffer; auto: stream when the encoded features would pass "
                            "CROSSFOLD_STREAM_ABOVE_BYTES")
    shuffle_buffer_rows: integer(ge=1_000, le=10_000_000) = Field(
        65_536, description="streaming: rows mixed at once; an epoch's order is a buffered shuffle, "
                            "not a full permutation")
    max_runtime_s: integer(ge=1, le=30 * 86400) | None = Field(
        None, description="wall-clock seconds from its start after which the job's folds are "
                          "cancelled and it fails; at most your limit, which is the default")
    priority: Priority = Field(
        0, description="queued jobs of a higher priority start first, whoever owns them; within "
                       "a priority, owners take turns and each owner's jobs start oldest first")
    refit: bool = Field(
        False, description="after the folds, train one final model on every row for the folds' mean "
                           "best epoch, log it and register it in the MLflow Model Registry under the "
                           "job's name (as a separate job: the job's refit.job_id)")
    checkpoint_interval_s: float = Field(
        10.0, ge=0, le=3600, description="seconds between epoch checkpoints (0: every epoch); a "
                                         "fold whose worker dies resumes from the last one")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_rule(cls, value):
        # One clear message instead of one per member of the int | "full" union.
        value = whole(value)
        if value == "full" or (type(value) is int and 1 <= value <= MAX_BATCH_SIZE):
            return value
        raise ValueError(f'must be an integer from 1 to {MAX_BATCH_SIZE:,} or "full"')

    def training_config(self, data_loading: str = "memory") -> TrainingConfig:
        """What the fold tasks are told: this spec, typed and with its defaults filled in,
        and how they read their data (decided with the data: services.memory.loading_of)."""
        return TrainingConfig(
            model=self.model.config(), optimizer=self.optimizer.config(),
            batch_size=None if self.batch_size == "full" else self.batch_size,
            max_epochs=self.max_epochs, early_stopping=self.stopping_config(),
            seed=self.cv.seed, loss_ewma_beta=self.loss_ewma_beta,
            checkpoint_interval_s=self.checkpoint_interval_s, pack_folds=self.pack_folds,
            resources=self.resources.config(), data_loading=data_loading,
            shuffle_buffer_rows=self.shuffle_buffer_rows)

    def stopping_config(self) -> StoppingConfig:
        if self.early_stopping is None:  # off: nothing is monitored; val_loss only names the default
            return StoppingConfig("val_loss", None, 0.0, self.target_val_loss)
        stopping = self.early_stopping
        return StoppingConfig(stopping.monitor, stopping.patience, stopping.min_delta, self.target_val_loss)

    @model_validator(mode="after")
    def _packing_holds_the_data(self):
        if self.pack_folds and self.data_loading == "stream":
            raise ValueError("pack_folds trains from data held in memory: use data_loading "
                             "\"memory\" (or \"auto\") with it")
        return self

    @model_validator(mode="after")
    def _batch_norm_needs_two_samples(self):
        if self.batch_size == 1 and self.model.batch_norm:
            raise ValueError("batch_size 1 cannot be used with model.batch_norm: batch "
                             "normalization needs at least 2 samples per mini-batch")
        return self


def flatten(spec: JobSpec) -> dict[str, str]:
    """The spec as flat `section.key` params, the way MLflow shows them."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = str(value)

    walk("", spec.model_dump(mode="json"))
    return flat

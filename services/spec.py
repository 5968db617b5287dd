"""The job specification: what a client may ask for, and the rules it must follow.

Every number is bounded so that one fold stays within a few GB, and unknown fields
are refused, so a typo ("learning_rate") is an error instead of a silent default.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator,
                      model_validator)

MAX_HIDDEN_LAYERS = 8
MAX_LAYER_WIDTH = 4096
MAX_BATCH_SIZE = 1_000_000
MAX_SYNTHETIC_CELLS = 50_000_000  # float32 cells of a generated dataset: 190 MiB


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


LearningRate = Annotated[float, Field(gt=0, le=10, description="α, > 0")]
Beta = Annotated[float, Field(ge=0, lt=1, description="in [0, 1)")]
Epsilon = Annotated[float, Field(gt=0, le=1)]


class SGDSpec(StrictModel):
    """Plain mini-batch gradient descent: W -= α dW."""
    name: Literal["sgd"]
    lr: LearningRate


class MomentumSpec(StrictModel):
    """V = βV + (1-β)dW, W -= αV."""
    name: Literal["momentum"]
    lr: LearningRate
    beta: Beta = 0.9


class RMSpropSpec(StrictModel):
    """S = βS + (1-β)dW², W -= α dW / (√S + ε)."""
    name: Literal["rmsprop"]
    lr: LearningRate
    beta: Beta = 0.9
    eps: Epsilon = 1e-8


class AdamSpec(StrictModel):
    """Momentum and RMSprop combined; β2 = 0.98 as in the lecture. Bias correction as
    in Kingma and Ba, or off for the slide's uncorrected form."""
    name: Literal["adam"]
    lr: LearningRate
    beta1: Beta = 0.9
    beta2: Beta = 0.98
    eps: Epsilon = 1e-8
    bias_correction: bool = True


OptimizerSpec = Annotated[Union[SGDSpec, MomentumSpec, RMSpropSpec, AdamSpec],
                          Field(discriminator="name")]


Width = Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]


class MLPSpec(StrictModel):
    """Dense layers, for tabular data."""
    type: Literal["mlp"] = "mlp"
    hidden: list[Width] = Field(default_factory=lambda: [128, 64], min_length=1,
                                max_length=MAX_HIDDEN_LAYERS)
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


class CNNSpec(StrictModel):
    """3×3 convolutions (one per entry of `channels`), then dense layers; image datasets only."""
    type: Literal["cnn"]
    channels: list[Annotated[int, Field(ge=1, le=512)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=4)
    hidden: list[Width] = Field(default_factory=lambda: [64], max_length=MAX_HIDDEN_LAYERS)
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


def _model_type(value) -> str:
    # `type` may be left out: an MLP is the default model.
    return value.get("type", "mlp") if isinstance(value, dict) else getattr(value, "type", "mlp")


ModelSpec = Annotated[Union[Annotated[MLPSpec, Tag("mlp")], Annotated[CNNSpec, Tag("cnn")]],
                      Discriminator(_model_type)]


class DatasetSpec(StrictModel):
    """A built-in dataset; the synthetic ones take their size from rows/features/classes.
    diabetes and synthetic_regression are regression tasks, the others classification."""
    name: Literal["digits", "iris", "wine", "breast_cancer", "diabetes", "synthetic",
                  "synthetic_regression"]
    rows: int = Field(1000, ge=30, le=2_000_000)
    features: int = Field(20, ge=2, le=1000)
    classes: int = Field(2, ge=2, le=100)
    seed: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounded_size(self):
        if self.rows * self.features > MAX_SYNTHETIC_CELLS:
            raise ValueError(f"rows × features must be at most {MAX_SYNTHETIC_CELLS:,} "
                             f"(a {MAX_SYNTHETIC_CELLS * 4 // 2**20} MiB dataset)")
        return self


class EarlyStoppingSpec(StrictModel):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(10, ge=1, le=1000)
    min_delta: float = Field(0.0, ge=0)


class CVSpec(StrictModel):
    folds: int = Field(5, ge=3, le=20, description="k ≥ 3: one test, one validation, ≥ 1 training group")
    stratify: bool = True
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ResourcesSpec(StrictModel):
    gpus_per_fold: float = Field(0, ge=0, le=8, description="fractions share a GPU")
    cpus_per_fold: float = Field(1, gt=0, le=64)


class JobSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=MLPSpec)
    optimizer: OptimizerSpec
    batch_size: Union[int, Literal["full"]] = Field(
        64, description='samples per mini-batch: 1 (stochastic) to 1,000,000, or "full" '
                        '(classic gradient descent, one step per epoch)')
    max_epochs: int = Field(100, ge=1, le=10_000)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    cv: CVSpec = Field(default_factory=CVSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    loss_ewma_beta: Beta = Field(0.9, description="β of the logged average of the training loss")
    pack_folds: bool = Field(False, description="train all folds in one task as one stacked model")
    checkpoint_interval_s: float = Field(
        10.0, ge=0, le=3600, description="seconds between epoch checkpoints (0: every epoch); a "
                                         "fold whose worker dies resumes from the last one")

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_rule(cls, value):
        # One clear message instead of one per member of the int | "full" union.
        if value == "full" or (type(value) is int and 1 <= value <= MAX_BATCH_SIZE):
            return value
        raise ValueError(f'must be an integer from 1 to {MAX_BATCH_SIZE:,} or "full"')

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

"""What a job's `dataset` may say, checked before anything else (no data is read here).

Three forms:
- a bundled dataset by name: "digits", or {"name": "digits"};
- a generated one with its size: {"name": "synthetic", "rows": 1000, "features": 20,
  "classes": 2, "seed": 0} (synthetic_regression takes no classes);
- a stored dataset (uploaded, or a bundled one) by id, or by name among the caller's,
  with its label column and how to use the others: {"id": ..., "label": "species",
  "features": [...], "drop": [...], "task": ..., "strata": [...], "group": ...,
  "missing": "refuse" | "mean"}.
The rules that need the dataset itself (do the columns exist?) are services.job_data's.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, \
    model_validator

BUNDLED_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
# What a generated dataset takes, with its defaults; a bundled dataset takes none of it.
GENERATED_DATASETS = {"synthetic": {"rows": 1000, "features": 20, "classes": 2, "seed": 0},
                      "synthetic_regression": {"rows": 1000, "features": 20, "seed": 0}}
SIZES = {"rows": (30, 100_000_000), "features": (2, 1000), "classes": (2, 100), "seed": (0, 2**31 - 1)}
STORED_ONLY = ("drop", "task", "strata", "group", "missing")
# float32 cells of a generated dataset: 7.5 GiB. Above 50 M cells it is written in chunks
# (services.datasets.write_generated); a job too large to hold is refused by the memory
# estimate, or streamed (data_loading).
MAX_SYNTHETIC_CELLS = 2_000_000_000
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
Column = Annotated[str, Field(min_length=1, max_length=200)]
Columns = Annotated[list[Column], Field(max_length=10_000)]


def whole(value):
    return int(value) if type(value) is float and value.is_integer() else value


def is_stored(values: dict) -> bool:
    return values.get("id") is not None or values.get("label") is not None


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    id: str | None = Field(None, min_length=1, max_length=36)
    label: Column | None = None
    name: str | None = None
    rows: int | None = None
    classes: int | None = None
    seed: int | None = None
    features: int | list[Column] | None = None  # generated: how many; stored: which columns
    drop: Columns | None = None
    task: Literal["classification", "regression"] | None = None
    strata: Columns | None = None
    group: Column | None = None
    missing: Literal["refuse", "mean"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _a_known_name(cls, name, info: ValidationInfo):
        if name is None:  # given as null: the whole spec's check says what is missing
            return None
        if info.data.get("id") is not None:
            raise ValueError("give the dataset's id or its name, not both")
        if is_stored(info.data):
            if not re.fullmatch(NAME, name):
                raise ValueError("a dataset name is 1 to 100 letters, digits, '_', '.' or '-'")
        elif name not in (*BUNDLED_DATASETS, *GENERATED_DATASETS):
            raise ValueError(f"{name!r} is not a bundled dataset ({', '.join(BUNDLED_DATASETS)}) nor a "
                             f"generated one ({', '.join(GENERATED_DATASETS)}); for a dataset of "
                             "yours, give its id or name and its label")
        return name

    @field_validator("rows", "classes", "seed", mode="before")
    @classmethod
    def _a_size(cls, value, info: ValidationInfo):
        return size_of(info.field_name, value, info.data)

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, value, info: ValidationInfo):
        if is_stored(info.data):
            if not isinstance(value, list):
                raise ValueError("for a stored dataset, the list of feature columns")
            return value
        return size_of("features", value, info.data)

    @field_validator(*STORED_ONLY)
    @classmethod
    def _stored_only(cls, value, info: ValidationInfo):
        if not is_stored(info.data):
            raise ValueError(f"only a stored dataset (given by id, or by name with its label) takes "
                             f"{info.field_name}")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("names a column twice")
        return value

    @model_validator(mode="after")
    def _complete(self):
        if is_stored(vars(self)):
            if self.label is None:
                raise ValueError("a stored dataset needs its label column")
            if self.id is None and self.name is None:
                raise ValueError("give the dataset's id, or its name")
            self.drop, self.strata = self.drop or [], self.strata or []
            self.missing = self.missing or "refuse"
            return self
        if self.name is None:  # {"rows": 100} alone: nothing says which data
            raise ValueError("give the dataset's name (a bundled or generated one), or a stored "
                             "dataset's id or name with its label")
        for field, default in GENERATED_DATASETS.get(self.name, {}).items():
            if getattr(self, field) is None:
                setattr(self, field, default)
        if self.classes is not None and not separable(self.features, self.classes):
            raise ValueError(f"{self.features} features cannot separate {self.classes} classes: "
                             f"generated data needs 2·classes ≤ 2^informative features "
                             f"(informative = min(features, 2·classes)); give more features")
        if self.rows is not None and self.rows * self.features > MAX_SYNTHETIC_CELLS:
            raise ValueError(f"rows × features must be at most {MAX_SYNTHETIC_CELLS:,} "
                             f"(a {MAX_SYNTHETIC_CELLS * 4 // 2**20} MiB dataset)")
        return self

    @property
    def stored(self) -> bool:
        return is_stored(vars(self))

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler):
        # A bundled dataset is its name: fields that mean nothing for it are not shown.
        return {key: value for key, value in handler(self).items() if value is not None}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        return dataset_schema(cls.__doc__ or "")


def informative_features(features: int, classes: int) -> int:
    """How many of a generated classification dataset's features carry its classes."""
    return max(2, min(features, classes * 2))


def separable(features: int, classes: int) -> bool:
    """scikit-learn places each class's 2 clusters on the corners of a hypercube of the
    informative features: it refuses more clusters than corners."""
    return classes * 2 <= 2 ** informative_features(features, classes)


def size_of(field: str, value, values: dict) -> int:
    """A generated dataset's size, checked against the dataset it is for."""
    if value is None:
        raise ValueError("must be an integer; leave it out for the default")
    if is_stored(values):
        raise ValueError(f"a stored dataset takes no {field}: its size is its file's")
    name = values.get("name")
    if name is not None and field not in GENERATED_DATASETS.get(name, {}):
        kind = "a bundled dataset of fixed size" if name in BUNDLED_DATASETS else "a regression dataset"
        raise ValueError(f"{name} is {kind}: it takes no {field}")
    value = whole(value)
    low, high = SIZES[field]
    if type(value) is not int:
        raise ValueError("must be an integer")
    if not low <= value <= high:
        raise ValueError(f"must be from {low:,} to {high:,}")
    return value


def dataset_schema(description: str) -> dict:
    """What is accepted, as a JSON schema can say it (see the module's docstring)."""
    def sizes(takes: dict) -> dict:
        return {field: {"type": "integer", "minimum": SIZES[field][0], "maximum": SIZES[field][1],
                        "default": default} for field, default in takes.items()}

    def fixed(names, properties: dict) -> dict:
        return {"type": "object", "properties": {"name": {"type": "string", "enum": list(names)},
                                                 **properties},
                "required": ["name"], "additionalProperties": False}

    column = {"type": "string", "minLength": 1, "maxLength": 200}
    columns = {"type": "array", "items": column, "maxItems": 10_000, "uniqueItems": True}
    stored = {"type": "object", "additionalProperties": False, "required": ["label"],
              "oneOf": [{"required": ["id"]}, {"required": ["name"]}],
              "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 36},
                             "name": {"type": "string", "pattern": NAME}, "label": column,
                             "features": columns, "drop": columns, "strata": columns, "group": column,
                             "task": {"type": "string", "enum": ["classification", "regression"]},
                             "missing": {"type": "string", "enum": ["refuse", "mean"], "default": "refuse"}}}
    return {"title": "DatasetSpec", "description": description, "anyOf": [
        {"type": "string", "enum": [*BUNDLED_DATASETS, *GENERATED_DATASETS]},
        fixed(BUNDLED_DATASETS, {}),
        *(fixed([name], sizes(takes)) for name, takes in GENERATED_DATASETS.items()),
        stored]}

"""The data a job trains on, resolved once at submission and stored with the job.

A job's `dataset` section (services.data_spec) names a stored dataset (uploaded or
bundled) or a generated one. Resolving it checks the section against the dataset's
description (every column named exists, every feature can be encoded, no missing value
unless the job imputes, enough rows per class and groups for the folds...) and settles
what the fold tasks will do: the feature columns, the task, the classes, the width of
the encoded inputs. Each refusal is an InvalidJob naming the field and the rule.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from sqlalchemy.orm import Session

from services.catalog import find_dataset, get_dataset
from services.data_spec import DatasetSpec
from services.datasets import bundled_id
from services.errors import InvalidJob
from services.models import Dataset
from services.spec import JobSpec
from services.splits import STRATA_FOR_REGRESSION

CATEGORY_CAP = 100        # distinct values of a string feature, one-hot encoded
CLASSIFICATION_CAP = 20   # an integer label with at most this many values is classes
UNUSABLE = {"temporal": "a date or time", "nested": "a nested value", "empty": "no values at all"}


@dataclass(frozen=True)
class JobData:
    name: str
    rows: int
    label: str
    features: list[str]
    task: str                              # classification or regression
    classes: list = field(default_factory=list)  # the label's values, sorted: class i is classes[i]
    input_width: int = 0                   # inputs once encoded (one-hot blocks included)
    image_shape: list[int] = field(default_factory=list)
    strata: list[str] = field(default_factory=list)
    group: str | None = None
    missing: str = "refuse"
    dataset_id: str | None = None          # a stored dataset; None for a generated one
    digest: str | None = None
    uri: str | None = None
    generated: dict | None = None          # a generated dataset's spec: made by the dispatcher
    loading: str = "memory"                # how the fold tasks read it: "memory" or "stream"

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, stored: dict) -> "JobData":
        return cls(**stored)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape) or (self.input_width,)

    def schema(self, dataset: Dataset | None) -> list[dict]:
        """The columns used, by name and (stored) type, the label last: from the stored
        dataset's description, or a generated dataset's own types."""
        types = {c["name"]: c["type"] for c in dataset.columns} if dataset is not None else {}
        generated = {self.label: "int64" if self.classes else "float"}
        return [{"name": name, "type": types.get(name) or generated.get(name, "float")}
                for name in [*self.features, self.label]]


def resolve(job: JobSpec, *, session: Session | None, owner: str | None,
            bundled: dict[str, Dataset] | None = None) -> JobData:
    """The job's data, checked against the job (InvalidJob), or DatasetNotFound for a
    dataset the owner cannot see. A generated dataset needs no session, nor a bundled one
    named as such when `bundled` (name → dataset, which never change) has it."""
    spec = job.dataset
    if spec.name in GENERATED and not spec.stored:
        data, columns = generated_data(spec), None
    else:
        known = None if spec.stored else (bundled or {}).get(spec.name)
        dataset = known or dataset_of(spec, session, owner)
        if not spec.stored:  # a bundled dataset by name: its label and task are known
            spec = DatasetSpec(id=dataset.id, label=dataset.extra["label"], task=dataset.extra["task"])
        data, columns = stored_data(spec, dataset), {c["name"]: c for c in dataset.columns}
    check_folds(data, columns, job.cv.folds, job.cv.stratify)
    check_model(data, job)
    return data


def dataset_of(spec: DatasetSpec, session: Session, owner: str | None) -> Dataset:
    if not spec.stored:
        return get_dataset(session=session, dataset_id=bundled_id(spec.name))
    if spec.id is not None:
        return get_dataset(session=session, dataset_id=spec.id, owner=owner)
    return find_dataset(session=session, name=spec.name, owner=owner)


def check_model(data: JobData, job: JobSpec) -> None:
    if job.model.type == "cnn" and len(data.input_shape) != 3:
        raise InvalidJob("model.type", f"a cnn needs an image dataset (digits); {data.name} is tabular")
    if job.pack_folds and job.model.type != "mlp":
        raise InvalidJob("pack_folds", "packing stacks MLPs only; use model.type mlp or unpacked folds")
    if data.task == "regression" and job.early_stopping and job.early_stopping.monitor == "val_accuracy":
        raise InvalidJob("early_stopping.monitor", f"{data.name} is a regression dataset: it has no "
                         "accuracy; monitor val_loss")


GENERATED = {"synthetic": "classification", "synthetic_regression": "regression"}


def generated_data(spec: DatasetSpec) -> JobData:
    task = GENERATED[spec.name]
    classes = list(range(spec.classes)) if task == "classification" else []
    return JobData(name=spec.name, rows=spec.rows, label="label", features=[f"f{i}" for i in range(spec.features)],
                   task=task, classes=classes, input_width=spec.features, generated=spec.model_dump())


def stored_data(spec: DatasetSpec, dataset: Dataset) -> JobData:
    columns = {column["name"]: column for column in dataset.columns}
    check_names(spec, columns)
    features = spec.features or [name for name in columns
                                 if name not in (spec.label, spec.group, *spec.drop)]
    check_features(features, spec, columns)
    task = task_of(spec, columns[spec.label])
    classes = classes_of(columns[spec.label]) if task == "classification" else []
    width = sum(1 if columns[name]["kind"] != "string" else categories_of(columns[name])
                for name in features)
    return JobData(name=dataset.name, rows=dataset.rows, label=spec.label, features=features, task=task,
                   classes=classes, input_width=width, image_shape=dataset.extra.get("image_shape", []),
                   strata=spec.strata, group=spec.group, missing=spec.missing, dataset_id=dataset.id,
                   digest=dataset.digest, uri=dataset.uri)


def check_names(spec: DatasetSpec, columns: dict) -> None:
    """Every column the section names exists; a refusal lists those that do."""
    named = {"label": [spec.label], "features": spec.features or [], "drop": spec.drop,
             "strata": spec.strata, "group": [spec.group] if spec.group else []}
    for field_name, names in named.items():
        unknown = [name for name in names if name not in columns]
        if unknown:
            raise InvalidJob(f"dataset.{field_name}", f"no column {', '.join(map(repr, unknown))}; the "
                             f"columns are {', '.join(columns)}")
    if spec.label in (spec.features or []):
        raise InvalidJob("dataset.features", f"{spec.label!r} is the label: it cannot be a feature too")
    if spec.group is not None and columns[spec.group]["missing"]:
        raise InvalidJob("dataset.group", f"{spec.group!r} has {columns[spec.group]['missing']} missing "
                         "values: every row needs its group")


def check_features(features: list[str], spec: DatasetSpec, columns: dict) -> None:
    if not features:
        raise InvalidJob("dataset.features", "no feature column is left")
    for name in features:
        column = columns[name]
        if column["kind"] in UNUSABLE:
            raise InvalidJob("dataset.features", f"{name!r} holds {UNUSABLE[column['kind']]} "
                             f"({column['type']}): it cannot be a feature; add it to drop")
        if column["kind"] == "string" and categories_of(column) > CATEGORY_CAP:
            distinct = column["summary"]["distinct"] or f"over {column['summary']['distinct_over']:,}"
            raise InvalidJob("dataset.features", f"{name!r} has {distinct} distinct values, over the cap "
                             f"of {CATEGORY_CAP} for one-hot encoding; add it to drop")
        if column["summary"].get("infinite"):
            raise InvalidJob("dataset.features", f"{name!r} has {column['summary']['infinite']} infinite "
                             "values")
    missing = [(name, columns[name]["missing"]) for name in features if columns[name]["missing"]]
    if missing and spec.missing == "refuse":
        listed = ", ".join(f"{name} ({count})" for name, count in missing)
        raise InvalidJob("dataset.missing", f"columns with missing values: {listed}; drop them, or set "
                         "missing to \"mean\" to impute the training rows' mean (mode for strings)")


def categories_of(column: dict) -> int:
    distinct = column["summary"].get("distinct")
    return math.inf if distinct is None else distinct


def task_of(spec: DatasetSpec, label: dict) -> str:
    """As given, or inferred: a string or boolean label is classes, so is an integer one
    with at most CLASSIFICATION_CAP distinct values; any other number is regression."""
    few = label["summary"].get("values") is not None and len(label["summary"]["values"]) <= CLASSIFICATION_CAP
    inferred = "classification" if label["kind"] in ("string", "boolean") or few else "regression"
    task = spec.task or inferred
    if label["missing"]:
        raise InvalidJob("dataset.label", f"{spec.label!r} has {label['missing']} missing values")
    if label["kind"] not in ("number", "string", "boolean"):
        raise InvalidJob("dataset.label", f"{spec.label!r} ({label['type']}) cannot be a label")
    if task == "regression" and label["kind"] != "number":
        raise InvalidJob("dataset.task", f"{spec.label!r} holds {label['kind']}s: regression needs numbers")
    if task == "classification" and label["summary"].get("values") is None:
        raise InvalidJob("dataset.task", f"{spec.label!r} has more than 100 distinct values: too many "
                         "classes; for a number, use task regression")
    return task


def classes_of(label: dict) -> list:
    values = [value for value, _ in label["summary"]["values"]]
    if len(values) < 2:
        raise InvalidJob("dataset.label", f"the label has a single class, {values[0]!r}: nothing to learn")
    return values


def class_sizes(label: dict) -> dict:
    return {value: count for value, count in label["summary"]["values"]}


def check_folds(data: JobData, columns: dict | None, folds: int, stratify: bool) -> None:
    """Enough rows per class (stratified) and enough groups for the folds."""
    if columns is None:  # a generated dataset: its size says it
        smallest = data.rows // (len(data.classes) if data.classes else STRATA_FOR_REGRESSION)
        if stratify and folds > smallest:
            raise InvalidJob("cv.folds", f"{folds} stratified folds need at least {folds} samples per "
                             f"class; the smallest class has {smallest}")
        return
    if data.task == "classification" and stratify:
        small = {value: count for value, count in class_sizes(columns[data.label]).items() if count < folds}
        if small:
            value, count = min(small.items(), key=lambda item: item[1])
            raise InvalidJob("dataset.label", f"class {value!r} has {count} rows; {folds} stratified folds "
                             f"need at least {folds} rows in every class")
    if data.rows < 3 * folds:
        raise InvalidJob("cv.folds", f"{folds} folds need at least {3 * folds} rows; the dataset has {data.rows}")
    if data.group is not None:
        groups = categories_of(columns[data.group]) if columns[data.group]["kind"] == "string" else \
            len(columns[data.group]["summary"].get("values") or []) or math.inf
        if groups < folds:
            raise InvalidJob("dataset.group", f"{data.group!r} has {groups} groups; {folds} folds need at "
                             f"least {folds}")



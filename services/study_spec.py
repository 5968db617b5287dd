"""What a client may ask of a study, and how its variants become job specs.

A study is a base job spec and variants of it: listed (`variants`, each a label and the
fields it changes, nested or as dotted paths) or crossed (`grid`: dotted paths to lists
of values). Every variant runs on identical folds: one dataset, one cv. A variant that
changes either is refused, as is a path the job spec does not have.
"""
from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from services.errors import InvalidJob
from services.spec import (AdamSpec, CNNSpec, JobSpec, MLPSpec, MomentumSpec, RMSpropSpec, SGDSpec,
                           StrictModel)

MAX_VARIANTS = 24
FROZEN = ("dataset", "cv")  # what every variant shares: the folds are identical only so
# Sections chosen by a discriminator: a variant naming another optimizer (or model type)
# keeps only the base's fields that the new kind has (the learning rate, say, not
# momentum's beta when it asks for Adam).
DISCRIMINATORS = {"optimizer": "name", "model": "type"}
KINDS = {"optimizer": {"sgd": SGDSpec, "momentum": MomentumSpec, "rmsprop": RMSpropSpec, "adam": AdamSpec},
         "model": {"mlp": MLPSpec, "cnn": CNNSpec}}
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,99}$"
DEFAULT_ROPE = 0.01


class StudySpec(StrictModel):
    model_config = StrictModel.model_config | {"strict": False}  # labels and values are free JSON
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    base: dict[str, Any] = Field(description="a job spec; its name is the study's")
    variants: list[dict[str, Any]] | None = Field(
        None, description='[{"label": "adam", "optimizer": {"name": "adam", "lr": 0.001}}, ...]: each '
                          "changes the base's fields, nested or as dotted paths")
    grid: dict[str, list] | None = Field(
        None, description='{"optimizer.lr": [0.01, 0.001], "batch_size": [16, 64]}: every combination')
    metric: str | None = Field(None, description="the test metric variants are ranked on: accuracy "
                                                 "(default, classification) or loss (regression)")
    rope: float = Field(DEFAULT_ROPE, ge=0, le=1e6, description="region of practical equivalence of "
                        "the Bayesian test: differences of the metric within ±rope count as equal")
    target_val_loss: float | None = Field(None, gt=0, description="every variant's folds record the "
                                                                 "first epoch at this validation loss")
    refit: bool = Field(False, description="once every variant has ended, refit the best one on every "
                                           "row and register it in the MLflow Model Registry under the "
                                           "study's name")

    @field_validator("variants")
    @classmethod
    def _variants_bounded(cls, variants):
        if variants is not None and not 1 <= len(variants) <= MAX_VARIANTS:
            raise ValueError(f"between 1 and {MAX_VARIANTS} variants")
        return variants

    @model_validator(mode="after")
    def _one_way(self):
        if (self.variants is None) == (self.grid is None):
            raise ValueError('give either "variants" or "grid"')
        return self


def expand(study: StudySpec) -> list[tuple[str, JobSpec]]:
    """(label, job spec) of each variant, in order; InvalidJob naming the field and the
    rule of the first one that is not a valid job or changes the folds."""
    base = {**study.base, "name": study.name}
    if study.target_val_loss is not None:
        base["target_val_loss"] = study.target_val_loss
    base_spec = validated(base, "base")
    if study.grid is not None:
        variants = grid_variants(study.grid)
    else:
        variants = [(labelled(v, i), {k: x for k, x in v.items() if k != "label"}, f"variants.{i}")
                    for i, v in enumerate(study.variants)]
    labels = [label for label, _, _ in variants]
    if len(set(labels)) != len(labels):
        raise InvalidJob("variants", "labels must be unique")
    specs = []
    for label, changes, where in variants:
        spec = validated(changed(base, changes, where), where)
        if spec.refit:  # one model for the study, not one per variant
            field = "base.refit" if base_spec.refit else f"{where}.refit"
            raise InvalidJob(field, "set refit on the study: it refits the best variant once all have ended")
        for section in FROZEN:
            if getattr(spec, section) != getattr(base_spec, section):
                raise InvalidJob(f"{where}.{section}", f"a variant may not change the {section}: "
                                 "every variant of a study runs on identical folds")
        specs.append((label, spec))
    return specs


def grid_variants(grid: dict[str, list]) -> list[tuple[str, dict, str]]:
    for path, values in grid.items():
        if not values:
            raise InvalidJob(f"grid.{path}", "give at least one value")
        if path.split(".")[0] in FROZEN:
            raise InvalidJob(f"grid.{path}", f"a study may not vary {path.split('.')[0]}: every variant "
                             "runs on identical folds")
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_VARIANTS:
        raise InvalidJob("grid", f"{count} combinations: at most {MAX_VARIANTS} variants")
    paths = list(grid)
    return [(",".join(f"{p}={compact(v)}" for p, v in zip(paths, combo))[:100], dict(zip(paths, combo)), "grid")
            for combo in itertools.product(*grid.values())]


def compact(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def labelled(variant: dict, index: int) -> str:
    label = variant.get("label")
    if not isinstance(label, str) or not label:
        raise InvalidJob(f"variants.{index}.label", "each variant needs a label (a non-empty string)")
    return label


def changed(base: dict, changes: dict, where: str) -> dict:
    """The base with the variant's changes: dotted paths set one field; a nested section
    merges into the base's, unless it names another optimizer or model type."""
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        path = key.split(".")
        if "" in path:
            raise InvalidJob(f"{where}.{key}", "not a field path")
        set_path(spec, path, value, f"{where}.{key}")
    return spec


def set_path(spec: dict, path: list[str], value, where: str) -> None:
    node = spec
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InvalidJob(where, f"{'.'.join(path[:depth + 1])} is not a section")
        node = child
    leaf, old = path[-1], node.get(path[-1])
    if len(path) == 1 and isinstance(value, dict) and isinstance(old, dict):
        node[leaf] = {**kept_for(leaf, old, value.get(DISCRIMINATORS.get(leaf))), **value}
    elif len(path) == 2 and DISCRIMINATORS.get(path[0]) == leaf:
        kept = kept_for(path[0], node, value)
        node.clear()
        node.update({**kept, leaf: value})
    else:
        node[leaf] = value


def kept_for(section: str, old: dict, kind) -> dict:
    """The fields of `old` (a section) that a section of `kind` has too: all of them when
    the kind does not change."""
    discriminator = DISCRIMINATORS.get(section)
    if discriminator is None or kind is None or kind == old.get(discriminator, kind):
        return old
    model = KINDS[section].get(kind)
    return {k: v for k, v in old.items() if model is not None and k in model.model_fields}


def validated(spec: dict, where: str) -> JobSpec:
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as error:
        first = error.errors()[0]
        tags = {kind for kinds in KINDS.values() for kind in kinds}  # a union's member, not a field
        loc = ".".join(str(part) for part in first["loc"] if part not in tags)
        message = ("no such field in a job spec" if first["type"] == "extra_forbidden" else first["msg"])
        raise InvalidJob(f"{where}.{loc}" if loc else where, message) from None

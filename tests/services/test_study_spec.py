"""services.study_spec: a study's variants as job specs, and the studies refused."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.errors import InvalidJob
from services.study_spec import MAX_VARIANTS, StudySpec, expand

BASE = {"dataset": "digits", "optimizer": {"name": "momentum", "lr": 0.1, "beta": 0.8}, "max_epochs": 5,
        "cv": {"folds": 4, "seed": 3}}


def variants(**study):
    return expand(StudySpec(name="lecture", base=BASE, **study))


def test_listed_variants_change_the_base_nested_or_by_dotted_path():
    made = variants(variants=[{"label": "sgd", "optimizer": {"name": "sgd"}},
                              {"label": "adam", "optimizer.name": "adam", "optimizer.lr": 0.001},
                              {"label": "bn", "model.batch_norm": True, "early_stopping": None}])
    assert [label for label, _ in made] == ["sgd", "adam", "bn"]
    sgd, adam, bn = (spec for _, spec in made)
    assert sgd.optimizer.model_dump() == {"name": "sgd", "lr": 0.1}  # momentum's beta dropped, its lr kept
    assert (adam.optimizer.name, adam.optimizer.lr) == ("adam", 0.001)
    assert bn.model.batch_norm and bn.early_stopping is None and bn.optimizer.beta == 0.8
    assert all(spec.name == "lecture" and spec.cv == sgd.cv and spec.dataset == sgd.dataset for _, spec in made)


def test_a_grid_is_crossed_and_labelled_by_its_values():
    made = variants(grid={"optimizer.lr": [0.1, 0.01], "batch_size": [16, "full"]}, target_val_loss=0.5)
    assert [label for label, _ in made] == ["optimizer.lr=0.1,batch_size=16", "optimizer.lr=0.1,batch_size=full",
                                            "optimizer.lr=0.01,batch_size=16", "optimizer.lr=0.01,batch_size=full"]
    assert [(s.optimizer.lr, s.batch_size) for _, s in made] == [(0.1, 16), (0.1, "full"), (0.01, 16), (0.01, "full")]
    assert all(spec.target_val_loss == 0.5 for _, spec in made)  # the study's target, on every variant


@pytest.mark.parametrize("study, field, words", [
    ({"grid": {"optimizer.lrr": [0.1]}}, "grid.optimizer.lrr", "no such field"),
    ({"grid": {"max_epochs": [0]}}, "grid.max_epochs", "greater than or equal to 1"),
    ({"grid": {"cv.folds": [3, 5]}}, "grid.cv.folds", "identical folds"),
    ({"grid": {"dataset": ["iris"]}}, "grid.dataset", "identical folds"),
    ({"variants": [{"label": "other data", "dataset": "iris"}]}, "variants.0.dataset", "identical folds"),
    ({"variants": [{"label": "seed", "cv.seed": 4}]}, "variants.0.cv", "identical folds"),
    ({"variants": [{"label": "a"}, {"label": "a"}]}, "variants", "unique"),
    ({"variants": [{"optimizer.lr": 0.1}]}, "variants.0.label", "needs a label"),
    ({"variants": [{"label": "r", "refit": True}]}, "variants.0.refit", "set refit on the study"),
    ({"grid": {"max_epochs": list(range(1, MAX_VARIANTS + 2))}}, "grid", f"at most {MAX_VARIANTS}"),
])
def test_bad_studies_are_refused_naming_the_field_and_the_rule(study, field, words):
    with pytest.raises(InvalidJob) as refused:
        variants(**study)
    assert refused.value.field == field and words in refused.value.message, refused.value


def test_too_many_listed_variants_or_neither_form_are_refused_by_the_schema():
    with pytest.raises(ValidationError, match=f"between 1 and {MAX_VARIANTS} variants"):
        StudySpec(name="s", base=BASE, variants=[{"label": str(i)} for i in range(MAX_VARIANTS + 1)])
    with pytest.raises(ValidationError, match='either "variants" or "grid"'):
        StudySpec(name="s", base=BASE)


def test_refit_is_the_study_s_not_its_base_s():
    with pytest.raises(InvalidJob) as refused:
        expand(StudySpec(name="s", base={**BASE, "refit": True}, variants=[{"label": "a"}]))
    assert refused.value.field == "base.refit" and "refits the best variant" in refused.value.message
    assert StudySpec(name="s", base=BASE, variants=[{"label": "a"}], refit=True).refit

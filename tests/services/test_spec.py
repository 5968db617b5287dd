"""The job spec: its defaults, the typed configuration fold tasks get from it, and what
a dataset section may say."""
import pytest
from pydantic import ValidationError

from services.spec import JobSpec
from tests.helpers import small_job
from tests.workers.helpers import LECTURE_VALUES
from workers.config import AdamConfig, MomentumConfig, RMSpropConfig, TrainingConfig


def config_of(**overrides) -> TrainingConfig:
    return JobSpec.model_validate(small_job(**overrides)).training_config()


def test_the_training_configuration_carries_the_lectures_values_from_the_spec():
    assert config_of(optimizer={"name": "adam", "lr": 0.1}).optimizer == AdamConfig(
        lr=0.1, beta1=0.9, beta2=0.98, eps=1e-8, bias_correction=True)
    assert config_of(optimizer={"name": "momentum", "lr": 0.1}).optimizer == MomentumConfig(0.1, 0.9)
    assert config_of(optimizer={"name": "rmsprop", "lr": 0.1}).optimizer == RMSpropConfig(0.1, 0.9, 1e-8)


@pytest.mark.parametrize("name", sorted(LECTURE_VALUES))
def test_the_worker_tests_use_the_specs_values(name):
    optimizer = config_of(optimizer={"name": name, "lr": 0.1}).optimizer
    assert {k: getattr(optimizer, k) for k in LECTURE_VALUES[name]} == LECTURE_VALUES[name]


def test_every_setting_reaches_the_training_configuration():
    config = config_of(batch_size="full", cv={"folds": 4, "seed": 7}, loss_ewma_beta=0.8,
                       checkpoint_interval_s=0, pack_folds=True, max_epochs=9,
                       resources={"cpus_per_fold": 2, "gpus_per_fold": 0.5},
                       early_stopping={"monitor": "val_accuracy", "patience": 4, "min_delta": 0.01},
                       model={"type": "cnn", "channels": [4], "hidden": [8], "dropout": 0.3})
    assert config.batch_size is None and config.seed == 7 and config.fold_seed(2) == 7002
    assert (config.loss_ewma_beta, config.checkpoint_interval_s, config.pack_folds, config.max_epochs) \
        == (0.8, 0, True, 9)
    assert (config.resources.cpus_per_fold, config.resources.gpus_per_fold) == (2, 0.5)
    assert (config.early_stopping.monitor, config.early_stopping.patience,
            config.early_stopping.min_delta) == ("val_accuracy", 4, 0.01)
    assert (config.model.channels, config.model.hidden, config.model.dropout) == ((4,), (8,), 0.3)
    hash(config)  # frozen all the way down


def test_a_bundled_dataset_is_its_name_only():
    for given in ("digits", {"name": "digits"}):
        assert JobSpec.model_validate(small_job(dataset=given)).model_dump()["dataset"] == {"name": "digits"}


def test_generated_datasets_show_their_size_with_the_defaults_filled_in():
    dump = JobSpec.model_validate(small_job(dataset={"name": "synthetic", "rows": 500})).model_dump()
    assert dump["dataset"] == {"name": "synthetic", "rows": 500, "features": 20, "classes": 2, "seed": 0}
    dump = JobSpec.model_validate(small_job(dataset="synthetic_regression")).model_dump()
    assert dump["dataset"] == {"name": "synthetic_regression", "rows": 1000, "features": 20, "seed": 0}


@pytest.mark.parametrize("dataset, field, rule", [
    ({"name": "digits", "rows": 1000}, "rows", "digits is a bundled dataset of fixed size: it takes no rows"),
    ({"name": "iris", "seed": 3}, "seed", "iris is a bundled dataset of fixed size: it takes no seed"),
    ({"name": "synthetic_regression", "classes": 3}, "classes",
     "synthetic_regression is a regression dataset: it takes no classes"),
])
def test_a_dataset_refuses_sizes_that_mean_nothing_for_it(dataset, field, rule):
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(small_job(dataset=dataset))
    [error] = refused.value.errors()
    assert error["loc"] == ("dataset", field) and rule in error["msg"]


def test_the_schema_says_a_dataset_is_a_name_or_an_object_with_what_it_takes():
    schema = JobSpec.model_json_schema()["$defs"]["DatasetSpec"]
    names, bundled, synthetic, regression, stored = schema["anyOf"]
    assert names["type"] == "string" and {"digits", "synthetic"} <= set(names["enum"])
    assert set(bundled["properties"]) == {"name"} and bundled["additionalProperties"] is False
    assert "digits" in bundled["properties"]["name"]["enum"]
    assert set(synthetic["properties"]) == {"name", "rows", "features", "classes", "seed"}
    assert set(regression["properties"]) == {"name", "rows", "features", "seed"}
    assert synthetic["properties"]["rows"] == {"type": "integer", "minimum": 30, "maximum": 100_000_000,
                                               "default": 1000}
    assert stored["required"] == ["label"] and stored["oneOf"] == [{"required": ["id"]}, {"required": ["name"]}]
    assert {"features", "drop", "strata", "group", "task", "missing"} <= set(stored["properties"])


def test_null_is_not_a_size():
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(small_job(dataset={"name": "synthetic", "seed": None}))
    assert refused.value.errors()[0]["loc"] == ("dataset", "seed")



def test_a_stored_dataset_is_named_with_its_label_and_gets_its_defaults():
    dataset = JobSpec.model_validate(small_job(dataset={"id": "abc", "label": "species"})).model_dump()["dataset"]
    assert dataset == {"id": "abc", "label": "species", "drop": [], "strata": [], "missing": "refuse"}
    by_name = {"name": "my-pets", "label": "kind", "features": ["age", "city"], "strata": ["city"],
               "group": "owner", "task": "classification", "missing": "mean"}
    assert JobSpec.model_validate(small_job(dataset=by_name)).model_dump()["dataset"] == {**by_name, "drop": []}


@pytest.mark.parametrize("dataset, where, rule", [
    ({"id": "abc"}, ("dataset",), "needs its label column"),
    ({"name": "mnist"}, ("dataset", "name"), "give its id or name and its label"),
    ({"id": "abc", "name": "x", "label": "y"}, ("dataset", "name"), "not both"),
    ({"name": "digits", "drop": ["a"]}, ("dataset", "drop"), "only a stored dataset"),
    ({"id": "abc", "label": "y", "rows": 500}, ("dataset", "rows"), "a stored dataset takes no rows"),
    ({"id": "abc", "label": "y", "features": 5}, ("dataset", "features"), "list of feature columns"),
    ({"id": "abc", "label": "y", "strata": ["a", "a"]}, ("dataset", "strata"), "names a column twice"),
    ({"id": "abc", "label": "y", "missing": "median"}, ("dataset", "missing"), "'refuse' or 'mean'"),
    ({"name": "synthetic", "rows": 10}, ("dataset", "rows"), "from 30 to 100,000,000"),
])
def test_a_dataset_section_that_breaks_a_rule_names_the_field(dataset, where, rule):
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(small_job(dataset=dataset))
    errors = refused.value.errors()
    assert any(e["loc"] == where and rule in e["msg"] for e in errors), errors


@pytest.mark.parametrize("priority, rule", [
    (101, "less than or equal to 100"), (-101, "greater than or equal to -100"),
    (1.5, "valid integer"), ("3", "valid integer"), (True, "valid integer"), (None, "valid integer"),
])
def test_a_priority_out_of_range_or_not_an_integer_is_refused(priority, rule):
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate(small_job(priority=priority))
    [error] = refused.value.errors()
    assert error["loc"] == ("priority",) and rule in error["msg"]


def test_priority_defaults_to_0_and_takes_a_whole_number_written_as_a_float():
    assert JobSpec.model_validate(small_job()).priority == 0
    assert JobSpec.model_validate(small_job(priority=7.0)).priority == 7

"""MLflow, and the only module that talks to it.

Layout: one experiment per owner and job name (`owner/name`: owners never share one,
and no job writes into MLflow's Default experiment); one parent run per job (flattened spec as
params, job id as a tag, test_<metric>_mean/_std, a fold table); one nested child
run per fold (per-epoch metrics at step = epoch, the best checkpoint, test metrics).
Runs are created by the dispatcher before any fold starts, so a retried fold keeps
logging into the same run. Experiments are marked as model training: MLflow 3's UI
otherwise opens them in its GenAI view (traces, evaluations), not the runs table.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import uuid
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from urllib.parse import quote

import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import OperationalError

from services.mlflow_access import MlflowAccess
from services.reports import class_report, confusion_png

log = logging.getLogger(__name__)
PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call
# MLflow has no call that writes into several runs: a tick's writes are one log_batch per
# run, this many at once against a server (its HTTP pool holds 10 connections). A local
# store takes them one at a time: concurrent writers on SQLite would wait on its lock.
SERVER_WRITERS = 8
WORKERS = Path(__file__).resolve().parents[1] / "workers"  # the exported models' code
MODEL_NEEDS = ["torch", "numpy", "pandas", "mlflow"]
# Arrow types as an MLflow signature has them. Numbers are declared double, as a table read
# with pandas has them when a value is missing.
SIGNATURE_TYPES = {"string": "string", "large_string": "string", "bool": "boolean"}
END_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
# The experiment tag MLflow 3 reads to choose between its GenAI and model-training views.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# MLflow's error codes worth trying again after: a server that is busy or restarting, a
# name two dispatchers created at once (the next try finds it), and a login refused: the
# operator's to fix (the dispatcher's MLflow password), not each job's to fail for.
TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED",
                   "RESOURCE_EXHAUSTED", "RESOURCE_ALREADY_EXISTS", "UNAUTHENTICATED"}
SERVER_FAILED = re.compile(r"error code 5\d\d|status code 5\d\d|too many 5\d\d error")


class ModelOfAnother(RuntimeError):
    """A registered model of that name exists, made by someone else: not added to."""


def experiment_name(owner: str, name: str) -> str:
    return f"{owner}/{name}"


def transient(error: BaseException) -> bool:
    """Whether an MLflow call failed for a passing reason: connection refused or reset, a
    timeout, a 5xx from the server, a local store that is locked. MLflow wraps the
    network's errors in its own, so the whole chain of causes is looked at."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                              OperationalError)):
            return True
        if isinstance(error, MlflowException) and (
                error.error_code in TRANSIENT_CODES or SERVER_FAILED.search(str(error))
                or (isinstance(error, RestException) and error.error_code == "INTERNAL_ERROR")):
            return True  # a 5xx (MLflow's plain INTERNAL_ERROR is also its default: not enough)
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class RunWrites:
    """What one dispatcher tick writes into MLflow runs: epochs' metrics and tags, sent
    together by Tracker.write. An epoch's metrics carry the worker's stamp, so that
    writing them again (a tick that failed after MLflow took them) adds nothing: MLflow
    keeps one of identical metrics (key, value, step, timestamp)."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[Metric]] = defaultdict(list)
        self.tags: dict[str, dict[str, str]] = defaultdict(dict)

    def epoch(self, run_id: str, epoch: int, metrics: dict[str, float], stamp_ms: int) -> None:
        self.metrics[run_id] += [Metric(key, value, stamp_ms, epoch) for key, value in metrics.items()]

    def tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[run_id][key] = value  # set twice in a tick: the later value, as set_tag would leave


class Tracker:
    def __init__(self, *, tracking_uri: str, artifacts_dir: Path | None = None,
                 access: MlflowAccess | None = None):
        """`artifacts_dir`: where a local store keeps artifacts; None lets an MLflow
        server choose (it proxies artifacts to its own storage). `access`: an MLflow
        server's authentication (services.mlflow_access), to grant each owner their own
        experiments; None where MLflow has none (the embedded, single-owner default)."""
        self.client = MlflowClient(tracking_uri)
        self.artifacts_dir, self.access = artifacts_dir, access
        self.writers = SERVER_WRITERS if tracking_uri.startswith(("http://", "https://")) else 1

    def ensure_store(self) -> None:
        """Create (and migrate) the store once, before anything else opens it: several
        processes migrating a fresh SQLite store at once collide."""
        self.client.search_experiments(max_results=1)

    def experiment_id(self, owner: str, name: str, known: str | None = None) -> str:
        """The owner's experiment for this job name: `known`, the one an earlier job of
        theirs used, or one made now (marked as a model-training experiment). One someone
        deleted is restored: MLflow would refuse new runs in it, failing every later job of
        that name. Where other MLflow users exist (basic-auth), an experiment of the
        owner's name that crossfold did not record may have been made by someone else, to
        read what lands in it: the owner gets a new one instead."""
        experiment = self.existing(known) if known else None
        if experiment is None:
            experiment = self.client.get_experiment_by_name(experiment_name(owner, name))
            if experiment is not None and self.access is not None:
                return self.create_experiment(owner, name, suffix=f" ({uuid.uuid4().hex[:8]})")
        if experiment is None:
            return self.create_experiment(owner, name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made by an older crossfold
            self.client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        if self.access is not None:  # made before MLflow had authentication, say
            self.access.grant_read(owner, experiment.experiment_id)
        return experiment.experiment_id

    def existing(self, experiment_id: str):
        try:
            return self.client.get_experiment(experiment_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # deleted for good (mlflow gc)
                return None
            raise

    def create_experiment(self, owner: str, name: str, suffix: str = "") -> str:
        location = None
        if self.artifacts_dir:  # a folder per owner; an owner name may hold any character
            folder = self.artifacts_dir / quote(owner, safe="") / (name + suffix.replace(" ", "-"))
            location = folder.resolve().as_uri()
        experiment = self.client.create_experiment(
            experiment_name(owner, name) + suffix, artifact_location=location,
            tags={EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], "crossfold.owner": owner})
        if self.access is not None:
            self.access.grant_read(owner, experiment)
        return experiment

    def start_job(self, *, job_id: str, name: str, owner: str, params: dict[str, str], n_folds: int,
                  experiment: str | None = None, label: str | None = None,
                  tags: dict[str, str] | None = None) -> tuple[str, str, list[str]]:
        """Create the parent run and one child run per fold: (experiment, parent, children).
        `experiment`: the one an earlier job of this owner and name used (experiment_id).
        `label`: the runs' name in place of the job's (a study's variant: its label), and
        `tags` on the job's run. Should MLflow fail midway, the runs made so far are
        closed as FAILED (abandon)."""
        experiment = self.experiment_id(owner, name, experiment)
        made: list[str] = []
        label = label or name
        try:
            made.append(self.client.create_run(experiment, run_name=label,
                                               tags={"crossfold.job_id": job_id, **(tags or {})}).info.run_id)
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), PARAMS_PER_BATCH):
                self.client.log_batch(made[0], params=items[start:start + PARAMS_PER_BATCH])
            for i in range(n_folds):  # the index first: the folds stay apart in the runs table
                made.append(self.client.create_run(
                    experiment, run_name=f"{i} · fold of {label}",
                    tags={"mlflow.parentRunId": made[0], "crossfold.job_id": job_id,
                          "crossfold.fold": str(i)}).info.run_id)
        except Exception:
            self.abandon(made)
            raise
        return experiment, made[0], made[1:]

    def abandon(self, run_ids: list[str]) -> None:
        """Close the runs of a start that failed midway, as FAILED, so that none stays
        RUNNING; MLflow may well be what failed, so this tries and lets go."""
        for run_id in run_ids:
            try:
                self.client.set_terminated(run_id, status="FAILED")
            except Exception as error:
                log.warning("could not close MLflow run %s of a failed start: %s", run_id, error)

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float],
                  stamp_ms: int | None = None) -> None:
        """One epoch's metrics at step = epoch. With the worker's `stamp_ms`, logging the
        same epoch again adds nothing (MLflow keeps one of identical metrics)."""
        stamp = int(time.time() * 1000) if stamp_ms is None else stamp_ms
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, epoch) for k, v in metrics.items()])

    def write(self, writes: RunWrites) -> None:
        """Everything collected in `writes`: one log_batch per run (MLflow's client splits
        one past its limits), several runs at once against a server. Returns once every
        call has ended, raising the first error, if any: the runs that were written are
        then written again by the caller's next try, which adds nothing (see RunWrites)."""
        runs = sorted(writes.metrics.keys() | writes.tags.keys())
        if len(runs) <= 1 or self.writers == 1:
            for run_id in runs:
                self.write_run(run_id, writes)
            return
        with ThreadPoolExecutor(min(self.writers, len(runs)), thread_name_prefix="mlflow-write") as pool:
            for _ in pool.map(lambda run_id: self.write_run(run_id, writes), runs):
                pass

    def write_run(self, run_id: str, writes: RunWrites) -> None:
        tags = [RunTag(key, value) for key, value in writes.tags.get(run_id, {}).items()]
        self.client.log_batch(run_id, metrics=writes.metrics.get(run_id, []), tags=tags)

    def finish_fold(self, run_id: str, *, status: str, test_metrics: dict[str, float] | None = None,
                    best: dict[str, float] | None = None, checkpoint: bytes | None = None,
                    model: dict | None = None, error: str | None = None) -> None:
        """`best`: best_epoch and that epoch's best_val_loss / best_val_accuracy, named apart
        from the per-epoch val_loss / val_accuracy (the latest epoch's). `model`: what the
        exported model needs beside the checkpoint (see log_model); its preprocessing says
        how many missing values the fold imputed, logged as `imputed_values`."""
        if checkpoint is not None:
            self._log_bytes(run_id, checkpoint, "checkpoint", "best.pt")
            if model is not None:
                self.log_model(run_id, checkpoint, model)
        metrics = {**{f"test_{k}": v for k, v in (test_metrics or {}).items()}, **(best or {})}
        if model is not None:
            metrics["imputed_values"] = model["preprocessing"].get("imputed", 0)
        self.log_values(run_id, metrics)
        if error:
            self.client.log_batch(run_id, tags=[RunTag("crossfold.error", error[:5000])])
        self.client.set_terminated(run_id, status=END_STATUS[status])

    def finish_job(self, run_id: str, *, status: str, summary: dict[str, float],
                   table: list[dict], error: str | None = None) -> None:
        self.log_values(run_id, summary)
        self.client.log_dict(run_id, table, "fold_table.json")
        if error:
            self.client.log_batch(run_id, tags=[RunTag("crossfold.error", error[:5000])])
        self.client.set_terminated(run_id, status=END_STATUS[status])

    def log_dataset(self, run_ids: list[str], *, name: str, digest: str, uri: str, columns: list[dict],
                    rows: int) -> None:
        """Which data the runs used, as MLflow's own dataset entity (its UI shows it on each
        run): name, digest, source and schema (the columns the job uses, by type)."""
        schema = {"mlflow_colspec": [{"name": c["name"], "type": c["type"]} for c in columns]}
        dataset = Dataset(name=name, digest=digest[:36], source_type="crossfold",
                          source=json.dumps({"uri": uri}), schema=json.dumps(schema),
                          profile=json.dumps({"num_rows": rows}))
        used = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])
        for run_id in run_ids:
            self.client.log_inputs(run_id, datasets=[used])

    def log_classes(self, run_id: str, classes: list, confusion: list[list[int]]) -> None:
        """The class mapping, the per-class precision, recall and F1, and the confusion
        matrix summed over the test folds (JSON, and a PNG to look at)."""
        self.client.log_dict(run_id, {"classes": classes}, "classes.json")
        self.client.log_dict(run_id, class_report(classes, confusion), "per_class.json")
        self.client.log_dict(run_id, {"classes": classes, "rows_true_columns_predicted": confusion},
                             "confusion_matrix.json")
        self._log_bytes(run_id, confusion_png(classes, confusion), "", "confusion_matrix.png")

    def log_model(self, run_id: str, checkpoint: bytes, about: dict) -> None:
        """The fold's best model as an MLflow pyfunc model (under `model/`) that takes raw
        rows of the table and returns labels or values: its loader is workers.exported,
        copied into the model with the rest of `workers`, so it needs MLflow, torch and
        numpy only. `about`: the model's settings, input shape, outputs, task, the fold's
        preprocessing (workers.fold.prepare) and the raw feature columns' schema."""
        with tempfile.TemporaryDirectory() as tmp:
            model = MODEL_TEMPLATES.copy(signature_of(about), Path(tmp) / "model")
            data = model / MODEL_DATA
            (data / "best.pt").write_bytes(checkpoint)
            (data / "model.json").write_text(json.dumps({k: v for k, v in about.items() if k != "schema"}))
            self.client.log_artifacts(run_id, str(model), artifact_path="model")

    def register_model(self, run_id: str, name: str, description: str, owner: str) -> dict:
        """A version of registered model `name` from the run's `model/`, described; the
        version this run registered before, should it have (a refit adopted after its
        dispatcher died between registering and recording it)."""
        try:
            self.client.create_registered_model(name, tags={"crossfold.owner": owner})
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            if self.client.get_registered_model(name).tags.get("crossfold.owner") != owner:
                raise ModelOfAnother(f"a registered model named {name!r} exists and is not yours") from None
        if self.access is not None:
            self.access.grant_model_read(owner, name)
        earlier = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        version = earlier[0] if earlier else self.client.create_model_version(
            name, f"{self.client.get_run(run_id).info.artifact_uri}/model", run_id=run_id,
            description=description)
        return {"name": name, "version": int(version.version)}

    def tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def log_values(self, run_id: str, values: dict[str, float]) -> None:
        if values:
            self.log_epoch(run_id, 0, values)

    def _log_bytes(self, run_id: str, data: bytes, folder: str, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path), artifact_path=folder or None)


def signature_of(about: dict):
    """The raw feature columns in, a label (or value) out. A column the job imputed may
    have missing values, so none is required to be complete."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec(SIGNATURE_TYPES.get(column["type"], "double"), column["name"], required=False)
                     for column in about["schema"]])
    classes = about["preprocessing"].get("classes") or []
    output = "string" if any(isinstance(c, str) for c in classes) else \
        ("long" if classes else "double")
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(output)]))


MODEL_DATA = Path("data") / "data"  # where save_model puts its data_path (a folder named data)


class ModelTemplates:
    """Exported models without their data (best.pt, model.json), one per signature, made
    once: every fold of a job, and every job on the same columns, has the same MLmodel,
    environment files and code, and mlflow's save_model takes about 0.1 s of the
    dispatcher's time (YAML, version checks) at the end of every fold. Each copy gets an
    MLmodel of its own: its own model_uuid and creation time."""

    KEPT = 16  # signatures kept; the oldest goes

    def __init__(self) -> None:
        self.folder: tempfile.TemporaryDirectory | None = None  # removed with this process
        self.made: dict[str, Path] = {}
        self.lock = threading.Lock()

    def copy(self, signature, to: Path) -> Path:
        with self.lock:
            shutil.copytree(self.template(signature), to)
        mlmodel = to / "MLmodel"
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        text = re.sub(r"^model_uuid: .*$", f"model_uuid: {uuid.uuid4().hex}", mlmodel.read_text(), flags=re.M)
        mlmodel.write_text(re.sub(r"^utc_time_created: .*$", f"utc_time_created: '{created}'", text, flags=re.M))
        return to

    def template(self, signature) -> Path:
        import mlflow.pyfunc

        key = json.dumps(signature.to_dict(), sort_keys=True)
        if key in self.made:
            return self.made[key]
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="crossfold-models-")
        made = Path(tempfile.mkdtemp(dir=self.folder.name))
        (made / "data").mkdir()
        with warnings.catch_warnings():  # the signature says the columns; no example rows here
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            mlflow.pyfunc.save_model(made / "model", loader_module="workers.exported", data_path=str(made / "data"),
                                     code_paths=[str(WORKERS)], signature=signature, pip_requirements=MODEL_NEEDS)
        if len(self.made) >= self.KEPT:
            shutil.rmtree(self.made.pop(next(iter(self.made))).parent, ignore_errors=True)
        self.made[key] = made / "model"
        return self.made[key]


MODEL_TEMPLATES = ModelTemplates()

"""Each fold's exported model is a copy of one made per signature (services.tracking.ModelTemplates),
given its own data and its own MLmodel identity; tests/test_end_to_end.py loads one and predicts."""
from __future__ import annotations

import re

from services.tracking import MODEL_TEMPLATES, Tracker


def about(columns: int) -> dict:
    return {"model": {"type": "mlp"}, "input_shape": [columns], "task": "classification",
            "preprocessing": {"classes": [0, 1], "imputed": 0},
            "schema": [{"name": f"f{i}", "type": "double"} for i in range(columns)]}


def test_every_fold_gets_its_own_weights_and_identity_from_one_template(tmp_path):
    tracker = Tracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts_dir=tmp_path / "artifacts")
    tracker.ensure_store()
    _, _, children = tracker.start_job(job_id="j1", name="demo", owner="alice", params={}, n_folds=2)
    made_before = len(MODEL_TEMPLATES.made)
    for index, run_id in enumerate(children):
        tracker.log_model(run_id, f"weights of fold {index}".encode(), about(3))
    assert len(MODEL_TEMPLATES.made) <= made_before + 1  # one template for both folds
    uuids = set()
    for index, run_id in enumerate(children):
        folder = next((tmp_path / "artifacts").rglob(f"{run_id}/artifacts/model"))
        assert (folder / "data" / "data" / "best.pt").read_bytes() == f"weights of fold {index}".encode()
        assert (folder / "data" / "data" / "model.json").exists()
        assert (folder / "code" / "workers" / "exported.py").exists()
        mlmodel = (folder / "MLmodel").read_text()
        assert "loader_module: workers.exported" in mlmodel and '"name": "f2"' in mlmodel
        uuids.add(re.search(r"^model_uuid: (\w+)$", mlmodel, re.M).group(1))
    assert len(uuids) == 2

"""All of a job's folds in one stacked model (pack_folds): the packed run_fold."""
from __future__ import annotations

from dataclasses import replace

import torch

from workers.callbacks import Callbacks
from workers.config import MLPConfig, TrainingConfig
from workers.early_stopping import make_stopper
from workers.fold import prepare, to_split
from workers.models import build_model
from workers.packed.model import PackedMLP
from workers.packed.optimizer import PackedOptimizer
from workers.packed.training import PackedFold, Stack, fit_packed
from workers.plans import DataInfo, FoldPlan
from workers.results import FoldResult
from workers.table import Table
from workers.training import LossAverage


def run_packed_folds(table: Table, info: DataInfo, plans: list[FoldPlan], config: TrainingConfig, *,
                     device: torch.device, callbacks: Callbacks | None = None,
                     resume_from: bytes | None = None) -> list[FoldResult]:
    """Train these folds together; each starts from the weights its unpacked run would.
    Callbacks and `resume_from` work as in run_fold, for the whole pack."""
    if not isinstance(config.model, MLPConfig):
        raise ValueError("pack_folds supports mlp models only")
    models, folds, splits, preprocessing = [], [], {"train": [], "val": [], "test": []}, []
    for plan in plans:
        seed = config.fold_seed(plan.index)
        torch.manual_seed(seed)
        data = prepare(table, info, plan.train)
        preprocessing.append(data.preprocessing)
        models.append(build_model(config.model, info.input_shape, data.task.n_outputs))
        folds.append(PackedFold(plan.index, seed, data.task, make_stopper(config),
                                LossAverage(config.loss_ewma_beta)))
        for name in splits:
            splits[name].append(to_split(data.x, data.y, getattr(plan, name), device))
    model = PackedMLP(models).to(device)
    optimizer = PackedOptimizer(model.parameters(), config.optimizer, len(plans))
    results = fit_packed(model, optimizer, folds, train=Stack.of(splits["train"]),
                         val=Stack.of(splits["val"]), test=Stack.of(splits["test"]),
                         batch_size=config.batch_size, max_epochs=config.max_epochs,
                         batch_norm=config.model.batch_norm, callbacks=callbacks, resume_from=resume_from)
    return [replace(result, preprocessing=prepared) for result, prepared in zip(results, preprocessing)]

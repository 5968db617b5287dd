"""The captured training step (workers.graphed). Its bookkeeping runs on the CPU too:
the index buffer, the epoch's loss sum and putting the state back after warm-up. The
capture itself needs CUDA; that test runs where a GPU is present."""
import numpy as np
import pytest
import torch

from dataclasses import replace

from tests.workers.helpers import OPTIMIZER_VALUES, as_config, float64  # noqa: F401  (a fixture)
from workers.config import MLPConfig
from workers.graphed import StepGraph, state_put_back, step_graph
from workers.models import build_model
from workers.optimizers import build_optimizer
from workers.tasks import Classification
from workers.training import Split, train_one_epoch

TASK = Classification(3)
MODEL = MLPConfig((16,), batch_norm=True, dropout=0.2)
CONFIGS = [as_config(values) for values in OPTIMIZER_VALUES]


def config_id(config) -> str:
    return f"{type(config).__name__}-{getattr(config, 'bias_correction', '')}"


def data(rows=50, device="cpu", dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, generator=generator, dtype=dtype)
    return Split(x.to(device), (x[:, 0] > 0).long().to(device) + (x[:, 1] > 1).long().to(device))


def trained(config, device="cpu", use_graph=None, epochs=3, batch_size=16, dropout=0.2):
    """Weights after `epochs` epochs; use_graph: None (eager), "eager-steps" (StepGraph
    without capture) or "captured"."""
    torch.manual_seed(0)
    split = data(device=device, dtype=torch.float64 if device == "cpu" else torch.float32)
    model = build_model(replace(MODEL, dropout=dropout), (4,), 3).to(split.x.dtype).to(device)
    optimizer = build_optimizer(model.parameters(), config)
    graph = None
    if use_graph == "eager-steps":
        graph = StepGraph(model, optimizer, TASK.loss, split.x, split.y, batch_size, capture=False)
    elif use_graph == "captured":
        graph = step_graph(model, optimizer, TASK.loss, split.x, split.y, batch_size)
        assert graph is not None and graph.graph is not None
    generator = torch.Generator().manual_seed(1)
    losses = [train_one_epoch(model, optimizer, TASK, split, batch_size, generator, graph).item()
              for _ in range(epochs)]
    return losses, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_the_graph_step_trains_exactly_as_the_eager_loop(config):
    """Full batches through the index buffer, the remainder (50 = 3×16 + 2) eagerly."""
    eager_losses, eager = trained(config)
    graph_losses, stepped = trained(config, use_graph="eager-steps")
    assert graph_losses == eager_losses
    for name in eager:
        assert torch.equal(stepped[name], eager[name]), name


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("fresh", [True, False])
def test_warm_up_steps_leave_no_trace(config, fresh):
    """What capture's warm-up changes (weights, batch-norm statistics, optimizer moments,
    step counts, random state) is put back, whether the optimizer was fresh or not."""
    def run(warm_up: bool):
        torch.manual_seed(0)
        split = data()
        model = build_model(MODEL, (4,), 3).double()
        optimizer = build_optimizer(model.parameters(), config)
        step = StepGraph(model, optimizer, TASK.loss, split.x, split.y, 16, capture=False)
        if not fresh:
            step.run(torch.arange(16))
        if warm_up:
            with state_put_back(model, optimizer):
                for _ in range(3):
                    step.run(torch.arange(16, 32))
        step.take_total()
        for start in (0, 16, 32):
            step.run(torch.arange(start, start + 16))
        return step.take_total(), model.state_dict()
    plain_total, plain = run(warm_up=False)
    warmed_total, warmed = run(warm_up=True)
    assert torch.equal(warmed_total, plain_total)
    for name in plain:
        assert torch.equal(warmed[name], plain[name]), name


def test_there_is_no_graph_on_the_cpu_or_for_batches_larger_than_the_data():
    split = data()
    model = build_model(MODEL, (4,), 3).double()
    optimizer = build_optimizer(model.parameters(), CONFIGS[-1])
    assert step_graph(model, optimizer, TASK.loss, split.x, split.y, 16) is None
    if torch.cuda.is_available():
        cuda = data(device="cuda", dtype=torch.float32)
        model = build_model(MODEL, (4,), 3).cuda()
        optimizer = build_optimizer(model.parameters(), CONFIGS[-1])
        assert step_graph(model, optimizer, TASK.loss, cuda.x, cuda.y, 64) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_captured_step_trains_as_the_eager_loop_on_cuda(config, dropout):
    """Replays draw the dropout masks the eager loop draws (the same generator offsets,
    in the same order), so both runs agree to float32 rounding, with dropout too."""
    eager_losses, eager = trained(config, device="cuda", dropout=dropout)
    graph_losses, captured = trained(config, device="cuda", use_graph="captured", dropout=dropout)
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-4)
    for name in eager:
        torch.testing.assert_close(captured[name], eager[name], rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_capture_leaves_weights_moments_and_random_state_as_they_were_on_cuda():
    """As when a resumed fold is captured: the optimizer already has state."""
    torch.manual_seed(0)
    split = data(device="cuda", dtype=torch.float32)
    model = build_model(MODEL, (4,), 3).cuda()
    optimizer = build_optimizer(model.parameters(), CONFIGS[3])
    TASK.loss(model(split.x[:16]), split.y[:16]).backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    rng = torch.cuda.get_rng_state()
    assert step_graph(model, optimizer, TASK.loss, split.x, split.y, 16).graph is not None
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for name, value in optimizer.state[next(model.parameters())].items():
        assert torch.equal(value, moments[name]), name


def test_warm_up_leaves_no_trace_on_a_pack():
    """The same for a packed step: PackedOptimizer's moments and per-fold step counts."""
    from workers.packed.model import PackedMLP
    from workers.packed.optimizer import PackedOptimizer
    from workers.packed.training import PackedStep, Stack

    def run(warm_up: bool):
        torch.manual_seed(0)
        models = [build_model(MODEL, (4,), 3).double() for _ in range(3)]
        model = PackedMLP(models)
        optimizer = PackedOptimizer(model.parameters(), CONFIGS[3], 3)
        stack = Stack.of([data(40 + k) for k in range(3)])
        step = PackedStep(model, optimizer, TASK, stack, 16, min_rows=2)
        rows, mask = torch.arange(16).repeat(3, 1), torch.ones(3, 16, dtype=torch.bool)
        step.run(rows, mask)  # not fresh
        if warm_up:
            with state_put_back(model, optimizer):
                for _ in range(3):
                    step.run(rows + 16, mask)
        step.take_totals()
        step.run(rows + 8, mask)
        return step.take_totals(), model.state_dict(), optimizer.t.clone()
    plain, warmed = run(False), run(True)
    assert torch.equal(warmed[0], plain[0]) and torch.equal(warmed[2], plain[2])
    for name in plain[1]:
        assert torch.equal(warmed[1][name], plain[1][name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_captured_packed_and_unpacked_folds_match_eager_cpu_training(float64, optimizer):
    """Whole folds, captured on CUDA (packed and unpacked), against eager CPU training,
    in float64 so that rounding cannot move an early-stopping decision."""
    from tests.workers.helpers import INFO, OPTIMIZERS, blobs, job_for, name_of, plans, run_both
    from workers.fold import run_fold
    from workers.packed.fold import run_packed_folds
    from workers.table import Table
    config = next(o for o in OPTIMIZERS if name_of(o) == optimizer)
    x, y = blobs()
    job = job_for(config, batch_size=16)
    cpu_unpacked, _, _, _ = run_both(job, x, y, plans(len(y)))
    cuda = torch.device("cuda")
    unpacked = [run_fold(Table.of(x, y), INFO, p, job, device=cuda) for p in plans(len(y))]
    packed = run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=cuda)
    for reference, alone, together in zip(cpu_unpacked, unpacked, packed):
        for run in (alone, together):
            assert run.best_epoch == reference.best_epoch
            assert run.test_metrics["loss"] == pytest.approx(reference.test_metrics["loss"], rel=1e-6)

"""Each optimizer against a plain NumPy transcription of the lecture's formulas:
50 steps on a random problem in float64, every parameter within 1e-6 relative error."""
import numpy as np
import pytest
import torch

from tests.workers.helpers import OPTIMIZER_VALUES, as_config
from workers.optimizers import build_optimizer

STEPS = 50


def numpy_reference(name: str, config: dict, w0: list[np.ndarray], gradients) -> list[np.ndarray]:
    """The lecture's update rules, written out with NumPy, one parameter at a time."""
    w = [p.copy() for p in w0]
    V = [np.zeros_like(p) for p in w0]
    S = [np.zeros_like(p) for p in w0]
    lr = config["lr"]
    for t in range(1, STEPS + 1):
        for i, dW in enumerate(gradients(w, t)):
            if name == "sgd":
                w[i] -= lr * dW
            elif name == "momentum":
                V[i] = config["beta"] * V[i] + (1 - config["beta"]) * dW
                w[i] -= lr * V[i]
            elif name == "rmsprop":
                S[i] = config["beta"] * S[i] + (1 - config["beta"]) * dW ** 2
                w[i] -= lr * dW / (np.sqrt(S[i]) + config["eps"])
            elif name == "adam":
                b1, b2 = config["beta1"], config["beta2"]
                V[i] = b1 * V[i] + (1 - b1) * dW
                S[i] = b2 * S[i] + (1 - b2) * dW ** 2
                v, s = V[i], S[i]
                if config["bias_correction"]:
                    v, s = v / (1 - b1 ** t), s / (1 - b2 ** t)
                w[i] -= lr * v / (np.sqrt(s) + config["eps"])
    return w


CONFIGS = OPTIMIZER_VALUES
# With gradients of order 1, ε = 1e-8 is invisible at this tolerance: where ε goes
# (after the root, not under it) is only tested with a large one.
LARGE_EPSILON = [{**config, "eps": 0.1} for config in CONFIGS if "eps" in config]


def config_id(config: dict) -> str:
    return "-".join(str(v) for k, v in config.items() if k in ("name", "bias_correction", "eps"))


@pytest.mark.parametrize("config", CONFIGS + LARGE_EPSILON, ids=config_id)
@pytest.mark.parametrize("seed", [0, 1])
def test_optimizer_matches_the_lecture_formulas(config, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(6, 6))
    targets = rng.normal(size=6)
    w0 = [rng.normal(size=(6,)), rng.normal(size=(3, 2))]

    def gradients(w, t):
        # A random, non-convex-enough problem whose gradient we know exactly:
        # loss = ½‖A·w₀ - b‖² + Σ sin(w₁)·t  (t makes later gradients differ in scale)
        return [A.T @ (A @ w[0] - targets), np.cos(w[1]) * t]

    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in w0]
    optimizer = build_optimizer(params, as_config(config))
    for t in range(1, STEPS + 1):
        with torch.no_grad():
            grads = gradients([p.numpy() for p in params], t)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        optimizer.step()
    expected = numpy_reference(config["name"], config, w0, gradients)
    for got, want in zip(params, expected):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-6, atol=1e-12)


def test_momentum_is_not_torchs_default():
    """torch's SGD momentum would start its buffer at dW and skip (1-β): a different path."""
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    optimizer = build_optimizer([w], as_config({"name": "momentum", "lr": 1.0, "beta": 0.9}))
    w.grad = torch.ones(1, dtype=torch.float64)
    optimizer.step()
    assert w.item() == pytest.approx(1 - 0.1)  # V₁ = 0.9·0 + 0.1·1


@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[3]], ids=["rmsprop", "adam"])
def test_a_state_saved_on_a_gpu_resumes_on_the_cpu(config):
    """A GPU run's optimizer is capturable (its step may be captured in a CUDA graph);
    loading its state on the CPU keeps the CPU's setting, where capturable fails."""
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    w.grad = torch.ones(3, dtype=torch.float64)
    before = build_optimizer([w], as_config(config))
    before.step()
    saved = before.state_dict()
    saved["param_groups"][0]["capturable"] = True  # as a CUDA run saves it
    after = build_optimizer([w], as_config(config))
    after.load_state_dict(saved)
    after.step()
    assert after.param_groups[0]["capturable"] is False

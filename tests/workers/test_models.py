import pytest
import torch

from dataclasses import replace

from workers.config import CNNConfig, MLPConfig
from workers.models import build_model

MLP = MLPConfig((32, 16), batch_norm=True, dropout=0.5)
CNN = CNNConfig((8, 16), (32,), batch_norm=True, dropout=0.5)


@pytest.mark.parametrize("config, shape", [(MLP, (64,)), (CNN, (1, 8, 8))])
def test_models_map_flat_rows_to_outputs(config, shape):
    model = build_model(config, shape, 10)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_cnn_has_convolutions_batch_norm_and_dropout():
    kinds = {type(m).__name__ for m in build_model(CNN, (1, 8, 8), 10).modules()}
    assert {"Conv2d", "BatchNorm2d", "BatchNorm1d", "Dropout", "MaxPool2d"} <= kinds


def test_switches_turn_batch_norm_and_dropout_off():
    plain = replace(MLP, batch_norm=False, dropout=0.0)
    kinds = {type(m).__name__ for m in build_model(plain, (64,), 10).modules()}
    assert not kinds & {"BatchNorm1d", "Dropout"}


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    torch.manual_seed(0)
    model = build_model(MLPConfig((4,), batch_norm=True, dropout=0.0), (3,), 2)
    norm = model[1]
    x = torch.randn(64, 3) * 5 + 2
    model.train()
    pre = model[0](x)
    out = norm(pre)
    # training: normalized by this batch's own mean and (biased) variance, then γ, β
    expected = (pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + norm.eps)
    assert torch.allclose(out, expected * norm.weight + norm.bias, atol=1e-5)
    model.eval()
    expected_eval = (pre - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(norm(pre), expected_eval * norm.weight + norm.bias, atol=1e-5)


def test_dropout_is_random_in_training_and_off_in_evaluation():
    torch.manual_seed(0)
    model = build_model(MLPConfig((256,), batch_norm=False, dropout=0.5), (8,), 3)
    x = torch.randn(4, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    dropout_in = model[1](model[0](x))
    assert torch.equal(model[2](dropout_in), dropout_in)  # eval: no unit switched off, no scaling


def test_dropout_keeps_each_unit_with_probability_one_minus_p_and_rescales():
    from workers.models import Dropout
    torch.manual_seed(0)
    dropout = Dropout(0.2).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    out = dropout(x)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.8, abs=0.002)  # 10⁶ draws: σ ≈ 0.0004
    assert torch.allclose(out[kept], torch.tensor(1 / 0.8))
    out.sum().backward()  # the gradient flows through kept units only, with the same scale
    assert torch.equal(x.grad, out.detach())


def test_dropout_masks_follow_torchs_random_state():
    from workers.models import Dropout
    dropout, x = Dropout(0.5).train(), torch.ones(64, 64)
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)  # so a checkpoint's random state replays the masks

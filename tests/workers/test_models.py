import pytest
import torch

from workers.models import build_model


MLP = {"type": "mlp", "hidden": [32, 16], "batch_norm": True, "dropout": 0.5}
CNN = {"type": "cnn", "channels": [8, 16], "hidden": [32], "batch_norm": True, "dropout": 0.5}


@pytest.mark.parametrize("config, shape", [(MLP, (64,)), (CNN, (1, 8, 8))])
def test_models_map_flat_rows_to_outputs(config, shape):
    model = build_model(config, shape, 10)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_cnn_has_convolutions_batch_norm_and_dropout():
    kinds = {type(m).__name__ for m in build_model(CNN, (1, 8, 8), 10).modules()}
    assert {"Conv2d", "BatchNorm2d", "BatchNorm1d", "Dropout", "MaxPool2d"} <= kinds


def test_switches_turn_batch_norm_and_dropout_off():
    plain = {**MLP, "batch_norm": False, "dropout": 0.0}
    kinds = {type(m).__name__ for m in build_model(plain, (64,), 10).modules()}
    assert not kinds & {"BatchNorm1d", "Dropout"}


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    torch.manual_seed(0)
    model = build_model({"type": "mlp", "hidden": [4], "batch_norm": True, "dropout": 0.0}, (3,), 2)
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
    model = build_model({"type": "mlp", "hidden": [256], "batch_norm": False, "dropout": 0.5}, (8,), 3)
    x = torch.randn(4, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    dropout_in = model[1](model[0](x))
    assert torch.equal(model[2](dropout_in), dropout_in)  # eval: no unit switched off, no scaling

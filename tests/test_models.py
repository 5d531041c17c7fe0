import pytest
import torch
from torch import nn

from hpc_mnist import models
from hpc_mnist.config import ModelConfig


@pytest.mark.parametrize("name, params", [("linear", 7_850), ("mlp", 44_860), ("cnn", 1_199_882)])
def test_shapes_and_parameter_counts(name, params):
    model = models.build(ModelConfig(name=name))
    assert models.parameter_count(model) == params
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)


@pytest.mark.parametrize("name", ["linear", "mlp", "cnn"])
def test_models_return_logits_not_probabilities(name):
    model = models.build(ModelConfig(name=name)).eval()
    out = model(torch.randn(8, 1, 28, 28) * 3)
    # Softmax outputs would be positive and sum to 1 per row; logits need not.
    assert not torch.allclose(out.sum(dim=1), torch.ones(8), atol=1e-3)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())


def test_mlp_is_the_tutorial_layout():
    layers = list(models.build(ModelConfig(name="mlp")))
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert layers[3].p == 0.2


def test_mlp_homework_knobs():
    model = models.build(ModelConfig(name="mlp", hidden=[128, 64], activation="gelu", dropout=0.0))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [128, 64, 10]
    assert sum(isinstance(m, nn.GELU) for m in model) == 2
    assert not any(isinstance(m, nn.Dropout) for m in model)


def test_cnn_layers_match_the_tutorial():
    cnn = models.build(ModelConfig(name="cnn"))
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    dense = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]
    assert [(d.in_features, d.out_features) for d in dense] == [(9216, 128), (128, 10)]
    assert sorted(m.p for m in cnn.modules() if isinstance(m, nn.Dropout)) == [0.25, 0.5]


def test_channels_last_cnn_matches_contiguous():
    torch.manual_seed(0)
    cnn = models.build(ModelConfig(name="cnn")).eval()
    x = torch.randn(4, 1, 28, 28)
    ref = cnn(x)
    cl = cnn.to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)

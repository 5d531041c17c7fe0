import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpc_mnist.core import models
from hpc_mnist.core.config import ModelConfig


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


LEAN = dict(channels=[16, 32], kernels=[5, 3], pools=[2, 2], padding="same", batch_norm=True, fc=0,
            conv_dropout=0.0, fc_dropout=0.0)


def test_default_cnn_is_the_tutorial_and_its_cost():
    cnn = models.build(ModelConfig(name="cnn"))
    assert models.flops_per_sample(cnn) == 6 * (26 * 26 * 32 * 9 + 24 * 24 * 64 * 32 * 9 + 9216 * 128 + 1280)


def test_configurable_cnn_layers_and_shape():
    cnn = models.build(ModelConfig(name="cnn", **LEAN))
    kinds = [type(m).__name__ for m in cnn.features]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] * 2
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.bias is None) for c in convs] == [(16, (5, 5), True), (32, (3, 3), True)]
    assert [(d.in_features, d.out_features) for d in cnn.modules() if isinstance(d, nn.Linear)] == [(32 * 7 * 7, 10)]
    assert not any(isinstance(m, nn.Dropout) for m in cnn.modules())
    assert cnn(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert models.flops_per_sample(cnn) < models.flops_per_sample(models.build(ModelConfig(name="cnn"))) / 5


def test_a_strided_convolution_halves_the_map_without_a_pool():
    """model.strides: a 4x4 stride-2 first convolution (computed on 2x2 pixel blocks) makes the 14x14 map the
    3x3 convolution and 2x2 pool made, at a fraction of their cost; elsewhere a stride-2 convolution is
    PyTorch's own, padded (k - 1) // 2 (PyTorch allows "same" only at stride 1)."""
    cnn = models.build(ModelConfig(name="cnn", **{**LEAN, "kernels": [4, 3], "pools": [1, 2], "strides": [2, 1]}))
    assert [type(m).__name__ for m in cnn.features] == ["BlockConv", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d",
                                                        "BatchNorm2d", "ReLU"]
    assert (cnn.features[0].conv.in_channels, cnn.features[0].conv.kernel_size) == (4, (2, 2))
    assert (cnn.features[3].stride, cnn.features[3].padding) == ((1, 1), "same")
    assert cnn.features[:3](torch.randn(2, 1, 28, 28)).shape == (2, 16, 14, 14)
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert models.flops_per_sample(cnn) == 6 * (14 * 14 * 16 * 16 + 14 * 14 * 32 * 16 * 9 + 32 * 7 * 7 * 10)
    second = models.build(ModelConfig(name="cnn", **{**LEAN, "kernels": [3, 3], "pools": [2, 1], "strides": [1, 2]}))
    conv = second.features[4]
    assert (type(conv).__name__, conv.stride, conv.padding) == ("Conv2d", (2, 2), (1, 1))
    assert second.features[:5](torch.randn(2, 1, 28, 28)).shape == (2, 32, 7, 7)


@pytest.mark.parametrize("kernel", [4, 6])
def test_the_first_strided_convolution_on_pixel_blocks_is_the_same_function(kernel):
    """BlockConv (a k/2 x k/2 convolution of 2x2 pixel blocks) computes the k x k stride-2 convolution whose
    weight [o, 0, 2p+r, 2q+s] is its [o, 2r+s, p, q], in both memory formats."""
    torch.manual_seed(0)
    block = models.BlockConv(8, kernel, bias=True)
    inner = block.conv.weight.detach()
    w = torch.empty(8, 1, kernel, kernel)
    for r, s, p, q in itertools.product(range(2), range(2), range(kernel // 2), range(kernel // 2)):
        w[:, 0, 2 * p + r, 2 * q + s] = inner[:, 2 * r + s, p, q]
    x = torch.randn(3, 1, 28, 28)
    expected = F.conv2d(x, w, block.conv.bias, stride=2, padding=kernel // 2 - 1)
    assert expected.shape == (3, 8, 14, 14)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    cl = block.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, expected, rtol=1e-5, atol=1e-5)


def test_label_smoothing_is_cross_entropys():
    logits, targets = torch.randn(6, 10), torch.randint(0, 10, (6,))
    smoothed = models.loss_function(ModelConfig(label_smoothing=0.1))
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(smoothed(logits, targets, reduction=reduction),
                                   F.cross_entropy(logits, targets, label_smoothing=0.1, reduction=reduction))
    assert models.loss_function(ModelConfig()) is F.cross_entropy
    assert not torch.allclose(smoothed(logits, targets), F.cross_entropy(logits, targets))
    from hpc_mnist.core import config
    from hpc_mnist.errors import UserError

    with pytest.raises(UserError, match="label_smoothing"):
        config.build(None, ["model.label_smoothing=1.0"])


def test_cnn_lists_must_agree_and_fit_the_digit():
    from hpc_mnist.core import config
    from hpc_mnist.errors import UserError

    with pytest.raises(UserError, match="one entry per convolution"):
        config.build(None, ["model.name=cnn", "model.channels=[8,16,32]"])
    with pytest.raises(UserError, match="one entry per convolution"):
        config.build(None, ["model.name=cnn", "model.strides=[2]"])
    with pytest.raises(UserError, match="convolution 2 .*stride 4.* leaves no feature map"):
        config.build(None, ["model.name=cnn", "model.pools=[2,2]", "model.strides=[4,4]"])
    with pytest.raises(UserError, match="convolution 3 .* leaves no feature map"):
        config.build(None, ["model.name=cnn", "model.channels=[8,8,8]", "model.kernels=[5,5,5]", "model.pools=[2,2,2]"])
    config.build(None, ["model.name=cnn", "model.channels=[8,8,8]", "model.kernels=[5,5,5]", "model.pools=[2,2,2]",
                        "model.padding=same"])


def test_double_softmax_only_behind_its_flag():
    torch.manual_seed(0)
    plain = models.build(ModelConfig(name="cnn"))
    torch.manual_seed(0)
    flagged = models.build(ModelConfig(name="cnn", softmax_before_loss=True)).eval()
    x = torch.randn(4, 1, 28, 28)
    probs = flagged(x)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(probs, torch.softmax(plain.eval()(x), dim=1))
    # Cross-entropy on probabilities: the loss can never fall below log(10) - log(1 + 9/e) ~ 1.46.
    perfect = torch.nn.functional.cross_entropy(torch.eye(10), torch.arange(10))
    assert perfect.item() > 1.46


def test_normal_init_draws_every_parameter_from_a_unit_normal():
    torch.manual_seed(0)
    model = models.build(ModelConfig(name="mlp", hidden=[500], dropout=0.0, init="normal"))
    weights = torch.cat([p.flatten() for p in model.parameters()])
    assert abs(weights.mean().item()) < 0.01 and abs(weights.std().item() - 1) < 0.01


def test_glorot_init_is_keras_dense_default():
    """Glorot-uniform weights (bound sqrt(6 / (fan_in + fan_out))) and zero biases, as Keras's Dense layers."""
    torch.manual_seed(0)
    model = models.build(ModelConfig(name="mlp", hidden=[256, 128], activation="sigmoid", dropout=0.0,
                                     init="glorot"))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(layer.bias) == 0


def test_fastai_lesson_loss_is_its_sigmoid_distance():
    logits = torch.tensor([[0.0] * 10, [8.0] + [-8.0] * 9, [-8.0] + [8.0] * 9])
    targets = torch.tensor([3, 0, 0])
    loss = models.sigmoid_one_vs_rest(logits, targets, reduction="none")
    # The lesson's own formula, on one-hot targets: torch.where(targets == 1, 1 - p, p).mean() per sample.
    p = torch.sigmoid(logits)
    onehot = torch.nn.functional.one_hot(targets, 10)
    expected = torch.where(onehot == 1, 1 - p, p).mean(dim=1)
    torch.testing.assert_close(models.sigmoid_one_vs_rest(logits, targets), expected.mean())
    torch.testing.assert_close(models.sigmoid_one_vs_rest(logits, targets, reduction="sum"), expected.sum())
    assert loss.shape == (3,) and loss[0].item() == 0.5 and loss[1].item() < 1e-3 and loss[2].item() > 0.999
    # Bounded by 1 however wrong the logits: no log, so large lr values do not blow it up.
    assert models.sigmoid_one_vs_rest(torch.full((2, 10), 1e6), torch.tensor([0, 1])).item() <= 1.0


def test_loss_setting_picks_the_loss():
    assert models.loss_function(ModelConfig()) is torch.nn.functional.cross_entropy
    assert models.loss_function(ModelConfig(loss="sigmoid_one_vs_rest")) is models.sigmoid_one_vs_rest

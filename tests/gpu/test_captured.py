"""The GPU benchmark's step (bench/captured.py): as it is, it trains exactly as the trainer's step (with
deterministic algorithms on CUDA, as two runs of the trainer would need); captured as a
CUDA graph it trains as that step does; through torch.compile it trains. Its refusals are one line each."""

import pytest
import torch

from helpers.devices import DEVICES, ON_CUDA, nondeterministic, one_rank, small_config
from hpc_mnist.bench.captured import CapturedLoop
from hpc_mnist.errors import UserError

CNN = ["model.name=cnn", "model.channels=[8,16]", "model.fc=32", "optim.name=adam", "optim.lr=1e-3",
       "optim.scheduler=none", "train.batch_size=32"]
STEPS = 6


def after_steps(loop, steps: int = STEPS) -> list[torch.Tensor]:
    loop.steps(steps)()
    return [p.detach().clone() for p in loop.model.parameters()]


def trainers_weights(device: str, tmp_path, *overrides: str) -> list[torch.Tensor]:
    """The trainer's own step over the same first full batches."""
    loop = CapturedLoop(small_config(device, *CNN, *overrides), one_rank(device), tmp_path)
    t = loop.trainer
    t.train_on(t.order(1)[:STEPS])
    return [p.detach().clone() for p in t.model.parameters()]


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_eager_step_is_the_trainers_step(device, amp, tmp_path, deterministic):
    overrides = (f"train.precision={amp}",)
    loop = CapturedLoop(small_config(device, *CNN, *overrides), one_rank(device), tmp_path, "eager")
    ours = after_steps(loop)
    assert loop.steps_done == STEPS and torch.isfinite(loop.loss)
    theirs = trainers_weights(device, tmp_path, *overrides)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)), nondeterministic(deterministic)


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("device", ON_CUDA)
def test_the_captured_graph_trains_as_the_eager_step(device, amp, tmp_path):
    """Three eager warm-up steps on a side stream, the capture, then replays: the same weights as eager steps
    (capturable Adam computes its bias corrections on the GPU: equal to rounding)."""
    cfg = small_config("cuda", *CNN, f"train.precision={amp}", "model.conv_dropout=0", "model.fc_dropout=0")
    graphed = CapturedLoop(cfg, one_rank("cuda"), tmp_path, "graphs")
    ours = after_steps(graphed, 10)
    assert graphed.graph is not None and graphed.steps_done == 10
    eager = after_steps(CapturedLoop(cfg, one_rank("cuda"), tmp_path, "eager"), 10)
    tolerance = {"fp32": 1e-4, "bf16": 2e-2}[amp]
    for a, b in zip(ours, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    before = graphed.loss.item()
    graphed.steps(40)()  # replays keep training: the loss falls
    assert graphed.loss.item() < before


@pytest.mark.parametrize("mode", ["compile", "compile+graphs"])
@pytest.mark.parametrize("device", ON_CUDA)
def test_the_compiled_step_trains(device, mode, tmp_path):
    loop = CapturedLoop(small_config("cuda", *CNN, "train.precision=bf16"), one_rank("cuda"), tmp_path, mode)
    try:
        loop.steps(3)()
    except Exception as e:  # no C compiler (or Triton) on the machine: say so, as the benchmark records it
        if not any(word in str(e).lower() for word in ("compiler", "triton", "cc", "not found")):
            raise
        pytest.skip(f"torch.compile cannot build here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    first = loop.loss.item()
    loop.steps(40)()
    assert torch.isfinite(loop.loss) and loop.loss.item() < first


@pytest.mark.parametrize("device", DEVICES)
def test_what_a_graph_cannot_hold_is_refused_in_one_line(device, tmp_path):
    if device == "cpu":
        with pytest.raises(UserError, match="CUDA graphs need a CUDA device, not cpu"):
            CapturedLoop(small_config("cpu", *CNN), one_rank("cpu"), tmp_path, "graphs")
        return
    with pytest.raises(UserError, match="fp16's GradScaler"):
        CapturedLoop(small_config(device, *CNN, "train.precision=fp16"), one_rank(device), tmp_path, "graphs")
    with pytest.raises(UserError, match="data on the GPU"):
        CapturedLoop(small_config(device, *CNN, "data.resident=false"), one_rank(device), tmp_path, "graphs")

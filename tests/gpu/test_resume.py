"""Stopped mid-epoch on the device and continued by the same command, a run ends bit for bit as the uninterrupted
run (metrics, weights, test figures): the device's RNG state, the GradScaler and the partial sums travel in the
checkpoint. The MLP's matrix products are deterministic on CUDA as they are (cuBLAS on one stream, its workspace
fixed by CUBLAS_WORKSPACE_CONFIG, which tests/gpu/conftest.py sets before any CUDA work); the CNN's convolutions
need deterministic algorithms, which the last test turns on as a user would (torch.use_deterministic_algorithms)."""

import pytest

from helpers.commands import QUICK_MLP, SHORT_CNN
from helpers.devices import DEVICES, DEVICES_SLOW_ON_CPU, nondeterministic
from helpers.runs import assert_same_run, status, stop_file


def stop_and_continue(train_here, args: list[str], tmp_path, why: str = "") -> None:
    """The straight run, then one stopped at its first check (step 16 of epoch 1) and continued; both compared."""
    assert train_here([*args, "log.name=straight"]).code == 0
    stopped = train_here([*args, "log.name=r"], env=stop_file(tmp_path))
    assert stopped.code == 75 and status(tmp_path / "r")["step"] == 16, stopped.err[-2000:]
    again = train_here([*args, "log.name=r"])
    assert again.code == 0 and "continuing" in again.out.splitlines()[0], again.err[-2000:]
    try:
        assert_same_run(tmp_path / "straight", tmp_path / "r")
    except AssertionError as e:
        raise AssertionError(f"{e}; {why}" if why else e) from None


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_stopped_mlp_continues_bit_exact_on_the_device(train_here, tmp_path, device, amp):
    stop_and_continue(train_here, [*QUICK_MLP, f"train.device={device}", f"train.precision={amp}",
                                   f"log.dir={tmp_path}"], tmp_path)


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_a_stopped_fp16_mlp_continues_bit_exact_with_its_loss_scale(train_here, tmp_path, device):
    stop_and_continue(train_here, [*QUICK_MLP, f"train.device={device}", "train.precision=fp16",
                                   f"log.dir={tmp_path}"], tmp_path)


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_a_stopped_cnn_continues_bit_exact_with_deterministic_algorithms(train_here, tmp_path, device,
                                                                         deterministic):
    stop_and_continue(train_here, [*SHORT_CNN, "train.epochs=1", "train.batch_size=16", f"train.device={device}",
                                   "train.precision=bf16", f"log.dir={tmp_path}"], tmp_path,
                      f"operations without a deterministic kernel: {nondeterministic(deterministic)}")

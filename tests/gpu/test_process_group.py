"""The device's own collective library with one GPU: a one-rank process group (NCCL on CUDA, gloo on a CPU) runs
the collectives the trainer and the doctor use, and DDP with the trainer's timed all-reduce hook gives the plain
model's gradients; torchrun with one worker trains on the GPU. (NCCL refuses two ranks on one GPU: several ranks
need several GPUs, and one GPU is no scaling study.)"""

import json
import subprocess

import pytest
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from helpers.commands import torchrun
from helpers.devices import DEVICES, one_rank, small_config
from helpers.processes import REPO, clean_env
from hpc_mnist.core import models, precision
from hpc_mnist.doctor.allreduce import timed_allreduce
from hpc_mnist.runtime import devices, dist, timing


@pytest.fixture
def one_rank_group(request, tmp_path):
    """A process group of this process alone, on the device's backend; destroyed after the test."""
    device = one_rank(request.param).device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # object collectives and NCCL use the current device
    backend = devices.backend_for("auto", device)
    tdist.init_process_group(backend, store=tdist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield device, backend
    tdist.destroy_process_group()


@pytest.mark.parametrize("one_rank_group", DEVICES, indirect=True)
def test_the_trainers_collectives_run_on_the_devices_backend(one_rank_group):
    device, backend = one_rank_group
    assert tdist.get_backend() == backend
    totals = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64, device=device)  # evaluate's sums: float64
    assert dist.all_reduce_sum(totals).tolist() == [1.5, 2.0, 3.0]
    assert dist.any_rank(torch.tensor([0, 15, 0, 1], device=device)).tolist() == [0, 15, 0, 1]  # the stop flags
    assert dist.all_gather_object({"host": "h"}) == [{"host": "h"}]
    assert dist.broadcast_object(("x", 2)) == ("x", 2)
    assert dist.on_main(lambda: 7) == 7
    result = timed_allreduce(device, 1, 0)  # the doctor's check: its sum, and a time
    assert result["correct"] and result["seconds"] > 0


@pytest.mark.parametrize("one_rank_group", DEVICES, indirect=True)
def test_ddp_with_the_timed_hook_gives_the_plain_models_gradients_and_phase_times(one_rank_group):
    device, _ = one_rank_group
    torch.manual_seed(0)
    plain = models.build(small_config("cpu").model).to(device)
    twin = models.build(small_config("cpu").model).to(device)
    twin.load_state_dict(plain.state_dict())
    timer = timing.StepTimer(device)
    ddp = DistributedDataParallel(twin, device_ids=None if device.index is None else [device.index],
                                  gradient_as_bucket_view=True)
    ddp.register_comm_hook(None, timing.timed_allreduce_hook(timer))
    x, y = torch.randn(32, 1, 28, 28, device=device), torch.randint(0, 10, (32,), device=device)
    plain.eval()  # no dropout: the two must agree exactly
    ddp.eval()
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    timer.start()
    loss = torch.nn.functional.cross_entropy(ddp(x), y)
    timer.mark("forward")
    loss.backward()
    timer.mark("wait")
    timer.mark("optimizer")
    for a, b in zip(plain.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    phases = timer.phase_seconds()  # on CUDA from events, the backward's end from the hook's
    assert phases["forward"] > 0 and phases["backward"] > 0 and all(v >= 0 for v in phases.values())


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_torchrun_with_one_worker_trains_on_the_device(tmp_path, device):
    result = subprocess.run([*torchrun(1), "-m", "hpc_mnist.train", "--config", "configs/smoke.yaml",
                             f"train.device={device}", "log.console=plain", f"log.dir={tmp_path}", "log.name=one"],
                            capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert (summary["status"], summary["launcher"], summary["world_size"]) == ("completed", "torchrun", 1)
    assert summary["device"] == ("cuda:0" if device == "cuda" else "cpu")
    expected = precision.resolve("auto", torch.device(device, 0) if device == "cuda" else torch.device(device), "mlp")
    assert summary["precision"] == expected and summary["test_acc"] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_the_doctor_on_the_device_names_its_gpu_and_is_healthy(tmp_path, device):
    out = tmp_path / "doctor.json"
    result = subprocess.run([*torchrun(1), "-m", "hpc_mnist.doctor", "--device", device, "--json", str(out)],
                            capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    (rank,) = report["ranks"]
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert report["healthy"] and report["backend"] == devices.backend_for("auto", torch.device(device))
    if device == "cuda":
        assert rank["device"] == "cuda:0" and rank["gpu_index"] == 0 and rank["gpus_on_host"] >= 1
        assert rank["gpu_uuid"] and checks["one GPU per rank"] == "ok"
    else:
        assert rank["device"] == "cpu" and rank["gpu_index"] is None and checks["one GPU per rank"] == "skip"

"""The devices a test body runs on: the CPU always (so the body is proven in the ordinary tiers), CUDA where a GPU is
(marked `gpu`, skipped with the reason elsewhere); and a Trainer built on one in this process."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from hpc_mnist import resources
from hpc_mnist.core import config
from hpc_mnist.runtime import dist
from hpc_mnist.training.trainer import Trainer

NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False): run tests/gpu on a GPU machine"
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
ON_CUDA = [pytest.param("cuda", marks=needs_cuda)]  # a test about the GPU alone
# The same, where the CPU run takes seconds (fp16 is emulated there): in the slow tier on the CPU.
DEVICES_SLOW_ON_CPU = [pytest.param("cpu", marks=pytest.mark.slow), DEVICES[1]]


def one_rank(device: str) -> dist.Runtime:
    """A single process's runtime on `device`, without dist.setup's thread settings."""
    return dist.Runtime(0, 0, 1, 1, "none", torch.device(device, 0) if device == "cuda" else torch.device(device),
                        None, 1, ("localhost",))


def small_config(device: str, *overrides: str) -> config.Config:
    """The smoke preset's synthetic digits (1,000 training), on `device`, with `overrides`."""
    return config.build(str(resources.folder("configs") / "smoke.yaml"), [
        f"train.device={device}", "data.synthetic_train=1000", "data.synthetic_test=200", "log.tensorboard=false",
        *overrides])


def trainer(device: str, tmp_path: Path, *overrides: str) -> Trainer:
    return Trainer(small_config(device, *overrides), one_rank(device), tmp_path)


def nondeterministic(seen: list[warnings.WarningMessage]) -> str:
    """The operations that warned they have no deterministic kernel, for an assertion's message."""
    return "; ".join(sorted({str(w.message).split(" does not have")[0] for w in seen
                             if "deterministic" in str(w.message)})) or "none warned"

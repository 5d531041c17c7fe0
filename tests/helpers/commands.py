"""Command lines the tests start: the launchers (torchrun, MPICH's mpiexec) and the trainer's argument lists."""

from __future__ import annotations

import os
import shutil
import sys

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")

# The smoke preset as job logs show it (a plain console), in fp32 whatever the CPU.
SMOKE = ["--config", "configs/smoke.yaml", "log.console=plain", "train.precision=fp32"]

# Small but not instant: a CNN epoch takes ~1-2 s here, so signals land mid-run (the stop and resume tests).
BASE = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false", "train.precision=fp32",
        "data.synthetic_train=1500", "data.synthetic_test=200", "train.batch_size=32", "model.name=cnn",
        "optim.name=adam", "optim.lr=1e-3", "train.eval_batch_size=256"]

# The stop and resume tests' runs (tests/stops/), on BASE's synthetic digits. An MLP (milliseconds a step) on 1,200
# train samples: 38 steps of 32 per epoch, the ranks' checks at steps 16, 32 and 38.
QUICK_MLP = [*BASE, "model.name=mlp", "train.epochs=2"]
# A small CNN, about 0.1 s an epoch here ...
SMALL_CNN = [*BASE, "model.channels=[8,16]", "model.fc=32"]
# ... for 2 epochs of 25 steps, where no signal has to land mid-run (stop files and deadlines stop at a known step
# whatever the machine's speed) ...
SHORT_CNN = [*SMALL_CNN, "data.synthetic_train=1000", "train.epochs=2"]
# ... for LONG_EPOCHS, where a signal sent after the first epoch's row lands seconds before the run could end, on
# a machine several times faster or slower than this one ...
LONG_EPOCHS = 24
# ... and for 200 epochs: a kill after the second epoch's row lands long before the run could end.
ENDLESS_CNN = [*SMALL_CNN, "train.epochs=200", "dist.timeout=120"]


def torchrun(n: int = 2, *options: str) -> list[str]:
    """`torchrun --standalone` with n workers on this machine (and `options`), started as this Python's module:
    the torchrun of the environment under test, whatever PATH says."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *options]


def ranks(n: int) -> list[str]:
    """A launch of n ranks where the launcher is not what the test is about: MPICH's mpiexec, a small program
    that starts in milliseconds (torchrun's agent imports torch first: 2.3-2.6 s more per launch here), else
    torchrun."""
    if MPIEXEC:
        return [MPIEXEC, "-n", str(n), sys.executable]
    return torchrun(n)

"""What a step reports besides training: phase timing, the hang watchdog's heartbeat, the profiler's step and
the tests' fault hooks. The Trainer calls it at the step's phase boundaries; it keeps the step plain."""

from __future__ import annotations

import torch

from hpc_mnist.runtime import hang, timing


class StepMonitor:
    """What a step reports besides training: phase timing, the hang watchdog's heartbeat, the profiler's step
    and the tests' fault hooks (HPC_MNIST_TEST_STALL, HPC_MNIST_TEST_NAN)."""

    def __init__(self, timer: timing.StepTimer, watchdog: hang.Watchdog, rank: int):
        self.timer, self.watchdog, self.rank = timer, watchdog, rank
        self.profiler: torch.profiler.profile | None = None
        self.epoch = self.step = 0

    def begin(self, step: int) -> None:
        self.step = step
        self.watchdog.beat(self.epoch, step)
        hang.maybe_stall(self.rank, step)
        self.timer.start()

    def mark(self, phase: str) -> None:
        self.timer.mark(phase)

    def between_steps(self, phase: str, fault: str) -> None:
        """Work outside the steps (evaluation, checkpoints, gathering timings): a hang there is named too."""
        self.watchdog.doing(phase)
        hang.maybe_stall(self.rank, fault)

    def forward_done(self, loss: torch.Tensor) -> torch.Tensor:
        """The forward pass ended; the tests' non-finite fault (HPC_MNIST_TEST_NAN) replaces the loss."""
        self.timer.mark("forward")
        return hang.maybe_poison(self.rank, self.epoch, self.step, loss)

    def backward_done(self) -> None:
        """Backward compute ended at the last gradient bucket; the rest of the phase waited on peers."""
        self.watchdog.beat(self.epoch, self.step)  # DDP's all-reduce returned: alive again
        self.timer.mark("wait")

    def end(self) -> None:
        self.timer.mark("optimizer")
        if self.profiler is not None:
            self.profiler.step()

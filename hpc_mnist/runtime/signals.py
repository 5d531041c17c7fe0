"""Stop requests: SIGTERM (scancel, walltime, preemption), SIGINT (Ctrl-C), SIGUSR1 (a scheduler's warning).

The handler only records the first request; the training loop polls it, agrees with the other ranks (a
signal may reach only one of them), stops at the same step everywhere and writes a checkpoint. Copies
that arrive while that stop is under way are absorbed: a scheduler signals every task and launchers
forward the signal again (srun, torchrun's agent turning Ctrl-C into SIGTERM), and none of those copies
may cost the checkpoint. Only a deliberate second Ctrl-C, some seconds after the first, aborts at once;
checkpoints are written atomically, so the last one stays whole.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from hpc_mnist.errors import EXIT_ABORTED

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
ABORT_AFTER = 3.0  # seconds: a Ctrl-C this long after the first request is deliberate, not a copy


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal this process received
        self.agreed = 0  # the signal all ranks agreed to stop for (it may have reached another rank)
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
        elif signum == signal.SIGINT and now - self._first_at >= ABORT_AFTER:
            print("hpc_mnist: second Ctrl-C: stopping now; the last checkpoint written is intact", file=sys.stderr,
                  flush=True)
            os._exit(EXIT_ABORTED)

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.signum is not None:
            # Stopped: copies that arrive while the process winds down must not turn exit 75 into 143. Ignored,
            # not handled: Python restores the default action of its own handlers when the interpreter exits.
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def name(self) -> str | None:
        return signal.Signals(self.agreed).name if self.agreed else None

"""Stop requests from the scheduler: SIGTERM (walltime, preemption), SIGINT (Ctrl-C), SIGUSR1 (Slurm's
early warning from `--signal=B:USR1@120`).

The handler only records the first signal; the training loop polls it, agrees with the other ranks
(a signal may reach only one of them) and stops at the same step everywhere, after a checkpoint. A
second signal ends the process at once: checkpoints are written atomically, so the last one stays whole.
"""

from __future__ import annotations

import os
import signal

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early with a checkpoint written; run again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal this process received
        self.agreed = 0  # the signal all ranks agreed to stop for (it may have reached another rank)
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def reason(self) -> str:
        return signal.Signals(self.agreed).name if self.agreed else "time limit"

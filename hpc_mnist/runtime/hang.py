"""Hang diagnostics: when a collective stalls, say which ranks did not arrive and what every rank was doing.

Users' commonest distributed failure is a job that sits in a collective until a 10-30 minute timeout
and then dies with no clue. Here every rank publishes its position (epoch, step) in the rendezvous store
when it stops making progress; a watchdog thread per rank writes all Python stacks (faulthandler) into the run
directory once the rank has made no progress for half the collective timeout; and when a collective
times out, rank 0's one-line error names the ranks that were behind, with their hosts and positions.
"""

from __future__ import annotations

import faulthandler
import os
import re
import threading
import time
from pathlib import Path

from hpc_mnist.runtime import dist

COLLECTIVE = "waiting in a collective"
# A rank alive but making no progress (a hung kernel or driver) outside a collective: a phase may take this many
# times the longest it has taken in this process (its first time, a warm-up or compilation, only shows it is
# known) before the rank is stuck. A checkpoint's write is not judged: a slow file system is no fault.
STUCK_FACTOR = 10.0
JUDGED = ("computing", "evaluating")
# Test-only fault: "RANK:STEP" makes that rank stop responding at that training step; "RANK:evaluate",
# "RANK:checkpoint" or "RANK:rank_times" in that work between steps.
STALL_VAR = "HPC_MNIST_TEST_STALL"
NAN_VAR = "HPC_MNIST_TEST_NAN"  # test-only fault: "RANK:EPOCH:STEP" makes that rank's loss NaN at that step


class Watchdog:
    """Beats from the training loop; silence for `after` seconds dumps this rank's stacks once and leaves its
    position, and whether it was waiting in a collective, in the rendezvous store for rank 0 to read."""

    def __init__(self, run_dir: Path, rank: int, after: float):
        self.path, self.rank, self.after = run_dir / f"hang-rank{rank}.txt", rank, after
        self.last = time.monotonic()
        self.where = (0, 0, "outside the training steps")  # (epoch, step, phase)
        self.longest: dict[str, float] = {}  # a judged phase's longest stretch without progress, after its first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hpc_mnist-watchdog", daemon=True)

    def _progress(self, where: tuple[int, int, str]) -> None:
        now, phase = time.monotonic(), self.where[2]
        if phase in JUDGED:
            seen = self.longest.get(phase)
            self.longest[phase] = 0.0 if seen is None else max(seen, now - self.last)
        self.last, self.where = now, where

    def beat(self, epoch: int, step: int, phase: str = "computing") -> None:
        self._progress((epoch, step, phase))

    def doing(self, phase: str) -> None:
        """Work between training steps (evaluating, writing a checkpoint): alive, at the last step's position."""
        self._progress((*self.where[:2], phase))

    def in_collective(self) -> None:
        """Called as this rank enters a collective: if it then hangs, it is waiting for others."""
        self._progress((*self.where[:2], COLLECTIVE))

    def stuck(self, floor: float) -> float | None:
        """Seconds without progress, where this rank's own work (not a collective) has stood still for longer than
        its allowance: STUCK_FACTOR times the phase's longest measured stretch, and at least `floor`."""
        longest = self.longest.get(self.where[2])
        silent = time.monotonic() - self.last
        return silent if longest is not None and silent >= max(floor, STUCK_FACTOR * longest) else None

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.after / 4)):
            silent = time.monotonic() - self.last
            if silent >= self.after:
                epoch, step, phase = self.where
                self.dump(f"no progress for {silent:.0f} s")
                store = dist.store()
                if store is not None:
                    store.set(f"hpc_mnist/hang/{self.rank}", f"{epoch} {step} {phase}")
                return

    def dump(self, why: str) -> None:
        """This rank's Python stacks, all threads, under one line saying why and where it was."""
        with open(self.path, "w") as f:
            f.write(f"rank {self.rank}: {why}, at {self.describe()}\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)

    def describe(self) -> str:
        """Where this rank is, as a quiet rank's verdict names it: 'epoch E step S, phase'."""
        epoch, step, phase = self.where
        return f"epoch {epoch} step {step}, {phase}"

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def is_timeout(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and re.search(r"time[d ]?\s*out", str(error), re.I) is not None


def who_is_behind(world_size: int, hosts: list[str]) -> str:
    """The ranks that were not waiting in the collective when it timed out (or never reported), by host."""
    store = dist.store()
    reports: dict[int, tuple[int, int, str] | None] = {}
    try:
        for rank in range(world_size):
            key = f"hpc_mnist/hang/{rank}"
            if store.check([key]):
                epoch, step, phase = store.get(key).decode().split(" ", 2)
                reports[rank] = (int(epoch), int(step), phase)
            else:
                reports[rank] = None
    except Exception:  # the store went down with its host: nothing can be named
        return "the rendezvous store cannot be read to name the missing ranks"
    furthest = max(((r[0], r[1]) for r in reports.values() if r), default=(0, 0))
    culprits = [rank for rank, r in reports.items() if r is None or r[2] != COLLECTIVE or (r[0], r[1]) < furthest]
    if not culprits:
        return f"every rank was waiting in the same collective (epoch {furthest[0]} step {furthest[1]})"

    def where(rank: int) -> str:
        r = reports[rank]
        return f"rank {rank} on {hosts[rank]} (" + (f"epoch {r[0]} step {r[1]}, {r[2]}" if r else "no report") + ")"

    return f"{', '.join(where(r) for r in culprits)} did not arrive"


def maybe_stall(rank: int, where: int | str) -> None:
    """The test-only fault: hang this rank as a dead GPU or a stuck file system would."""
    fault = os.environ.get(STALL_VAR)
    if fault and fault == f"{rank}:{where}":
        time.sleep(3600)


def maybe_poison(rank: int, epoch: int, step: int, loss):
    """The test-only non-finite fault: one rank's loss turns NaN, as an overflow on one shard would."""
    if os.environ.get(NAN_VAR) == f"{rank}:{epoch}:{step}":
        return loss * float("nan")
    return loss

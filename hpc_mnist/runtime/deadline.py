"""When training must stop: known from the start, so that start-up costs count and the stop is planned.

Sources, earliest wins: `train.time_limit` seconds after this process started (not after imports and
data loading), `train.deadline` (unix time), and the batch job's end time read from the scheduler
(Slurm: squeue/scontrol; PBS: qstat start time + walltime). Absolute end times are met early by
`train.deadline_margin`, enough to write a checkpoint before the scheduler's kill.
A scheduler's warning signal stays a fallback: a batch shell that gets one touches $HPC_MNIST_STOP_FILE; a
user's `hpc-mnist stop` writes the run's stop file too (stopfile.py).
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_mnist.core.config import TrainConfig
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import pbs, shell, status, stopfile

STOP_FILE_VAR = stopfile.VAR


def process_start_time() -> float:
    """Unix time at which this process started (from /proc where there is one)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _run(cmd: list[str]) -> str:
    """The client's answer, or nothing where it has none (no such job, no client here): the caller falls back."""
    try:
        return shell.output(cmd, timeout=15)
    except UserError:
        return ""


def _local_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def slurm_end_time(job_id: str) -> float | None:
    """The job's EndTime (Slurm prints local time, e.g. 2026-11-23T12:30:00)."""
    end = _local_time(_run(["squeue", "-h", "-j", job_id, "-o", "%e"]))
    if end is None:
        match = re.search(r"EndTime=(\S+)", _run(["scontrol", "show", "job", job_id]))
        end = _local_time(match[1]) if match else None
    return end


def pbs_end_time(job_id: str) -> float | None:
    """Start time + walltime from `qstat -f -F json`: the one PBS deadline (the job scripts set no other)."""
    try:
        return pbs.end_time(pbs.job_info(job_id))
    except (UserError, ValueError):
        return None


def job_end_time() -> tuple[float | None, str]:
    scheduler, job = status.this_job()
    if scheduler == "slurm":
        return slurm_end_time(job), "the Slurm job's end time"
    if scheduler == "pbs":
        return pbs_end_time(job), "the PBS job's walltime"
    return None, ""


@dataclass(frozen=True)
class Deadline:
    """The unix time at which to stop with a checkpoint (None: no deadline), what set it, and the stop file whose
    existence means the deadline has passed (default $HPC_MNIST_STOP_FILE)."""

    stop_at: float | None
    source: str = ""
    stop_file: str = ""

    def reached(self) -> bool:
        if self.stop_at is not None and time.time() >= self.stop_at:
            return True
        stop_file = self.stop_file or os.environ.get(STOP_FILE_VAR)
        return bool(stop_file) and os.path.exists(stop_file)

    def describe(self) -> str:
        if self.stop_at is None:
            return "none"
        at = datetime.datetime.fromtimestamp(self.stop_at).strftime("%Y-%m-%d %H:%M:%S")
        left = self.stop_at - time.time()
        if left < 0:  # start-up outlasted the limit: say so rather than "in -6 s"
            return f"{at} ({self.source}, passed {-left:,.0f} s ago: the run stops at its first check)"
        return f"{at} ({self.source}, in {left:,.0f} s)"


def resolve(cfg: TrainConfig, ask_scheduler: bool = True, stop_file: str = "") -> Deadline:
    """The earliest of the configured limits and the job's end time (less the margin), and the stop file."""
    candidates = []
    if cfg.time_limit:
        candidates.append((process_start_time() + cfg.time_limit, f"train.time_limit={cfg.time_limit:g}"))
    if cfg.deadline:
        candidates.append((cfg.deadline - cfg.deadline_margin, "train.deadline less train.deadline_margin"))
    if ask_scheduler and cfg.job_deadline:
        end, source = job_end_time()
        if end is not None:
            candidates.append((end - cfg.deadline_margin, f"{source} less train.deadline_margin"))
    if not candidates:
        return Deadline(None, stop_file=stop_file)
    return Deadline(*min(candidates), stop_file=stop_file)

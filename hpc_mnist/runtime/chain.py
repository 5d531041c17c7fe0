"""Whether a run's chain of launches makes progress: a chain (requeues, PBS successors, later relaunches) whose
launches keep ending without a new checkpoint is stopped (MAX_FRUITLESS in launch/jobs.sh, default 3), so a
broken input or node cannot eat an allocation or a queue.

    <run_dir>/chain.json   {"fruitless": N, "checkpoint": "<the newest checkpoint after the last launch>",
                            "job": "<the last launch's job id>", "status_time": <the time of the status counted>}

Standard library only (and hpc_mnist.errors): the job scripts run this without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import status

NAME = "chain.json"  # in the run directory


def _record(run_dir: str | os.PathLike, job: str, link: int) -> dict:
    """What this job's chain has recorded so far: for a new chain (`link` 0, the job's place in its chain: a
    user's submission, unless this very job launched before) only the checkpoint it starts from."""
    try:
        before = json.loads((Path(run_dir) / NAME).read_text())
    except (OSError, ValueError):
        before = {}  # none yet, or damaged: a damaged record never stops a run by itself
    if not isinstance(before, dict):
        before = {}
    if link == 0 and before.get("job") != job:
        before = {"checkpoint": before.get("checkpoint")}
    return before


def fruitless(run_dir: str | os.PathLike, job: str, link: int) -> int:
    """The launches in a row of this job's chain that ended without a new checkpoint."""
    return int(_record(run_dir, job, link).get("fruitless") or 0)


def counted(run_dir: str | os.PathLike) -> float | None:
    """The `time` of the last status counted: a run directory's status.json with another time ended a launch
    whose job script never got to count it (Slurm's own requeue after a node failure kills the job script)."""
    return _record(run_dir, "", 1).get("status_time")


def count(run_dir: str | os.PathLike, checkpoint: str | None, job: str, link: int,
          status_time: float | None = None) -> int:
    """Record a launch that ended with `checkpoint` the newest (its status written at `status_time`); the
    launches in a row, this one included, that ended without a new one."""
    before = _record(run_dir, job, link)
    progress = bool(checkpoint) and checkpoint != before.get("checkpoint")
    now = 0 if progress else int(before.get("fruitless") or 0) + 1
    path = Path(run_dir) / NAME
    try:
        status.write(path, {"fruitless": now, "checkpoint": checkpoint or before.get("checkpoint"), "job": job,
                            "status_time": status_time})
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return now


def stop_line(count: int, limit: int, run_name: str, what: str) -> str:
    return (f"{count} launches in a row ended without a new checkpoint (MAX_FRUITLESS={limit}): {what} run "
            f"{run_name}, its newest checkpoint kept; find the cause in the logs above, then resubmit with "
            f"RUN_NAME={run_name} (a new submission counts anew)")

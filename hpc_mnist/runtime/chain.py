"""Whether a run's chain of launches makes progress: a chain (requeues, PBS successors, later relaunches) whose
launches keep ending without a new checkpoint is stopped (MAX_FRUITLESS in launch/jobs.sh, default 3), so a
broken input or node cannot eat an allocation or a queue.

    <run_dir>/chain.json   {"fruitless": N, "checkpoint": "<the newest checkpoint after the last launch>",
                            "job": "<the last launch's job id>"}

Standard library only (and hpc_mnist.errors): the job scripts run this without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import status

NAME = "chain.json"  # in the run directory


def count(run_dir: str | os.PathLike, checkpoint: str | None, job: str, link: int) -> int:
    """Record a launch that ended with `checkpoint` the newest; the launches in a row, this one included, that
    ended without a new one. `link` is the job's place in its chain (0: a first job, a user's submission: the
    count starts again, unless this job launched before)."""
    path = Path(run_dir) / NAME
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        before = {}
    except (OSError, ValueError):
        before = {}  # a damaged record costs at most MAX_FRUITLESS launches more: never a reason to stop
    if not isinstance(before, dict):
        before = {}
    if link == 0 and before.get("job") != job:  # a new chain: counted anew, against the checkpoint it starts from
        before = {"checkpoint": before.get("checkpoint")}
    progress = bool(checkpoint) and checkpoint != before.get("checkpoint")
    fruitless = 0 if progress else int(before.get("fruitless") or 0) + 1
    try:
        status.write(path, {"fruitless": fruitless, "checkpoint": checkpoint or before.get("checkpoint"), "job": job})
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return fruitless

"""status.json, the file through which a run says why it ended (or that it runs), and its rules, in one place.

The trainer writes it (`rundir.write_status`), into the run directory and, for a job script, to
`$HPC_MNIST_STATUS_FILE`; readers are the trainer's next segment (`rundir.read_status`) and the job scripts
(`python -m hpc_mnist.job`, which launch/jobs.sh runs after each launch instead of parsing the file itself):

    {"state": "completed" | "stopped" | "failed" | "running", "reason": "deadline" | "user stop" | "signal" |
     "error" | "rank lost" | "rank quiet" | "non-finite loss" | "gone" | null, "signal": ..., "requeue": true |
     false, "exit_code": ..., "run_dir": ..., "checkpoint": ... (the newest), ..., "stop_file": ... (the file the
     ranks watch), "scheduler": "slurm" | "pbs", "jobs": [ids of the batch jobs that carried the run, oldest
     first], "host": ..., "pid": ..., "time": ...}

`requeue` says whether the job should continue the run: true after a stop for the job's deadline, or a rank
(or its host) lost after the segment had saved a checkpoint; never after a user's scancel, qdel or
`hpc-mnist stop` (reason "user stop"). Older versions wrote no stop_file, scheduler or jobs.

Standard library only (and hpc_mnist.errors): a job script runs this after every launch, without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hpc_mnist.errors import UserError

STATUS_FILE_VAR = "HPC_MNIST_STATUS_FILE"  # a copy of status.json where a job script can find it
NAME = "status.json"  # in the run directory
USER_STOP = "user stop"  # the reason after `hpc-mnist stop`: the job ends, as after scancel or qdel


def this_job() -> tuple[str, str]:
    """(scheduler, job id) of the batch job this process runs in; ("", "") outside one."""
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm", os.environ["SLURM_JOB_ID"]
    if os.environ.get("PBS_JOBID"):
        return "pbs", os.environ["PBS_JOBID"]
    return "", ""


def requeue(state: str, reason: str | None) -> bool:
    """Whether a run that ended so is continued by its job: a stop for the job's deadline. (A failure may set
    `requeue` itself: a rank lost after this segment saved a checkpoint, peers.py, controller.py.)"""
    return state == "stopped" and reason == "deadline"


def write(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomically: a reader (a job script deciding whether to requeue) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read(path: str | os.PathLike) -> dict[str, Any] | None:
    """The status in `path`; None when there is no such file (nothing was recorded). A file that cannot be read
    or is not a status (not a JSON object) is a UserError saying which."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read the status file {path}: {e.strerror or e}") from None
    try:
        status = json.loads(text)
    except ValueError as e:
        raise UserError(f"the status file {path} is not JSON ({e})") from None
    if not isinstance(status, dict):
        raise UserError(f"the status file {path} holds a {type(status).__name__}, not a status (a JSON object)")
    return status


def running(status: dict[str, Any]) -> bool:
    return status.get("state") == "running"


def mark_gone(status: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """A `running` status whose processes have ended without recording why (a rank or its host died, a
    launcher killed the rest): failed, reason gone, with `facts`."""
    return {**status, "state": "failed", "reason": "gone", **facts}


def after_launch(status: dict[str, Any], *, stopping: bool, **facts: Any) -> dict[str, Any]:
    """The job's rule, once its launch has ended: a status still `running` is `gone` (mark_gone), and asks for
    the run to continue (requeue true) when it names a checkpoint (a running status names one only once this
    job's ranks have saved one: progress was made, so a rank that dies again at the same place, out of memory
    say, does not requeue the job over and over) and the job was not being stopped (a scancel or qdel ends the
    job whatever its ranks managed to write). `facts` (the launcher's report's bad hosts) go with it. Any other
    status is returned as it is."""
    if not running(status):
        return status
    return mark_gone(status, **({"requeue": True} if status.get("checkpoint") and not stopping else {}), **facts)


FAULTS = ("rank lost", "rank quiet", "gone", "connection lost")  # a rank or a host failed, not the run


def fault(status: dict[str, Any]) -> bool:
    """Whether the run ended because a rank or its host failed (a relaunch inside the job may heal it), not for
    the time limit, a user's stop or an error of the run itself."""
    return status.get("reason") in FAULTS


def why_stopped(status: dict[str, Any], scheduler: str) -> str:
    """Why a run whose status asks for requeue stopped, for the job's log line: `... with a checkpoint; ...`."""
    if status.get("reason") == "rank lost":
        return "a rank was lost (above), after this job had made progress"
    if status.get("reason") == "rank quiet":
        return "a rank went quiet (above), after this job had made progress"
    if status.get("reason") == "gone":
        return "the ranks were lost (above), after this job had made progress"
    return "stopped for the walltime" if scheduler == "pbs" else "stopped for the time limit"


def run_name(status: dict[str, Any]) -> str:
    """The run directory's name ('' when the status names none): RUN_NAME continues the run."""
    return str(status.get("run_dir") or "").rpartition("/")[2]

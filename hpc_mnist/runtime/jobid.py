"""The batch job's id as a run's name: the run directory a job writes when no log.name is given. Standard
library only: the job scripts' host check (python -m hpc_mnist.job check-hosts) finds the run directory with it
before any launch, without torch."""

from __future__ import annotations

import os


def job_name() -> str | None:
    """The batch job's id: '12.server' -> 12; a PBS subjob '5[1].server' of array '5[].server' -> 5-1."""
    job = os.environ.get("PBS_ARRAY_ID") or os.environ.get("PBS_JOBID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array = os.environ.get("PBS_ARRAY_INDEX") or os.environ.get("SLURM_ARRAY_TASK_ID")
    return job.split(".")[0].removesuffix("[]") + (f"-{array}" if array else "")

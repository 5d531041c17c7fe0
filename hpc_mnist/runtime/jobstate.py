"""What a scheduler says of batch jobs now (Slurm: squeue, then sacct for ended jobs; PBS: qstat -x), for
`hpc-mnist status` and `stop` on a login node. Short timeouts, and never an error: a client that is missing,
slow or broken leaves the jobs unknown. Standard library only (no torch on a login node's quick commands).
"""

from __future__ import annotations

import json
import shutil

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import shell

TIMEOUT = 3.0  # seconds per client call: a login node's command must not hang on a slow controller
PBS_STATES = {"Q": "QUEUED", "R": "RUNNING", "E": "EXITING", "F": "FINISHED", "H": "HELD", "S": "SUSPENDED",
              "W": "WAITING", "B": "ARRAY RUNNING", "X": "FINISHED", "M": "MOVED", "T": "MOVING"}
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED",
          "QUEUED", "EXITING", "HELD", "WAITING", "ARRAY RUNNING", "MOVED", "MOVING"}


def _ask(cmd: list[str], timeout: float) -> str:
    if not shutil.which(cmd[0]):
        return ""
    try:
        return shell.output(cmd, timeout=timeout)
    except UserError:
        return ""


def slurm(jobs: list[str], timeout: float = TIMEOUT) -> dict[str, str]:
    """{job id: Slurm state} for the jobs squeue or sacct still know."""
    found = {}
    for line in _ask(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], timeout).splitlines():
        job, _, state = line.strip().partition(" ")
        if job in jobs and state:
            found[job] = state.strip()
    if missing := [j for j in jobs if j not in found]:
        for line in _ask(["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"],
                         timeout).splitlines():
            job, _, state = line.strip().partition("|")
            if job in missing and state:
                found[job] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return found


def pbs(jobs: list[str], timeout: float = TIMEOUT) -> dict[str, str]:
    """{job id: PBS state, as a word} for the jobs qstat (with its history, -x) still knows."""
    try:
        known = json.loads(_ask(["qstat", "-x", "-f", "-F", "json", *jobs], timeout) or "{}").get("Jobs", {})
    except (ValueError, AttributeError):
        return {}
    found = {}
    for job in jobs:
        info = known.get(job) or next((v for k, v in known.items() if k.split(".")[0] == job.split(".")[0]), None)
        if isinstance(info, dict) and info.get("job_state"):
            found[job] = PBS_STATES.get(info["job_state"], str(info["job_state"]))
    return found


def query(scheduler: str, jobs: list[str], timeout: float = TIMEOUT) -> dict[str, str]:
    """{job id: the scheduler's state} for those of `jobs` it answers for; {} where it cannot answer."""
    jobs = [str(j) for j in jobs if j]
    if not jobs:
        return {}
    return {"slurm": slurm, "pbs": pbs}.get(scheduler, lambda j, t: {})(jobs, timeout)


def active(state: str) -> bool:
    """Whether a job in this state may still have ranks running (or start them)."""
    return state.upper() in ACTIVE

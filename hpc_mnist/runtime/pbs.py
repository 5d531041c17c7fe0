"""What a PBS job asks its server: its own attributes, the end of its walltime, and its successor.

PBS gives a job no walltime variable and no early warning (SIGTERM at the walltime, SIGKILL `kill_delay`
later), so the job's end is its start time plus its walltime, both from `qstat -f -F json`. Users cannot
requeue their own PBS jobs (`qrerun` is an operator's), so a job whose run stopped for the walltime submits
its successor: the same job script (PBS's copy of it), the same variables (`-v`) and resources (`-l select,
place, walltime`), its log beside this one's (`hpc_mnist.o1234.1`, `.2`, ... after the first job's), the same
run directory (RUN_NAME), held until this job has ended (`-W depend=afterany:<job>`), so the two never train
at once.

A run's bad hosts (runtime/badhosts.py) are avoided by naming the good hosts, one `host=` per chunk: OpenPBS
23.06's select has no "not this host" (measured on the lab: `select=1:ncpus=2:host=hp-n1+1:ncpus=2:host=hp-n2`
runs on exactly those; a second `host=` in one chunk is refused, "duplicated resource within a section"; an
unknown host leaves the job queued, "Can Never Run: Insufficient amount of resource: host"). So such a successor
waits for those hosts even when others are free; the hosts up first (`pbsnodes`) are chosen.

A job script submits it with `python -m hpc_mnist.job continue-pbs --script "$0" --run-name NAME --count N`
(hpc_mnist/job.py), which prints the new job's id.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import shell

CARRIED_RESOURCES = ("select", "place", "walltime")  # what a user sets; ncpus, nodect, ... PBS derives from them
COUNT_VAR = "RESUBMIT_COUNT"  # 0 in the first job of a run, 1 in its first continuation, ...


def job_info(job_id: str) -> dict[str, Any]:
    """The job's attributes, as `qstat -f -F json` gives them (Resource_List, Variable_List, stime, ...)."""
    try:
        jobs = json.loads(shell.output(["qstat", "-f", "-F", "json", job_id], timeout=15)).get("Jobs", {})
    except json.JSONDecodeError as e:
        raise UserError(f"qstat -f -F json {job_id} printed no JSON ({e})") from None
    if not jobs:
        raise UserError(f"qstat knows no job {job_id}")
    return jobs.get(job_id) or next(iter(jobs.values()))


def seconds(hms: str) -> int:
    """'01:02:03' (or '02:03', '3') -> 3723."""
    total = 0
    for part in str(hms).split(":"):
        total = total * 60 + int(part)
    return total


def end_time(info: dict[str, Any]) -> float | None:
    """Unix time at which the walltime runs out: start time + walltime (None before the job started)."""
    start, walltime = info.get("stime"), info.get("Resource_List", {}).get("walltime")
    if not (start and walltime):
        return None
    if isinstance(start, int | float) or str(start).isdigit():
        started = float(start)
    else:  # 'Wed Dec  2 04:10:11 2026', local time
        started = datetime.datetime.strptime(" ".join(str(start).split()), "%a %b %d %H:%M:%S %Y").timestamp()
    return started + seconds(walltime)


def variable_list(values: dict[str, str]) -> str:
    """qsub -v's list, which qsub splits at commas: a value holding a comma or white space is double-quoted,
    which keeps it whole. Measured on OpenPBS 23.06: quotes inside a value cannot be passed (qsub refuses the
    list or drops them) and backslashes arrive doubled, so such values are refused here."""
    def one(name: str, value: str) -> str:
        if re.search(r"[\"'\\]", value):
            raise UserError(f"qsub -v cannot pass {name}={value!r} intact (quotes or backslashes); set it in the "
                            "job script instead")
        return f'{name}="{value}"' if re.search(r"[,\s]", value) else f"{name}={value}"
    return ",".join(one(k, v) for k, v in values.items())


def nodes() -> dict[str, str]:
    """The server's hosts and their states (`pbsnodes -a -F json`): {host: 'free', 'job-busy', 'down', ...}."""
    try:
        found = json.loads(shell.output(["pbsnodes", "-a", "-F", "json"], timeout=30)).get("nodes", {})
    except json.JSONDecodeError as e:
        raise UserError(f"pbsnodes -a -F json printed no JSON ({e})") from None
    return {str(v.get("resources_available", {}).get("host") or k): str(v.get("state", "")) for k, v in found.items()}


def placed(select: str, avoid: list[str], hosts: dict[str, str]) -> str:
    """`select` with each chunk on a named good host ('2:ncpus=4' -> '1:ncpus=4:host=a+1:ncpus=4:host=b'), the
    hosts up first; a host= or vnode= already there is replaced. Too few good hosts is one line."""
    chunks = []
    for part in select.split("+"):
        count, _, spec = part.partition(":") if part.split(":")[0].isdigit() else ("1", "", part)
        spec = ":".join(r for r in spec.split(":") if r and not r.startswith(("host=", "vnode=")))
        chunks += [spec] * int(count)
    up = [h for h, state in hosts.items() if not any(s in state for s in ("down", "offline", "unknown"))]
    good = [h for h in dict.fromkeys(up + list(hosts)) if h not in avoid]
    if len(good) < len(chunks):
        raise UserError(f"without the run's bad hosts ({', '.join(avoid)}) the server has {len(good)} of the "
                        f"{len(chunks)} host(s) the job needs")
    return "+".join(f"1:{spec}:host={host}" if spec else f"1:host={host}"
                    for spec, host in zip(chunks, good[:len(chunks)], strict=True))


def continuation(info: dict[str, Any], job_id: str, script: str, run_name: str, count: int,
                 avoid: list[str] = (), hosts: dict[str, str] | None = None) -> list[str]:
    """The qsub command line of the job that continues this one's run once this one has ended, on `hosts`
    (the server's, with their states) other than `avoid`."""
    variables = {k: str(v) for k, v in info.get("Variable_List", {}).items() if not k.startswith("PBS_")}
    variables.update({"RUN_NAME": run_name, COUNT_VAR: str(count)})
    resources = dict(info.get("Resource_List", {}))
    if avoid and "select" in resources:
        resources["select"] = placed(str(resources["select"]), list(avoid), hosts or {})
    cmd = ["qsub", "-W", f"depend=afterany:{job_id}", "-v", variable_list(variables)]
    for name in CARRIED_RESOURCES:
        if name in resources:
            cmd += ["-l", f"{name}={resources[name]}"]
    if info.get("Account_Name"):
        cmd += ["-A", str(info["Account_Name"])]
    if info.get("Job_Name"):
        cmd += ["-N", str(info["Job_Name"])]
    if info.get("Output_Path"):  # the first job's log name and the count: hpc_mnist.o1234, .o1234.1, .o1234.2 ...
        first = re.sub(rf"\.{count - 1}$", "", str(info["Output_Path"])) if count > 1 else str(info["Output_Path"])
        cmd += ["-o", f"{first}.{count}"]
    return [*cmd, script]


def submit_continuation(job_id: str, script: str, run_name: str, count: int, avoid: list[str] = ()) -> str:
    line = continuation(job_info(job_id), job_id, script, run_name, count, avoid, nodes() if avoid else None)
    return shell.output(line, timeout=60).strip()


def nodefile_hosts(path: str) -> list[str]:
    """The hosts of a PBS node file (one line per rank slot), each once, in order; OSError when unreadable."""
    with open(path) as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))

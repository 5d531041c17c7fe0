"""A Slurm job that requeues itself away from the run's bad hosts.

Measured on the lab's Slurm 22.05: `scontrol update JobId=J ExcNodeList=...` on a running job is refused ("Job is
no longer pending execution"), so the excluded nodes cannot be set before the requeue; and `scontrol requeue`
signals every process of the job (TERM) within ~10 ms, so whatever runs after it must survive that TERM (the job
shell traps it; this process ignores it). So: `scontrol requeuehold` (the job goes back to the queue, held: it
cannot start again on a bad host meanwhile), `scontrol update ExcNodeList=<the job's own exclusions + the bad
hosts>`, `scontrol release`. Measured: the requeued 1-node job ran on the other host. An exclusion that leaves
the partition fewer nodes than the job needs is accepted by scontrol and leaves the job pending (Reason
BadConstraints) for ever, so that case is refused here before the requeue, in one line.

Standard library only (and hpc_mnist.errors): the job scripts run this without torch.
"""

from __future__ import annotations

import re
import signal

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import shell
from hpc_mnist.runtime.badhosts import good


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol -o show job`: the job's fields (Partition, NumNodes, ExcNodeList, ...)."""
    return dict(re.findall(r"(\w+)=(\S*)", shell.output(["scontrol", "-o", "show", "job", job_id], timeout=30)))


def hostnames(expression: str) -> list[str]:
    """A Slurm host list ('hm-n[1-2]') as names; '' or '(null)': none."""
    if expression in ("", "(null)"):
        return []
    return shell.output(["scontrol", "show", "hostnames", expression], timeout=30).split()


def partition_hosts(partition: str) -> list[str]:
    info = dict(re.findall(r"(\w+)=(\S*)", shell.output(["scontrol", "-o", "show", "partition", partition],
                                                         timeout=30)))
    return hostnames(info.get("Nodes", ""))


def requeue(job_id: str, bad: list[str]) -> list[str]:
    """Requeue the job; with `bad` hosts, held until its excluded nodes include them. The nodes it now excludes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue TERMs every process of the job, this one too
    if not bad:
        shell.output(["scontrol", "requeue", job_id], timeout=60)
        return []
    info = job_info(job_id)
    excluded = list(dict.fromkeys(hostnames(info.get("ExcNodeList", "")) + bad))
    needed = int(re.match(r"\d+", info.get("NumNodes", "1") or "1").group())
    partition = info.get("Partition", "").split(",")[0]
    left = good(partition_hosts(partition), excluded) if partition else None
    if left is not None and len(left) < needed:
        raise UserError(f"not requeueing job {job_id}: without the bad hosts ({', '.join(excluded)}) partition "
                        f"{partition} has {len(left)} of the {needed} node(s) it needs")
    shell.output(["scontrol", "requeuehold", job_id], timeout=60)
    try:
        shell.output(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(excluded)}"], timeout=60)
    finally:  # never left held: at worst it lands on a bad host, and the job's host check stops it there
        shell.output(["scontrol", "release", job_id], timeout=60)
    return excluded

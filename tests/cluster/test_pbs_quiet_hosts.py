"""Quiet hosts on the lab's real OpenPBS, with jobscripts/pbs.sh as a user edits it (2 hosts x 2 ranks, MPICH's
mpiexec through PBS's task manager), default settings: (a) the ranks on the job's second host frozen with SIGSTOP
(the host answers), (b) that host's network dropping every packet (a firewall rule inside its namespace: no
resets). Each: its ranks named quiet within 60 s of the fault, in status.json and one line, and every rank's
process gone within 90 s. The Slurm lab's: test_quiet_hosts.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from cluster.jobs import EPOCHS, SLOW, wait_for_epoch
from cluster.labs import PbsLab
from cluster.test_pbs_jobs import jobs_named, submit, unique_name
from cluster.test_quiet_hosts import DROP, GONE_WITHIN, NAMED_WITHIN, named_and_gone
from helpers.runs import status
from hpc_mnist.runtime.peers import process_exists

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("fault", ["sigstop", "packets dropped"])
def test_a_quiet_host_is_named_within_a_minute_and_every_rank_ends(pbs_lab: PbsLab, fault: str):
    work = pbs_lab.workdir(f"quiet-{fault.split()[0]}")
    name = unique_name(work)
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS * 20}", "-N", name, walltime="00:10:00")
    run_dir = work / "runs" / job.split(".")[0]
    second = None
    try:
        wait_for_epoch(pbs_lab, job, run_dir, epoch=1)
        second = pbs_lab.info(job)["exec_host"].split("+")[1].split("/")[0]
        ranks = json.loads((run_dir / "ranks.json").read_text())
        there = [r for r, host in enumerate(ranks["hosts"]) if host == second]
        assert len(there) == 2, (second, ranks)
        at = time.monotonic()
        if fault == "sigstop":
            for r in there:
                os.kill(ranks["pids"][r], signal.SIGSTOP)
        else:
            for rule in DROP:
                pbs_lab.on_host(second, rule)
        named, gone = named_and_gone(run_dir, ranks["pids"], at)
        st = status(run_dir)
        print(f"PBS {fault}: named after {named} s, every rank gone after {gone:.1f} s")
        assert named is not None and named < NAMED_WITHIN, (named, st)
        assert (st["reason"], st["quiet_hosts"], sorted(st["quiet_ranks"])) == ("rank quiet", [second], there), st
        left = [pid for pid in ranks["pids"] if process_exists(pid)]
        assert gone < GONE_WITHIN, (gone, pbs_lab.state(job), left, subprocess.run(
            ["ps", "-o", "pid,ppid,sid,stat,etime,cmd", "-p", ",".join(map(str, left)) or "1"],
            capture_output=True, text=True).stdout, pbs_lab.job(job).log[-2000:])
    finally:
        if second and fault != "sigstop":
            for rule in DROP:
                pbs_lab.on_host(second, [rule[0], "-D", *rule[2:]], check=False)
        for j in jobs_named(pbs_lab, name):
            pbs_lab.cancel(j, check=False)

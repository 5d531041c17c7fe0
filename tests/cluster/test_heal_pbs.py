"""Healing inside the job on the lab's real OpenPBS (cluster/heal.py): jobscripts/pbs.sh as a user edits it,
select=3 with SPARE_NODES=1, 2 ranks a host through MPICH's mpiexec and PBS's task manager. Training runs on the
node file's first two hosts (mpiexec's host file names them); each fault strikes the second; the job relaunches
on the first and the third without a successor. In (d), a rank killed with SIGKILL, MPICH's mpiexec kills every
rank within milliseconds, so no rank can record which host it was: its own report names it, which the job script
keeps (launch/jobs.sh, runtime/launch_report.py). The Slurm lab's: test_heal_slurm.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.heal import FAULTS, Healing, check_healed, fault_on, mend, watch
from cluster.jobs import EPOCHS, SLOW, wait_for_epoch
from cluster.labs import PbsLab
from cluster.test_pbs_jobs import jobs_named, submit, unique_name

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_host_is_replaced_by_the_spare_inside_the_job(pbs_lab: PbsLab, uninterrupted: Path, fault: str):
    work = pbs_lab.workdir(f"heal-{fault.split()[0]}")
    name = unique_name(work)
    hosts = pbs_lab.hosts[:3]
    extra = {"DOCTOR": "1", "HPC_MNIST_DOCTOR_FAIL_HOSTS": hosts[1]} if fault == "doctor" else {}
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS} log.name=h", "-N", name,
                 walltime="00:10:00", select="3:ncpus=2", SPARE_NODES="1", **extra)
    run_dir = work / "runs" / "h"
    wait_for_epoch(pbs_lab, job, run_dir, epoch=1)
    placed = [h.split("/")[0] for h in pbs_lab.info(job)["exec_host"].split("+")]  # the node file's order
    second = hosts[1] if fault == "doctor" else placed[1]
    spare = [h for h in placed if h != second][-1]
    try:
        if fault == "doctor":
            healing = Healing(None, None, None)
        else:
            pids, at = fault_on(pbs_lab, second, run_dir, fault)
            healing = watch(run_dir, pids, at)
    finally:
        mend(pbs_lab, second, fault)
    ended = pbs_lab.wait(job, timeout=300)
    assert ended.info["Exit_status"] == 0, ended.log[-3000:]
    assert jobs_named(pbs_lab, name) == [job], ended.log[-3000:]  # healed in place: no successor
    check_healed(run_dir, second, spare, healing, fault, uninterrupted, ended.log)

"""Healing inside the job on the lab's real Slurm (cluster/heal.py): jobscripts/slurm.sh as a user edits it,
-N 3 with SPARE_NODES=1, 2 tasks a node. Training runs on hm-n1, hm-n2 (pinned: srun --nodelist); each fault
strikes hm-n2; the job relaunches on hm-n1, hm-n3 without a requeue. The PBS lab's: test_heal_pbs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.heal import FAULTS, Healing, check_healed, fault_on, mend, watch
from cluster.jobs import EPOCHS, SLOW, finished, job_variables, user_edited_job_script, wait_for_epoch
from cluster.labs import SlurmLab

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_host_is_replaced_by_the_spare_inside_the_job(lab: SlurmLab, uninterrupted: Path, fault: str):
    work = lab.workdir(f"heal-{fault.split()[0]}")
    run_dir = work / "runs" / "h"
    script = user_edited_job_script(work, nodes=3, time="00:10:00", name="h.sh")
    out = work / "h.out"
    extra = {"DOCTOR": "1", "HPC_MNIST_DOCTOR_FAIL_HOSTS": "hm-n2"} if fault == "doctor" else {}
    job = lab.submit(script, out=out, variables=job_variables(work, f"{SLOW} train.epochs={EPOCHS}", RUN_NAME="h",
                                                              SPARE_NODES="1", **extra))
    try:
        wait_for_epoch(lab, job, run_dir, epoch=1)
        if fault == "doctor":
            healing = Healing(None, None, None)
        else:
            pids, at = fault_on(lab, "hm-n2", run_dir, fault)
            healing = watch(run_dir, pids, at)
    finally:
        mend(lab, "hm-n2", fault)
    ended = finished(lab, job, out, timeout=300)
    assert (ended.state, ended.exit_code, ended.restarts) == ("COMPLETED", "0:0", 0), ended.log[-3000:]
    check_healed(run_dir, "hm-n2", "hm-n3", healing, fault, uninterrupted, ended.log)

"""From the login node, on the lab's real Slurm (2 nodes x 2 tasks, jobscripts/slurm.sh as a user edits it):
`hpc-mnist status` on a run while it trains, with Slurm's word on its job; `hpc-mnist stop` ends the job with a
checkpoint and no requeue, as scancel does, and a resubmission ends with the uninterrupted weights; and what a
rank other than 0 prints under srun, its crash stack included, reaches the job log labelled with its rank and
host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.jobs import (
    EPOCHS,
    PY,
    SLOW,
    assert_same_weights,
    assert_whole_checkpoint,
    epochs_logged,
    finished,
    job_variables,
    user_edited_job_script,
    wait_for_epoch,
)
from cluster.labs import SlurmLab
from helpers.runs import status

pytestmark = pytest.mark.cluster


def hpc_mnist(lab: SlurmLab, *args: str, check: bool = True):
    """The command where users type the scheduler's commands (this machine, the lab's SLURM_CONF)."""
    return lab.run([PY, "-m", "hpc_mnist", *args], timeout=60, check=check)


def submit(lab: SlurmLab, work: Path, name: str) -> tuple[str, Path]:
    script = user_edited_job_script(work, name=f"{name}.sh")
    out = work / f"{name}.out"
    return lab.submit(script, out=out, variables=job_variables(work, f"{SLOW} train.epochs={EPOCHS}",
                                                               RUN_NAME=name)), out


def test_status_of_a_live_run_and_stop_ends_its_job_with_a_checkpoint_like_scancel(lab: SlurmLab,
                                                                                    uninterrupted: Path):
    work = lab.workdir("login-stop")
    run_dir = work / "runs" / "stopped"
    job, out = submit(lab, work, "stopped")
    wait_for_epoch(lab, job, run_dir)
    live = json.loads(hpc_mnist(lab, "status", str(work / "runs"), "--json").stdout)
    assert [r["name"] for r in live] == ["stopped"]
    row = live[0]
    assert (row["state"], row["scheduler"], row["jobs"], row["job_states"]) == (
        "running", "slurm", [job], {job: "RUNNING"}), row
    assert (row["epochs"], row["host"]) == (EPOCHS, "hm-n1") and row["epochs_done"] >= 1 and row["eta_s"] > 0, row
    table = hpc_mnist(lab, "status", str(work / "runs")).stdout
    assert f"slurm {job} RUNNING" in table and "running" in table, table

    asked = hpc_mnist(lab, "stop", str(run_dir))
    assert asked.stdout.startswith(f"asked run {run_dir} (rank 0 on hm-n1) to stop at its next check"), asked.stdout
    result = finished(lab, job, out, timeout=90)
    assert result.restarts == 0 and lab.info(job).get("Restarts") == "0", result.info  # not requeued
    assert (result.state, lab.info(job).get("ExitCode")) == ("FAILED", "75:0"), result.info  # the launch's 75
    assert "requeueing" not in result.log, result.log
    st = status(run_dir)
    assert (st["state"], st["reason"], st["requeue"], st["jobs"]) == ("stopped", "user stop", False, [job]), st
    assert_whole_checkpoint(run_dir, st)
    assert len(epochs_logged(run_dir)) < EPOCHS
    after = json.loads(hpc_mnist(lab, "status", str(run_dir), "--json").stdout)[0]
    assert (after["state"], after["reason"]) == ("stopped", "stopped by hpc-mnist stop"), after
    again = hpc_mnist(lab, "stop", str(run_dir), check=False)
    assert again.returncode == 2 and "is not running (stopped" in again.stderr

    resubmitted, out = submit(lab, work, "stopped")
    result = finished(lab, resubmitted, out, timeout=180)
    assert result.state == "COMPLETED", result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)
    assert status(run_dir)["jobs"] == [job, resubmitted]


CRASH = ("import ctypes, faulthandler, socket; from hpc_mnist.runtime import labels, launchers; "
         "rank = launchers.guess_rank(); labels.label_output(rank); print('hello from', rank, flush=True); "
         "faulthandler.enable(); rank == 1 and ctypes.string_at(0)")


def test_a_rank_other_than_0_is_labelled_under_srun_its_crash_stack_too(lab: SlurmLab):
    work = lab.workdir("labels")
    script = work / "job.sh"
    script.write_text(f'#!/bin/bash\nsrun -N2 -n2 {PY} -c "{CRASH}"\n')
    job = lab.submit_and_wait(script, "-N2", "-n2", "-t", "5", out=work / "job.out", timeout=120)
    lines = job.log.splitlines()
    assert "hello from 0" in lines, job.log  # rank 0 as it was
    assert "[rank 1 hm-n2] hello from 1" in lines, job.log
    assert "[rank 1 hm-n2] Fatal Python error: Segmentation fault" in lines, job.log
    assert any(line.startswith('[rank 1 hm-n2]   File "<string>", line 1') for line in lines), job.log


def test_the_doctor_names_a_run_directory_on_each_hosts_own_tmp(lab: SlurmLab):
    """The lab's hosts each have their own /tmp: a 2-host doctor with log.dir there fails its storage check,
    naming the host whose files rank 0 cannot see; the shared work folder passes."""
    work = lab.workdir("node-local")
    script = work / "job.sh"
    doctor = f"srun -N2 -n2 {PY} -m hpc_mnist.doctor --timeout 60 --config configs/smoke.yaml log.name=r"
    script.write_text(f"#!/bin/bash\n{doctor} log.dir=/tmp/hm-node-local --json {work}/local.json\n"
                      f"{doctor} log.dir={work}/runs --json {work}/shared.json\n")
    job = lab.submit_and_wait(script, "-N2", "-n2", "-t", "5", out=work / "job.out", timeout=180)
    local = {c["name"]: c for c in json.loads((work / "local.json").read_text())["checks"]}["storage"]
    assert local["status"] == "fail", job.log
    assert local["message"].startswith("the run directory /tmp/hm-node-local/r is on a node-local file system")
    assert "rank 0 on hm-n1 does not see what hm-n2 write there" in local["message"], local
    shared = {c["name"]: c for c in json.loads((work / "shared.json").read_text())["checks"]}["storage"]
    assert shared["status"] == "ok" and "writable from 2 host(s)" in shared["message"], (shared, job.log)

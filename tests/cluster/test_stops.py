"""Stops on the lab's real Slurm, with jobscripts/slurm.sh as a user edits it (2 nodes x 2 tasks): the time
limit (stop, requeue, resume), scancel (ends, no requeue; a resubmission resumes), scontrol requeue, a
time-limit kill the trainer did not see coming, two TERMs half a second apart, a host that dies and a rank
killed (their hosts not used again by the run). Nothing may be lost: resumed runs end with the weights of an
uninterrupted run, bit for bit, and each epoch in metrics.jsonl once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    segments,
    user_edited_job_script,
    wait_for_epoch,
)
from cluster.labs import SlurmLab
from helpers.runs import status

pytestmark = pytest.mark.cluster


def submit(lab: SlurmLab, work: Path, name: str, epochs: int = EPOCHS, time_limit: str = "00:05:00",
           extra: str = "", sbatch: tuple[str, ...] = (), doctor: bool = False) -> tuple[str, Path]:
    script = user_edited_job_script(work, time=time_limit, name=f"{name}.sh")
    out = work / f"{name}.out"
    variables = job_variables(work, f"{SLOW} train.epochs={epochs} {extra}", RUN_NAME=name, DOCTOR=str(int(doctor)))
    return lab.submit(script, *sbatch, out=out, variables=variables), out


def test_time_limit_stops_requeues_and_resumes(lab: SlurmLab, uninterrupted: Path):
    """A run longer than its 2-minute job: the trainer knows the job's end time from its start, stops
    train.deadline_margin (115 s here) before it with a checkpoint, the job script requeues the job and the
    next segment resumes; the end result is the uninterrupted run's, bit for bit.

    The first segment has 5 s of job time, start-up included, so it stops early in the run on any machine (if
    start-up alone takes longer, at the ranks' first agreement on stop requests, step 16). Longer segments
    depended on the machine's speed: with a 90 s margin a fast CI machine started in 12 s and trained all 6
    epochs in the remaining 18 s (no stop, nothing tested), and with 105 s a fresh machine here started in 9-10 s
    and trained 1-2 of the 6 epochs (2 s each) before the deadline, 8-10 s from finishing inside it.

    Once the first segment has read its end time, the job gets a longer limit (`scontrol update`), so that the
    requeued segment can finish on any machine. Extending it only after the requeue raced the second segment's
    own start: under load it read the old limit too and stopped a second time.

    During both segments' start-up (the pre-flight check on, as the job scripts' default) the batch shell gets
    the time-limit warning again and again: no moment of start-up may die from it (the job scripts trap it from
    their first line; they used to trap it only for the launch, after the check)."""
    work = lab.workdir("time-limit")
    run_dir = work / "runs" / "limit"
    job, out = submit(lab, work, "limit", time_limit="00:02:00", extra="train.deadline_margin=115", doctor=True)
    warnings = warn_during_start_up(lab, job, run_dir, out, until=lambda st: st is not None)
    lab.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], timeout=15)
    warnings += warn_during_start_up(lab, job, run_dir, out, until=lambda st: st and st["state"] == "running"
                                     and lab.info(job).get("Restarts") == "1")
    result = finished(lab, job, out, timeout=300)
    assert warnings >= 4, f"only {warnings} warnings landed during start-up"
    assert (result.state, result.restarts) == ("COMPLETED", 1), result.log
    assert segments(result) == 2, result.log
    assert "stopped (deadline)" in result.log and "requeueing job" in result.log, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert (status(run_dir)["state"], status(run_dir)["requeue"]) == ("completed", False)
    assert_same_weights(run_dir / "model.pt", uninterrupted)


LIVE = ("PENDING", "CONFIGURING", "RUNNING", "SIGNALING", "COMPLETING", "REQUEUED")  # SIGNALING: a signal in flight


def warn_during_start_up(lab: SlurmLab, job: str, run_dir: Path, out: Path, until) -> int:
    """The batch shell's time-limit warning (USR1, as --signal=B:USR1@N sends it) every 0.3 s while the job
    starts (module loads, the launch, ranks importing torch), until `until(status)`; returns how many landed.
    A 2-minute job gets Slurm's own warning at any moment of its first 30 s, and a requeued segment died from
    it once (1 of 2 runs) when the job script set its trap only before the launch.

    Each warning goes once the batch shell has run the script's first line (its USR1 ignored or caught): between
    bash's start and that line no shell script can handle a signal, and CI once hit that window (the job FAILED
    with an empty log) when the warnings began as soon as Slurm said RUNNING."""
    sent, deadline = 0, time.monotonic() + 150
    while not until(status(run_dir) if (run_dir / "status.json").exists() else None):
        state = lab.state(job)
        assert state in LIVE, lab.job(job, out).log
        assert time.monotonic() < deadline, f"the segment did not start within 150 s\n{lab.job(job, out).log}"
        if state == "RUNNING" and handles_usr1(job) and _signalled(lab, job):
            sent += 1
        time.sleep(0.3)
    return sent


def _signalled(lab: SlurmLab, job: str) -> bool:
    """USR1 to the job's batch shell; False when scancel failed or Slurm did not answer within 15 s (in CI, with
    both labs and 4 workers on 2 cores, one scancel once took longer: the loop above asks again)."""
    try:
        return lab.run(["scancel", "--batch", "--signal=USR1", job], timeout=15, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def handles_usr1(job: str) -> bool:
    """Whether the job's batch shell (bash running <spool>/jobNNNNN/slurm_script) ignores or catches USR1 yet."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"/job{int(job):05d}/slurm_script" not in (proc / "cmdline").read_text():
                continue
            masks = dict(line.split(":\t") for line in (proc / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        usr1 = 1 << (signal.SIGUSR1 - 1)
        return bool((int(masks["SigIgn"], 16) | int(masks["SigCgt"], 16)) & usr1)
    return False


def test_scancel_ends_the_job_and_a_resubmission_resumes(lab: SlurmLab, uninterrupted: Path):
    work = lab.workdir("scancel")
    run_dir = work / "runs" / "cancelled"
    job, out = submit(lab, work, "cancelled")
    wait_for_epoch(lab, job, run_dir)
    lab.cancel(job)
    result = finished(lab, job, out, timeout=60)
    assert (result.state, result.restarts) == ("CANCELLED", 0), result.info
    # finished() waited until the job left squeue: its batch script has ended, so a requeue it asked for (the bug)
    # would show by now
    assert lab.info(job)["JobState"] == "CANCELLED" and lab.info(job).get("Restarts") == "0"
    st = status(run_dir)
    assert (st["state"], st["reason"], st["signal"], st["requeue"]) == ("stopped", "signal", "SIGTERM", False), st
    assert_whole_checkpoint(run_dir, st)

    again, out = submit(lab, work, "cancelled")
    result = finished(lab, again, out, timeout=180)
    assert result.state == "COMPLETED", result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_scontrol_requeue_loses_nothing(lab: SlurmLab, uninterrupted: Path):
    """scontrol requeue: TERM to every task (and CONT/KILL after KillWait), then Slurm starts the job again."""
    work = lab.workdir("requeue")
    run_dir = work / "runs" / "requeued"
    job, out = submit(lab, work, "requeued")
    wait_for_epoch(lab, job, run_dir)
    lab.requeue(job)
    result = finished(lab, job, out, timeout=240)
    assert (result.state, result.restarts) == ("COMPLETED", 1), result.log
    assert segments(result) == 2, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


# Steps of ~0.4 s (a CNN): the copy comes before the ranks have agreed to stop. Steps of ~25 ms (the MLP):
# the ranks agree within 0.4 s, so the copy comes while they write the checkpoint or shut down.
@pytest.mark.parametrize("steps", ["slow", "fast"])
def test_two_terms_half_a_second_apart_keep_the_checkpoint(lab: SlurmLab, steps: str):
    """Copies of TERM arrive apart (Slurm's own, srun's, the CONT+TERM before the kill): no copy may end a
    rank before its checkpoint, nor after it with another exit status than a stop's."""
    work = lab.workdir(f"two-terms-{steps}")
    run_dir = work / "runs" / "twice"
    extra = "model.name=cnn data.synthetic_train=2000" if steps == "slow" else ""
    job, out = submit(lab, work, "twice", epochs=20, extra=extra)
    wait_for_epoch(lab, job, run_dir)
    for _ in range(2):
        lab.send_signal(job, "TERM")  # to every task of the job's steps
        time.sleep(0.5)
    result = finished(lab, job, out, timeout=120)
    assert (run_dir / "status.json").exists(), f"no status.json: the ranks ended without a stop\n{result.log}"
    st = status(run_dir)
    assert (st["state"], st["reason"], st["signal"], st["requeue"]) == ("stopped", "signal", "SIGTERM", False), \
        (st, result.log)
    assert_whole_checkpoint(run_dir, st)
    assert result.restarts == 0
    assert "Terminated" not in result.log and "exit code 143" not in result.log, result.log
    assert "exit code 75" in result.log, result.log


def test_time_limit_kill_the_trainer_did_not_foresee(lab: SlurmLab):
    """No deadline known (train.job_deadline=false) and no warning: Slurm's TERM at the limit, then KILL
    after KillWait. The ranks stop with a whole checkpoint within KillWait."""
    work = lab.workdir("timeout")
    run_dir = work / "runs" / "killed"
    # 200 epochs: 400+ s at the fastest seen (a fresh machine here did 27 of 50 before the kill), so none finishes
    job, out = submit(lab, work, "killed", epochs=200, time_limit="00:01:00", extra="train.job_deadline=false")
    result = finished(lab, job, out, timeout=200)
    assert result.state == "TIMEOUT", result.info
    st = status(run_dir)
    assert st["state"] == "stopped" and st["epochs_done"] >= 1, (st, result.log)
    assert_whole_checkpoint(run_dir, st)


def test_a_host_that_dies_is_not_used_again_until_cleared_and_the_run_ends_as_uninterrupted(
        lab: SlurmLab, uninterrupted: Path):
    """hm-n2 dies in epoch 2 or later (every process on it, slurmd included): the ranks on hm-n1 name the lost
    ranks in one line and stop. The job (--no-kill: Slurm does not end it for the failed node) records hm-n2 as
    bad and, having no spare to relaunch on, requeues itself excluding it; the requeued job runs on hm-n1 and
    hm-n3, never on hm-n2 although it is back, and ends with the weights of an uninterrupted run, bit for bit,
    each epoch logged once. `hpc-mnist hosts RUN --clear hm-n2` then gives the host back to the run."""
    work = lab.workdir("host-dies")
    run_dir = work / "runs" / "crash"
    job, out = submit(lab, work, "crash", time_limit="00:10:00")
    wait_for_epoch(lab, job, run_dir, epoch=2)
    assert lab.crash("hm-n2") >= 3  # slurmd, the step daemon, two ranks
    deadline = time.monotonic() + 150
    while lab.info(job).get("Restarts", "0") == "0" and lab.state(job) not in lab.ENDED:
        assert time.monotonic() < deadline, f"job {job} neither requeued nor ended: {lab.info(job)}"
        time.sleep(1)
    first = out.read_text()
    named = [line for line in first.splitlines() if line.startswith("hpc_mnist: error: rank")]
    assert len(named) == 1 and named[0].startswith(
        "hpc_mnist: error: rank 2 (pid "), first[-3000:]  # hm-n1's ranks 0 and 1 survived: not named
    assert "on hm-n2 is gone: no answer within 5 s; rank 3 (pid " in named[0] and "hm-n1 is gone" not in named[0]
    assert f"job {job} requeued excluding hm-n2 (the run's bad hosts)" in first, first[-3000:]
    lab.revive("hm-n2")  # the host is back, and the run does not use it
    ended = finished(lab, job, out, timeout=300)
    print(f"\njob {job}: {ended.state}, restarts {ended.restarts}", file=sys.stderr)
    assert (ended.state, ended.restarts) == ("COMPLETED", 1), (ended.info, ended.log[-3000:])
    assert "hm-n2" not in json.loads((run_dir / "ranks.json").read_text())["hosts"]
    assert segments(ended) == 2
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == ["hm-n2"]
    cleared = subprocess.run([PY, "-m", "hpc_mnist.cli", "hosts", str(run_dir), "--clear", "hm-n2"],
                             capture_output=True, text=True, timeout=60)
    assert cleared.stdout == "cleared hm-n2: the run may use it again\n", cleared.stderr
    assert json.loads((run_dir / "bad-hosts.json").read_text())["hosts"] == {}


def test_a_requeued_job_avoids_the_host_of_a_lost_rank(lab: SlurmLab):
    """1 host x 2 ranks, rank 1 killed (kill -9, as the OOM killer would) once the run has saved a checkpoint:
    rank 0 names it and its host (status `bad_hosts`), the job script records the host in the run's
    bad-hosts.json and requeues the job excluding it (measured on this Slurm: a running job's ExcNodeList cannot
    be updated, so requeuehold, update, release), and the requeued job runs on the lab's other host to the end,
    its start panel naming the bad host."""
    work = lab.workdir("bad-host")
    run_dir = work / "runs" / "badhost"
    script = user_edited_job_script(work, nodes=1, tasks_per_node=2, time="00:10:00", name="badhost.sh")
    out = work / "badhost.out"
    job = lab.submit(script, out=out, variables=job_variables(work, f"{SLOW} train.epochs={EPOCHS}",
                                                               RUN_NAME="badhost"))
    deadline = time.monotonic() + 150
    while not ((st := status(run_dir) if (run_dir / "status.json").exists() else None) and st.get("checkpoint")):
        assert time.monotonic() < deadline and lab.state(job) in lab.ALIVE, (lab.info(job), st)
        time.sleep(0.2)
    ranks = json.loads((run_dir / "ranks.json").read_text())
    bad = ranks["hosts"][0]
    assert ranks["hosts"] == [bad, bad]
    os.kill(ranks["pids"][1], signal.SIGKILL)  # the lab's hosts share this machine's process table
    result = finished(lab, job, out, timeout=300)
    assert (result.state, result.restarts) == ("COMPLETED", 1), result.log[-3000:]
    record = json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]
    assert list(record) == [bad] and record[bad]["job"] == job and record[bad]["why"].startswith("rank lost (rank 1)")
    assert result.info["ExcNodeList"] == bad
    assert f"hpc_mnist: job {job} requeued excluding {bad} (the run's bad hosts)" in result.log
    assert f"bad hosts, not used again by this run: {bad} (rank lost (rank 1)" in result.log
    other = json.loads((run_dir / "ranks.json").read_text())["hosts"]
    assert other[0] != bad and other == [other[0]] * 2, other
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))

"""The PBS job scripts on the lab's real OpenPBS (2 execution hosts), submitted with qsub and edited only as
their headers say: a 2 x 2 run with the pre-flight check, a run longer than its walltime that continues by
itself, qdel, qrerun, a host that dies (the job's first, then its second), qsig, a walltime the trainer did not
foresee, arrays, a scaling sweep, and Polaris's and Aurora's scripts through the one stand-in
(tests/cluster/pals: Cray PALS's mpiexec over MPICH Hydra).

Ranks reach the second host the way PBS means them to: MPICH Hydra through PBS's task manager
(tests/cluster/pbs-tmrsh), so every rank is inside the job and gets PBS's signals. The job's PATH comes from
the login shell (/etc/profile), so the venv is activated by the site file (HPC_MNIST_VENV), as on a cluster.
"""

from __future__ import annotations

import json
import re
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
    load_weights,
    straight_run,
    wait_for_epoch,
)
from cluster.labs import PBS_TMRSH, PbsLab
from helpers.processes import REPO
from helpers.runs import status

pytestmark = pytest.mark.cluster

VENV = Path(sys.prefix)
PALS = Path(__file__).resolve().parent / "pals"


def edited_script(work: Path, name: str, walltime: str = "00:05:00", select: str = "2:ncpus=2") -> Path:
    """jobscripts/<name> changed only where its header tells a user to: no project (-A) or queue (-q) (the lab
    has one queue), select (2 hosts of 2 cores), walltime. ALCF's `filesystems` resource does not exist on the
    lab, so that line goes too."""
    text = (REPO / "jobscripts" / name).read_text()
    for pattern, replacement in [(r"#PBS -A \S+\n", ""), (r"#PBS -q \S+\n", ""),
                                 (r"#PBS -l select=\S+", f"#PBS -l select={select}"),
                                 (r"#PBS -l walltime=\S+", f"#PBS -l walltime={walltime}")]:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"jobscripts/{name} no longer has one line matching {pattern!r}"
    text = re.sub(r"#PBS -l filesystems=\S+\n", "", text)
    path = work / name
    path.write_text(text)
    return path


def pals_venv(work: Path) -> Path:
    """HPC_MNIST_VENV for Polaris and Aurora on the lab: the venv, with the PALS stand-in's mpiexec first."""
    fake = work / "pals-venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "activate").write_text(f'. "{VENV}/bin/activate"\nexport PATH="{PALS}:$PATH"\n')
    return fake


def variables(work: Path, overrides: str, pals: bool = False, **more: str) -> dict[str, str]:
    """What a user passes with qsub -v, plus the lab's launch settings."""
    values = {"CONFIG": "configs/smoke.yaml", "PYTHON": PY, "HPC_MNIST_VENV": str(pals_venv(work) if pals else VENV),
              "RANKS_PER_NODE": "2", "DOCTOR": "0", "HPC_MNIST_JOB_FILES": str(work / "jobfiles"),
              "HYDRA_LAUNCHER": "rsh", "HYDRA_LAUNCHER_EXEC": str(PBS_TMRSH),
              "OVERRIDES": f"log.console=plain train.precision=fp32 log.tensorboard=false log.dir={work / 'runs'} "
                           f"{overrides}"}
    if pals:  # the stand-in, and no site modules or high-speed-network names
        values.update(SITE_MODULES="0", HPC_MNIST_MASTER_DOMAIN="", PALS_HYDRA=str(VENV / "bin" / "mpiexec"),
                      PALS_LOG=str(work / "pals.log"))
    return {**values, **more}


def submit(lab: PbsLab, work: Path, script: str, overrides: str, *qsub_args: str, walltime: str = "00:05:00",
           pals: bool = False, select: str = "2:ncpus=2", **more: str) -> str:
    out = work / f"{script}.{len(list(work.glob('*.out')))}.out"
    return lab.submit(edited_script(work, script, walltime, select), *qsub_args, out=out,
                      variables=variables(work, overrides, pals, **more))


def stamp(pbs_time: str) -> float:
    """'Wed Dec  2 04:03:38 2026' (qstat's local time, 1 s resolution) as unix time."""
    return time.mktime(time.strptime(" ".join(pbs_time.split()), "%a %b %d %H:%M:%S %Y"))


def unique_name(work: Path) -> str:
    """A Job_Name no other job of the lab's history has (it starts with a letter, as PBS requires)."""
    return "j" + work.name.split("-", 2)[0] + "x" + work.name.split("-", 2)[1]


def jobs_named(lab: PbsLab, name: str) -> list[str]:
    """Every job (finished ones too) whose Job_Name is `name`, oldest first."""
    out = lab.run(["qstat", "-x", "-f", "-F", "json"]).stdout
    jobs = json.loads(out).get("Jobs", {})
    return sorted((j for j, info in jobs.items() if info.get("Job_Name") == name), key=lambda j: int(j.split(".")[0]))


def test_pbs_sh_two_hosts_with_the_doctor_equals_torchrun(pbs_lab: PbsLab, tmp_path_factory):
    """(a) The generic PBS script as a user edits it, 2 hosts x 2 ranks, pre-flight check on: PBS's
    OMP_NUM_THREADS=2 (the chunk's ncpus) must not make 2 ranks x 2 threads on 2 cores (the doctor failed every
    such job); the weights equal torchrun's 4 ranks with one thread each, bit for bit."""
    work = pbs_lab.workdir("pbs-2x2")
    job = submit(pbs_lab, work, "pbs.sh", "log.name=run", DOCTOR="1")
    result = pbs_lab.wait(job, timeout=240)
    log = result.log
    assert result.info["Exit_status"] == 0, log
    assert "unhealthy" not in log and "FAIL" not in log, log
    assert "1 CPU thread(s) per rank: its share of 2 core(s) among 2 rank(s); PBS's OMP_NUM_THREADS=2" in log, log
    summary = json.loads((work / "runs" / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"]) == (4, 2, "mpi"), summary
    assert_same_weights(work / "runs" / "run" / "model.pt", straight_run(tmp_path_factory))


def test_a_run_longer_than_its_walltime_continues_by_itself(pbs_lab: PbsLab, uninterrupted: Path):
    """(b) A run longer than its first job: the trainer reads stime and walltime from qstat and stops with a
    checkpoint train.deadline_margin before the walltime, submits its continuation (same run directory, same
    resources, held until this job has ended), and the last job completes: the straight run's weights, every
    epoch once in metrics.jsonl and in TensorBoard.

    Sized so that it holds on a machine of any speed. The first job's walltime is 90 s and the margin 85 s:
    its deadline passes during start-up, so it stops at the ranks' first agreement on stop requests (step 16 of
    epoch 1), never later, and never finishes the run. Each continuation gets a 10-minute walltime while it is
    held (`qalter`, as a user lengthens a queued job), so the run ends in the second job. Training windows sized
    in seconds did not hold: 110 s jobs with a 70 s margin finished the run in one job on a fast idle machine,
    and 90 s jobs needed 11 on a slow busy one. Should a continuation start before its qalter, it stops at its
    first check like the first job and hands on to the next: at most 4 jobs."""
    work = pbs_lab.workdir("long")
    name = unique_name(work)
    first = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS} log.tensorboard=true "
                   "train.deadline_margin=85", "-N", name, walltime="00:01:30")
    lengthened, deadline = {first}, time.monotonic() + 900
    while True:  # until the newest job of the chain has ended other than by a stop for the walltime (75)
        jobs = jobs_named(pbs_lab, name)
        for job in sorted(set(jobs) - lengthened):
            pbs_lab.run(["qalter", "-l", "walltime=00:10:00", job], check=False)
            lengthened.add(job)
        chain = [pbs_lab.job(j) for j in jobs]
        infos = [c.info for c in chain]
        if infos[-1]["job_state"] == "F" and infos[-1].get("Exit_status") != 75:
            break
        assert time.monotonic() < deadline, [(i["job_state"], i.get("Exit_status")) for i in infos]
        time.sleep(0.3)
    logs = [c.log for c in chain]
    assert 2 <= len(jobs) <= 4, logs
    print(f"\n{len(jobs)} jobs carried the run", file=sys.stderr)
    run_dir = work / "runs" / first.split(".")[0]
    assert "stopped (deadline) after 0 epoch(s)" in logs[0], logs[0]  # no other deadline is set: qstat's walltime
    for job, info, log in zip(jobs[:-1], infos[:-1], logs[:-1], strict=True):
        assert info["Exit_status"] == 75, log  # stopped with a checkpoint, not killed at the walltime (-29)
        assert f"continues run {run_dir.name} after job {job} ends" in log, log
    assert infos[-1]["Exit_status"] == 0, logs[-1]
    for earlier, later in zip(infos[:-1], infos[1:], strict=True):  # chained: each held until the one before had ended
        assert stamp(later["stime"]) >= stamp(earlier["obittime"]), (earlier, later)
        assert str(later["Variable_List"]["RUN_NAME"]) == run_dir.name  # qstat gives 60, not "60"
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir)).Reload()
    assert [e.step for e in events.Scalars("accuracy/val")] == list(range(1, EPOCHS + 1))


def test_qdel_ends_the_run_and_a_resubmission_resumes(pbs_lab: PbsLab, uninterrupted: Path):
    """(c) A user's qdel: TERM to every rank, a whole stop checkpoint, no continuation; the same RUN_NAME
    submitted again resumes to the straight run's weights."""
    work = pbs_lab.workdir("qdel")
    name = unique_name(work)
    run_dir = work / "runs" / "deleted"
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", "-N", name, RUN_NAME="deleted")
    wait_for_epoch(pbs_lab, job, run_dir)
    pbs_lab.cancel(job)
    result = pbs_lab.wait(job, timeout=60)
    st = status(run_dir)
    assert (st["state"], st["reason"], st["signal"], st["requeue"]) == ("stopped", "signal", "SIGTERM", False), \
        (st, result.log)
    assert_whole_checkpoint(run_dir, st)
    # F: the job script has ended, so a continuation it submitted (the bug) is in qstat by now
    assert jobs_named(pbs_lab, name) == [job], "a qdel'd run was continued"
    again = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", RUN_NAME="deleted")
    result = pbs_lab.wait(again, timeout=240)
    assert result.info["Exit_status"] == 0, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_qrerun_resumes_under_the_same_job_id(pbs_lab: PbsLab, uninterrupted: Path):
    """(d) qrerun (an operator's, or PBS's after a node failure): the same job id, so the same run directory,
    resumed from the stop checkpoint to the straight run's weights."""
    work = pbs_lab.workdir("qrerun")
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}")
    run_dir = work / "runs" / job.split(".")[0]
    wait_for_epoch(pbs_lab, job, run_dir)
    pbs_lab.requeue(job)
    result = pbs_lab.wait(job, timeout=300)
    assert result.info["Exit_status"] == 0 and int(result.info["run_count"]) == 2, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_a_first_host_that_dies_is_rerun_by_pbs_under_the_same_job_id(pbs_lab: PbsLab, uninterrupted: Path):
    """(d') The job's first host (PBS's mother superior, where the job script runs) dies in epoch 2 or later:
    every process on it, pbs_mom included. PBS reruns the job node_fail_requeue seconds after it lost that host
    (10 s on the lab, 310 s by default), under the same job id, so in the same run directory, on the hosts that
    are up (the lab's third host), and it continues from the newest checkpoint to the straight run's weights,
    each epoch logged once."""
    work = pbs_lab.workdir("host-dies")
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}")
    run_dir = work / "runs" / job.split(".")[0]
    wait_for_epoch(pbs_lab, job, run_dir, epoch=2)
    first = pbs_lab.info(job)["exec_host"].split("/")[0]
    try:
        assert pbs_lab.crash(first) >= 3  # pbs_mom, the job's shell and script, its ranks there
        result = pbs_lab.wait(job, timeout=300)
    finally:
        pbs_lab.revive(first)  # the host is back for the tests after this one
    assert result.info["Exit_status"] == 0 and int(result.info["run_count"]) == 2, (result.info, result.log)
    assert first not in result.info["exec_host"], result.info["exec_host"]  # the rerun ran on the others
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_a_second_host_that_dies_ends_the_job_and_its_successor_continues(pbs_lab: PbsLab, uninterrupted: Path):
    """(d'') The job's second host dies in epoch 2 or later (every process on it, pbs_mom included). PBS does not
    rerun the job for that (node_fail_requeue is about the first host), and MPICH's mpiexec kills the ranks that
    are left before they can record why. The job script says so in one line, marks the status failed, gone, and,
    since this job had saved a checkpoint, submits the job that continues the run; that job waits for two hosts
    until the dead host's mom is back, then ends with the straight run's weights, each epoch logged once."""
    work = pbs_lab.workdir("sister-dies")
    name = unique_name(work)
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", "-N", name)
    run_dir = work / "runs" / job.split(".")[0]
    wait_for_epoch(pbs_lab, job, run_dir, epoch=2)
    second = pbs_lab.info(job)["exec_host"].split("+")[1].split("/")[0]
    assert pbs_lab.crash(second) >= 2  # pbs_mom, the ranks there
    result = pbs_lab.wait(job, timeout=120)
    log = result.log
    print(f"\n{job}: Exit_status {result.info.get('Exit_status')}\n{log[-2500:]}", file=sys.stderr)
    assert result.info["Exit_status"] != 0, log
    assert "without the ranks recording why: a rank or its node died" in log, log
    st = status(run_dir)
    assert (st["state"], st["reason"], st["requeue"]) == ("failed", "gone", True), st
    assert f"continues run {run_dir.name} after job {job} ends" in log, log
    pbs_lab.revive(second)  # the host is back
    jobs = jobs_named(pbs_lab, name)
    assert len(jobs) == 2, jobs
    result = pbs_lab.wait(jobs[1], timeout=300)
    assert result.info["Exit_status"] == 0, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_qsig_usr1_ends_the_job_at_once_and_the_last_checkpoint_stays(pbs_lab: PbsLab, uninterrupted: Path):
    """(e) qsig -s USR1 reaches the job's top processes, PBS's own login shell above the job script included.
    No job script can give that shell a handler: it dies, and PBS kills the whole job within milliseconds
    (Exit_status 266 = 256 + SIGUSR1), before any rank could write a stop checkpoint. So qdel is the clean stop
    on PBS (test_qdel_...), and this test holds what remains true: the last epoch's checkpoint is whole and the
    same RUN_NAME resumes from it to the straight run's weights."""
    work = pbs_lab.workdir("qsig")
    run_dir = work / "runs" / "signalled"
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", RUN_NAME="signalled")
    wait_for_epoch(pbs_lab, job, run_dir, epoch=2)
    pbs_lab.send_signal(job, "SIGUSR1")
    result = pbs_lab.wait(job, timeout=60)
    assert result.info["Exit_status"] == 266, result.log
    newest = max(run_dir.glob("checkpoint-*.pt"))
    assert load_weights(newest), newest  # whole: it loads
    again = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", RUN_NAME="signalled")
    result = pbs_lab.wait(again, timeout=240)
    assert result.info["Exit_status"] == 0, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)


def test_a_walltime_the_trainer_did_not_foresee(pbs_lab: PbsLab):
    """(f) No deadline known (train.job_deadline=false): PBS's TERM at the walltime on both hosts, KILL
    kill_delay (10 s) later. The ranks stop with a whole checkpoint within it."""
    work = pbs_lab.workdir("walltime")
    run_dir = work / "runs" / "killed"
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs=200 train.job_deadline=false", walltime="00:01:00",
                 RUN_NAME="killed")
    result = pbs_lab.wait(job, timeout=200)
    log = result.log
    assert "walltime" in log and "exceeded limit" in log, log
    st = status(run_dir)
    assert (st["state"], st["reason"], st["signal"]) == ("stopped", "signal", "SIGTERM"), (st, log)
    assert_whole_checkpoint(run_dir, st)
    started = stamp(result.info["stime"])
    term_to_checkpoint = Path(st["checkpoint"]).stat().st_mtime - (started + 60)
    print(f"\nwalltime TERM to stop checkpoint: {term_to_checkpoint:.1f} s", file=sys.stderr)
    assert term_to_checkpoint < 10, term_to_checkpoint


def test_array_subjobs_have_a_run_directory_each(pbs_lab: PbsLab):
    """(g) qsub -J 1-2: two subjobs, each its own run directory (<array>-<index>), each completed."""
    work = pbs_lab.workdir("array")
    array = pbs_lab.submit(edited_script(work, "pbs.sh"), "-J", "1-2", out=work / "array.^array_index^.out",
                           variables=variables(work, "train.epochs=1"))
    number = array.split("[")[0]
    for index in (1, 2):
        result = pbs_lab.wait(f"{number}[{index}].{array.split('.', 1)[1]}", timeout=240)
        assert result.info["Exit_status"] == 0, result.log
        assert status(work / "runs" / f"{number}-{index}")["state"] == "completed"


def test_scaling_sweep_of_one_and_two_nodes_in_one_job(pbs_lab: PbsLab):
    """(h) jobscripts/scaling_polaris.sh through the PALS stand-in: 1 and 2 nodes in one PBS job, the
    all-reduce on both, and its report with the scaling model's prediction and error beside each point."""
    work = pbs_lab.workdir("scaling")
    job = submit(pbs_lab, work, "scaling_polaris.sh", "", pals=True, EPOCHS="1", SWEEP_DIR=str(work / "sweep"),
                 OVERRIDES="log.console=plain train.precision=fp32 log.tensorboard=false data.synthetic_train=4000")
    result = pbs_lab.wait(job, timeout=300)
    assert result.info["Exit_status"] == 0, result.log
    assert (work / "sweep" / "scaling.md").exists(), result.log
    launches = (work / "pals.log").read_text()
    assert "mpiexec -n 2 --ppn 2 --depth 8 --cpu-bind depth" in launches, launches
    assert "mpiexec -n 4 --ppn 2 --depth 8 --cpu-bind depth" in launches, launches
    assert "hpc_mnist.comm --json" in launches, launches  # the all-reduce on both hosts, for the predictions
    report = (work / "sweep" / "scaling.md").read_text()
    # 2 ranks on one node, 4 on two: both at the comm sweeps' sizes, so the model is fitted on both, predicts none;
    # or, where the two steps leave it no compute (noise on a loaded machine), the report says why it has no model
    assert ("a step pays " in report and "not fitted on: none measured" in report) or (
        "No prediction: the points at 2, 4 ranks leave no compute for a step" in report), report


@pytest.mark.parametrize("script", ["polaris.sh", "aurora.sh"])
def test_alcf_scripts_through_the_pals_stand_in(pbs_lab: PbsLab, script: str):
    """(i) Polaris's and Aurora's scripts as users edit them, with the stand-in for PALS's mpiexec and no site
    modules (SITE_MODULES=0): the PBS environment, the node file, the launch line, the GPU-affinity wrapper's
    invocation (Polaris), the doctor and the run are real."""
    work = pbs_lab.workdir(script.split(".")[0])
    job = submit(pbs_lab, work, script, "train.epochs=1 log.name=run", pals=True, DOCTOR="1")
    result = pbs_lab.wait(job, timeout=240)
    log = result.log
    assert result.info["Exit_status"] == 0, log
    assert "SITE_MODULES=0" in log, log
    summary = json.loads((work / "runs" / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"]) == (4, 2, "mpi"), summary
    launches = (work / "pals.log").read_text()
    wrapper = "gpu_affinity_polaris.sh" if script == "polaris.sh" else "--cpu-bind list:"
    assert launches.count("mpiexec -n 4 --ppn 2 ") == 2 and wrapper in launches, launches  # doctor, training


def test_a_successor_is_placed_away_from_the_runs_bad_hosts(pbs_lab: PbsLab):
    """A run whose record names its job's host bad (as the job script writes it after a rank lost there; under
    MPICH's mpiexec a killed rank takes the others with it, so here the record is written while the job trains)
    stops for the walltime, and its successor names the other host in its select (OpenPBS has no "not this
    host"), runs there only, shows the bad host on its start panel, and ends the run."""
    work = pbs_lab.workdir("pbs-bad-host")
    name = unique_name(work)
    first = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs=12 train.deadline_margin=90", "-N", name,
                   "-l", "select=1:ncpus=2:host=hp-n1", walltime="00:02:00")
    run_dir = work / "runs" / first.split(".")[0]
    deadline = time.monotonic() + 150
    while not (run_dir / "status.json").exists():
        assert time.monotonic() < deadline and pbs_lab.state(first) in pbs_lab.ALIVE, pbs_lab.info(first)
        time.sleep(0.2)
    (run_dir / "bad-hosts.json").write_text(json.dumps(
        {"hosts": {"hp-n1": {"why": "rank lost (rank 1)", "when": "2026-12-06T00:00:00Z", "job": first}}}))
    lengthened, deadline = {first}, time.monotonic() + 600
    while True:  # until the newest job of the chain has ended other than by a stop for the walltime (75)
        jobs = jobs_named(pbs_lab, name)
        for job in sorted(set(jobs) - lengthened):  # a successor gets the time to end the run
            pbs_lab.run(["qalter", "-l", "walltime=00:10:00", job], check=False)
            lengthened.add(job)
        infos = [pbs_lab.info(j) for j in jobs]
        if infos[-1]["job_state"] == "F" and infos[-1].get("Exit_status") != 75:
            break
        assert time.monotonic() < deadline, [(i["job_state"], i.get("Exit_status")) for i in infos]
        time.sleep(0.3)
    logs = [pbs_lab.job(j).log for j in jobs]
    assert len(jobs) >= 2 and infos[0]["Exit_status"] == 75, logs[0]  # stopped for the walltime, with a checkpoint
    assert f"continues run {run_dir.name} after job {first} ends" in logs[0], logs[0]
    assert infos[-1]["Exit_status"] == 0, logs[-1]
    for info, log in zip(infos[1:], logs[1:], strict=True):
        assert info["Resource_List"]["select"] == "1:ncpus=2:host=hp-n2", info["Resource_List"]
        assert info["exec_host"].startswith("hp-n2/") and "+" not in info["exec_host"], info["exec_host"]
        assert "bad hosts, not used again by this run: hp-n1 (rank lost (rank 1)" in log, log
    assert epochs_logged(run_dir) == list(range(1, 13))


def test_hpc_mnist_stop_from_the_login_node_ends_the_job_without_a_continuation(pbs_lab: PbsLab,
                                                                              uninterrupted: Path):
    """`hpc-mnist status` and `hpc-mnist stop` on the server host (the login node) for a job that hpuser's
    pbs.sh runs: the row shows PBS's RUNNING; the stop checkpoints, the job ends without a successor, and the
    same RUN_NAME submitted again resumes to the straight run's weights."""
    work = pbs_lab.workdir("login-stop")
    name = unique_name(work)
    run_dir = work / "runs" / "stopped"
    job = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", "-N", name, RUN_NAME="stopped")
    wait_for_epoch(pbs_lab, job, run_dir)
    row = json.loads(pbs_lab.run([sys.executable, "-m", "hpc_mnist", "status", str(run_dir), "--json"]).stdout)[0]
    assert (row["state"], row["scheduler"], row["jobs"], row["job_states"]) == (
        "running", "pbs", [job], {job: "RUNNING"}), row
    pbs_lab.run([sys.executable, "-m", "hpc_mnist", "stop", str(run_dir)])
    result = pbs_lab.wait(job, timeout=90)
    st = status(run_dir)
    assert (st["state"], st["reason"], st["requeue"]) == ("stopped", "user stop", False), (st, result.log)
    assert_whole_checkpoint(run_dir, st)
    assert jobs_named(pbs_lab, name) == [job], "a stopped run was continued"
    again = submit(pbs_lab, work, "pbs.sh", f"{SLOW} train.epochs={EPOCHS}", RUN_NAME="stopped")
    result = pbs_lab.wait(again, timeout=240)
    assert result.info["Exit_status"] == 0, result.log
    assert epochs_logged(run_dir) == list(range(1, EPOCHS + 1))
    assert_same_weights(run_dir / "model.pt", uninterrupted)

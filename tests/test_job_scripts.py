"""The job scripts' own logic (launch/jobs.sh) with a stand-in trainer and stub scontrol: what they
requeue, what they say, what they exit with. Fast and without a scheduler; the same behaviour on the lab's
real Slurm is in cluster/test_stops.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.processes import REPO, clean_env

STUBS = REPO / "tests" / "stubs"
SCRIPTS = ["slurm.sh", "perlmutter.sh", "frontier.sh"]
DEADLINE_STOP = {"state": "stopped", "reason": "deadline", "signal": None, "requeue": True, "exit_code": 75}
CANCELLED = {"state": "stopped", "reason": "signal", "signal": "SIGTERM", "requeue": False, "exit_code": 75}


def fake_trainer(tmp_path: Path, status: dict | None, code: int, sleep: float = 0) -> Path:
    """A PYTHON that records its arguments and the stop file it was given, writes `status` where the job
    script asks for it (as rank 0 does), and exits with `code`; `-m hpc_mnist.job` (what the job script asks the
    package after the launch: the status, the PBS continuation) is the real one."""
    fake = tmp_path / "python"
    write = f"printf '%s' '{json.dumps(status)}' > \"$HPC_MNIST_STATUS_FILE\"" if status else ":"
    fake.write_text(f"""#!/bin/bash
case "$*" in "-m hpc_mnist.job "*) exec {sys.executable} "$@" ;; esac   # the real status and continuation logic
echo "python $* stop=$HPC_MNIST_STOP_FILE" >> "$STUB_LOG"
trap 'echo "python got $1" >> "$STUB_LOG"' USR1 TERM
for _ in $(seq {int(sleep * 20)}); do sleep 0.05; done
{write}
exit {code}
""".replace("$1", "SIGNAL"))
    fake.chmod(0o755)
    return fake


def job_env(tmp_path: Path, python: Path, path: str | None = None, **values: str) -> dict[str, str]:
    return clean_env(**{"DOCTOR": "0", "PATH": path or f"{STUBS}:{os.environ['PATH']}",
                        "STUB_LOG": str(tmp_path / "stub.log"),
                        "PYTHON": str(python), "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(REPO),
                        "SLURM_JOB_QOS": "regular", "HPC_MNIST_JOB_FILES": str(tmp_path / "jobfiles"),
                        "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "RANKS_PER_NODE": "1",
                        "MIOPEN_USER_DB_PATH": str(tmp_path / "miopen"), **values})


def run_job(script: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "jobscripts" / script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


def stub_log(tmp_path: Path) -> str:
    log = tmp_path / "stub.log"
    return log.read_text() if log.exists() else ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_deadline_stop_requeues(tmp_path, script):
    result = run_job(script, job_env(tmp_path, fake_trainer(tmp_path, DEADLINE_STOP, 75)), tmp_path)
    assert result.returncode == 75, result.stderr
    assert "scontrol requeue 4242" in stub_log(tmp_path)
    assert "requeueing job 4242" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_cancelled_run_is_not_requeued(tmp_path, script):
    """scancel stops the ranks with a checkpoint (exit 75) too; only the status file tells it apart."""
    result = run_job(script, job_env(tmp_path, fake_trainer(tmp_path, CANCELLED, 75)), tmp_path)
    assert result.returncode == 75, result.stderr
    assert "scontrol" not in stub_log(tmp_path)


def test_status_file_is_job_specific_and_cleared_at_start(tmp_path):
    stale = tmp_path / "jobfiles" / "4242.status.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps(DEADLINE_STOP))  # from an earlier segment of this job
    (tmp_path / "jobfiles" / "4242.stop").touch()
    result = run_job("slurm.sh", job_env(tmp_path, fake_trainer(tmp_path, None, 1)), tmp_path)
    assert result.returncode == 1
    assert "scontrol" not in stub_log(tmp_path)
    assert not stale.exists() and not (tmp_path / "jobfiles" / "4242.stop").exists()


def test_array_task_requeues_itself_not_the_whole_array(tmp_path):
    env = job_env(tmp_path, fake_trainer(tmp_path, DEADLINE_STOP, 75), SLURM_JOB_ID="4245",
                  SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="3")
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 75, result.stderr
    assert "scontrol requeue 4242_3" in stub_log(tmp_path)
    assert (tmp_path / "jobfiles" / "4242_3.status.json").exists()


def test_no_scontrol_is_one_line(tmp_path):
    """In a container without Slurm's tools: say so in one line, keep the launch's status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(folder).iterdir() if Path(folder).is_dir() else []:
            if tool.name != "scontrol" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    env = job_env(tmp_path, fake_trainer(tmp_path, DEADLINE_STOP, 75), path=str(bin_dir))
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 75, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "scontrol" in line]
    assert len(lines) == 1 and "scontrol is not available here" in lines[0], result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("code", [0, 1, 3])
def test_job_script_exits_with_the_launch_status(tmp_path, script, code):
    result = run_job(script, job_env(tmp_path, fake_trainer(tmp_path, None, code)), tmp_path)
    assert result.returncode == code, result.stderr


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_batch_shell_forwards_no_signal(tmp_path):
    """Slurm signals the tasks itself (TERM at scancel and time limit); the early warning (USR1) goes
    to the batch shell only and must not reach ranks, which may not handle it yet. With no end time
    from squeue (the stub has none), the warning becomes the stop file."""
    env = job_env(tmp_path, fake_trainer(tmp_path, None, 0, sleep=3))
    proc = subprocess.Popen(["bash", str(REPO / "jobscripts" / "slurm.sh")], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: "python -m hpc_mnist.train" in stub_log(tmp_path))
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: (tmp_path / "jobfiles" / "4242.stop").exists(), timeout=10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "got" not in stub_log(tmp_path), stub_log(tmp_path)


# ---- PBS: the same logic with stub qstat/qsub; on the lab's real OpenPBS in cluster/test_pbs_jobs.py -----------------

PBS_SCRIPTS = ["pbs.sh", "polaris.sh", "aurora.sh"]


def pbs_env(tmp_path: Path, python: Path, **values: str) -> dict[str, str]:
    env = job_env(tmp_path, python, PBS_JOBID="4242.pbs-server", PBS_O_WORKDIR=str(REPO),
                  PBS_NODEFILE=str(tmp_path / "nodefile"), HOME="/nonexistent-home",
                  STUB_VARIABLES='{"CONFIG": "configs/mlp.yaml", "OVERRIDES": "train.epochs=9 a.b=1,2", '
                                 '"PBS_O_HOME": "/home/u"}', **values)
    del env["SLURM_JOB_ID"]
    (tmp_path / "nodefile").write_text("node1\n")
    return env


@pytest.mark.parametrize("script", PBS_SCRIPTS)
def test_pbs_deadline_stop_submits_the_continuation(tmp_path, script):
    status = {**DEADLINE_STOP, "run_dir": str(tmp_path / "runs" / "long")}
    result = run_job(script, pbs_env(tmp_path, fake_trainer(tmp_path, status, 75)), tmp_path)
    assert result.returncode == 75, result.stderr
    submitted = [line for line in stub_log(tmp_path).splitlines() if line.startswith("qsub ")]
    assert len(submitted) == 1, stub_log(tmp_path)
    assert submitted[0].startswith("qsub -W depend=afterany:4242.pbs-server -v CONFIG=configs/mlp.yaml,"
                                   'OVERRIDES="train.epochs=9 a.b=1,2",RUN_NAME=long,RESUBMIT_COUNT=1 '
                                   "-l select=2:ncpus=1 -l place=scatter -l walltime=00:30:00 -A lab -N hpc_mnist "
                                   "-o login1:/home/u/hpc_mnist.o4242.1 ")
    assert submitted[0].endswith(f"jobscripts/{script}")  # the same script (PBS's copy of it, in a real job)
    assert "job 4343.pbs-server continues run long after job 4242.pbs-server ends" in result.stdout


@pytest.mark.parametrize("status, count, why", [(CANCELLED, "0", "a qdel"), (DEADLINE_STOP, "10", "MAX_RESUBMITS")])
def test_pbs_no_continuation_after_a_qdel_or_past_max_resubmits(tmp_path, status, count, why):
    status = {**status, "run_dir": str(tmp_path / "runs" / "long")}
    result = run_job("pbs.sh", pbs_env(tmp_path, fake_trainer(tmp_path, status, 75), RESUBMIT_COUNT=count),
                     tmp_path)
    assert result.returncode == 75, result.stderr
    assert "qsub" not in stub_log(tmp_path), why
    if why == "MAX_RESUBMITS":
        assert "not continuing run long again (10 jobs submitted, MAX_RESUBMITS=10): resubmit with " \
               "RUN_NAME=long" in result.stdout


ALL_SCRIPTS = ["pbs.sh", "polaris.sh", "aurora.sh", "scaling_polaris.sh", "slurm.sh", "perlmutter.sh", "frontier.sh",
               "scaling_slurm.sh"]


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_a_job_script_run_outside_its_scheduler_says_so_in_one_line(tmp_path, script):
    """`bash jobscripts/polaris.sh` on a login node: one line and exit 2, before any module load or launch."""
    env = clean_env(PATH=f"{STUBS}:{os.environ['PATH']}", STUB_LOG=str(tmp_path / "stub.log"), DOCTOR="1")
    result = subprocess.run(["bash", f"jobscripts/{script}"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=60)
    pbs = script in PBS_SCRIPTS or script == "scaling_polaris.sh"
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"hpc_mnist: {script} runs inside a {'PBS' if pbs else 'SLURM'} job: submit it with "
        f"{'qsub' if pbs else 'sbatch'} ({'PBS_JOBID' if pbs else 'SLURM_JOB_ID'} is not set here)"]
    assert result.stdout == "" and stub_log(tmp_path) == ""


def slow_doctor(tmp_path: Path) -> Path:
    """A PYTHON whose doctor takes 2 s and whose trainer records which signals it started with ignored."""
    fake = tmp_path / "python"
    fake.write_text("""#!/bin/bash
echo "python $*" >> "$STUB_LOG"
case "$*" in *hpc_mnist.doctor*) sleep 2 ;; esac
case "$*" in *hpc_mnist.train*) echo "ignored $(sed -n 's/^SigIgn:\\t//p' /proc/$$/status)" >> "$STUB_LOG" ;; esac
""")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGUSR2"])
def test_usr1_and_usr2_during_start_up_never_end_the_job(tmp_path, scheduler, signame):
    """Slurm's --signal=B:USR1 warning lands at any moment of a short job's start-up; PBS's qsig reaches every
    process of the job. Neither may kill the job shell; the steps start with both signals ignored."""
    python = slow_doctor(tmp_path)
    env = pbs_env(tmp_path, python, DOCTOR="1") if scheduler == "pbs" else job_env(tmp_path, python, DOCTOR="1")
    proc = subprocess.Popen(["bash", str(REPO / "jobscripts" / f"{scheduler}.sh")], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: "hpc_mnist.doctor" in stub_log(tmp_path))
    for _ in range(3):
        proc.send_signal(getattr(signal, signame))
        time.sleep(0.1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    ignored = int(re.search(r"ignored ([0-9a-f]+)", stub_log(tmp_path))[1], 16)
    assert ignored & (1 << (signal.SIGUSR1 - 1)) and ignored & (1 << (signal.SIGUSR2 - 1)), hex(ignored)


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_term_during_start_up_starts_no_training(tmp_path, scheduler):
    """A cancel during the pre-flight check: the doctor ends (it got TERM from the scheduler too, here from
    its shell's process group), and the job ends without starting the trainer."""
    python = slow_doctor(tmp_path)
    env = pbs_env(tmp_path, python, DOCTOR="1") if scheduler == "pbs" else job_env(tmp_path, python, DOCTOR="1")
    proc = subprocess.Popen(["bash", str(REPO / "jobscripts" / f"{scheduler}.sh")], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: "hpc_mnist.doctor" in stub_log(tmp_path))
    os.killpg(proc.pid, signal.SIGTERM)  # as the scheduler does: every process of the job
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, out + err
    assert "hpc_mnist.train" not in stub_log(tmp_path)


def lost_on(run_dir: Path, host: str) -> dict:
    """The trainer's status after a rank on `host` was lost, this job having saved a checkpoint."""
    return {"state": "failed", "reason": "rank lost", "rank": 1, "rank_host": host, "lost_ranks": [1],
            "bad_hosts": [host], "requeue": True, "exit_code": 5, "run_dir": str(run_dir),
            "checkpoint": str(run_dir / "checkpoint-0001-000000.pt")}


def test_a_slurm_requeue_excludes_the_host_of_a_lost_rank(tmp_path):
    run_dir = tmp_path / "runs" / "4242"
    run_dir.mkdir(parents=True)
    env = job_env(tmp_path, fake_trainer(tmp_path, lost_on(run_dir, "n2"), 5), STUB_EXCLUDED="n9",
                  OVERRIDES=f"log.dir={run_dir.parent}")
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 5, result.stderr
    calls = [line for line in stub_log(tmp_path).splitlines() if line.startswith("scontrol ") and "show" not in line]
    assert calls == ["scontrol requeuehold 4242", "scontrol update JobId=4242 ExcNodeList=n9,n2",
                     "scontrol release 4242"]
    assert "hpc_mnist: recorded n2 as bad in" in result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "hpc_mnist: job 4242 requeued excluding n9, n2 (the run's bad hosts)",
        "hpc_mnist: a rank was lost (above), after this job had made progress with a checkpoint; requeueing job 4242 "
        "to continue"]
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == ["n2"]


def test_a_pbs_successor_is_placed_away_from_the_host_of_a_lost_rank(tmp_path):
    run_dir = tmp_path / "runs" / "long"
    run_dir.mkdir(parents=True)
    env = pbs_env(tmp_path, fake_trainer(tmp_path, lost_on(run_dir, "n2"), 5), OVERRIDES=f"log.dir={run_dir.parent}",
                  RUN_NAME="long")
    (tmp_path / "nodefile").write_text("n1\nn2\n")  # no spare: without n2 the job cannot relaunch inside itself
    result = run_job("pbs.sh", env, tmp_path)
    assert result.returncode == 5, result.stderr
    [qsub] = [line for line in stub_log(tmp_path).splitlines() if line.startswith("qsub ")]
    assert " -l select=1:ncpus=1:host=n1+1:ncpus=1:host=n3 -l place=scatter " in qsub  # stub pbsnodes: n1-n3
    assert "job 4343.pbs-server continues run long after job 4242.pbs-server ends" in result.stdout


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_a_job_on_a_bad_host_does_not_launch(tmp_path, scheduler):
    """Too few good hosts (here: 1 of the 2 the job has) is one line before the pre-flight check and the launch;
    the run directory keeps everything."""
    run_dir = tmp_path / "runs" / "r7"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint-0001-000000.pt").write_text("kept")
    (run_dir / "bad-hosts.json").write_text(json.dumps({"hosts": {"n2": {"why": "rank lost", "when": "", "job": ""}}}))
    python = fake_trainer(tmp_path, None, 0)
    values = {"RUN_NAME": "r7", "OVERRIDES": f"log.dir={run_dir.parent}", "DOCTOR": "1"}
    if scheduler == "pbs":
        env = pbs_env(tmp_path, python, **values)
        (tmp_path / "nodefile").write_text("n1\nn2\n")
    else:
        env = job_env(tmp_path, python, SLURM_JOB_NODELIST="n[1-2]", **values)
    result = run_job("pbs.sh" if scheduler == "pbs" else "slurm.sh", env, tmp_path)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("hpc_mnist")] == [
        f"hpc_mnist: error: this job's hosts n2 are recorded as bad in {run_dir}/bad-hosts.json, which leaves 1 of "
        "the 2 node(s) the job needs: not launching; resubmit away from them (sbatch --exclude=n2; qsub -l "
        f"select=...:host=<a good host>) or clear them with `hpc-mnist hosts {run_dir} --clear`"]
    assert "python -m" not in stub_log(tmp_path)  # neither the doctor nor the training started
    assert sorted(p.name for p in run_dir.iterdir()) == ["bad-hosts.json", "checkpoint-0001-000000.pt"]


def test_max_fruitless_stops_a_requeue_chain(tmp_path):
    """The third launch in a row without a new checkpoint: no requeue, one line (MAX_FRUITLESS=2 here: the
    second)."""
    run_dir = tmp_path / "runs" / "4242"
    run_dir.mkdir(parents=True)
    status = {**DEADLINE_STOP, "run_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoint-0001-000016.pt")}
    (run_dir / "chain.json").write_text(json.dumps({"fruitless": 0, "checkpoint": status["checkpoint"],
                                                    "job": "4242"}))
    env = job_env(tmp_path, fake_trainer(tmp_path, status, 75), OVERRIDES=f"log.dir={run_dir.parent}",
                  SLURM_RESTART_COUNT="1", MAX_FRUITLESS="2")
    first = run_job("slurm.sh", env, tmp_path)
    assert first.returncode == 75 and "requeueing job 4242" in first.stdout, first.stderr
    second = run_job("slurm.sh", {**env, "SLURM_RESTART_COUNT": "2"}, tmp_path)
    assert second.returncode == 75 and "requeueing" not in second.stdout
    assert "hpc_mnist: 2 launches in a row ended without a new checkpoint (MAX_FRUITLESS=2): not continuing run " \
           "4242" in second.stderr
    third = run_job("slurm.sh", {**env, "SLURM_RESTART_COUNT": "3"}, tmp_path)  # Slurm's own requeue, say
    assert third.returncode == 2 and "not launching run 4242" in third.stderr
    assert stub_log(tmp_path).count("scontrol requeue 4242") == 1


# --- healing inside the job (SPARE_NODES, MAX_RESTARTS) ---

def fails_then_completes(tmp_path: Path, first: dict, code: int) -> Path:
    """A PYTHON whose first training launch ends with `first` (exit `code`) and whose next ones complete; the
    doctor passes; `-m hpc_mnist.job` is the real one. Records every call, as fake_trainer does."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
case "$*" in "-m hpc_mnist.job "*) exec {sys.executable} "$@" ;; esac
echo "python $*" >> "$STUB_LOG"
case "$*" in *hpc_mnist.train*) ;; *) exit 0 ;; esac
if [ ! -e "{tmp_path}/launched" ]; then
    touch "{tmp_path}/launched"
    printf '%s' '{json.dumps(first)}' > "$HPC_MNIST_STATUS_FILE"
    exit {code}
fi
printf '%s' '{json.dumps({"state": "completed", "reason": None, "requeue": False})}' > "$HPC_MNIST_STATUS_FILE"
""")
    fake.chmod(0o755)
    return fake


def three_node_job(tmp_path: Path, scheduler: str, python: Path, **values: str) -> subprocess.CompletedProcess:
    """slurm.sh or pbs.sh in a job of nodes n1, n2, n3, with `values`."""
    if scheduler == "pbs":
        env = pbs_env(tmp_path, python, **values)
        (tmp_path / "nodefile").write_text("n1\nn2\nn3\n")
    else:
        env = job_env(tmp_path, python, SLURM_JOB_NODELIST="n[1-3]", SLURM_JOB_NUM_NODES="3", **values)
    return run_job("pbs.sh" if scheduler == "pbs" else "slurm.sh", env, tmp_path)


def launches(tmp_path: Path) -> list[str]:
    """The job's launches (`python -m hpc_mnist.launch ...`: the stand-in PYTHON records them, and runs none)."""
    return [line for line in stub_log(tmp_path).splitlines() if line.startswith("python -m hpc_mnist.launch ")]


def hosts_of(launch: str) -> str:
    return launch.split("--hosts ")[1].split()[0] if "--hosts " in launch else ""


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_a_lost_host_is_replaced_by_the_spare_inside_the_job(tmp_path, scheduler):
    """3 nodes, SPARE_NODES=1: trains on n1, n2 (pinned); n2's rank is lost after progress, and the job launches
    again at once on n1, n3, with no requeue and no successor."""
    run_dir = tmp_path / "runs" / "heal"
    run_dir.mkdir(parents=True)
    python = fails_then_completes(tmp_path, lost_on(run_dir, "n2"), 5)
    result = three_node_job(tmp_path, scheduler, python, RUN_NAME="heal", OVERRIDES=f"log.dir={run_dir.parent}",
                            SPARE_NODES="1")
    assert result.returncode == 0, result.stderr
    assert [hosts_of(launch) for launch in launches(tmp_path)] == ["n1,n2", "n1,n3"]
    assert ("hpc_mnist: a rank was lost (above), after this job had made progress with a checkpoint; relaunching "
            "inside job 4242" in result.stderr) and "(restart 1 of MAX_RESTARTS=3)" in result.stderr
    log = stub_log(tmp_path)
    assert "requeue" not in log and "qsub" not in log  # healed in place
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == ["n2"]


def test_without_restarts_left_the_job_requeues_as_before(tmp_path):
    run_dir = tmp_path / "runs" / "heal"
    run_dir.mkdir(parents=True)
    env = job_env(tmp_path, fails_then_completes(tmp_path, lost_on(run_dir, "n2"), 5), SLURM_JOB_NODELIST="n[1-3]",
                  SLURM_JOB_NUM_NODES="3", RUN_NAME="heal", OVERRIDES=f"log.dir={run_dir.parent}", SPARE_NODES="1",
                  MAX_RESTARTS="0")
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 5, result.stderr
    assert len(launches(tmp_path)) == 1 and "requeueing job 4242" in result.stdout


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_a_host_that_fails_the_doctor_is_left_out_when_a_spare_allows(tmp_path, scheduler):
    """The pre-flight check runs on all 3 hosts; it blames n2 alone: n2 is recorded bad, the check runs again on
    n1, n3 and passes, and the training runs there."""
    run_dir = tmp_path / "runs" / "doc"
    python = tmp_path / "python"  # a doctor whose report blames n2 while n2 is in the launch
    python.write_text(f"""#!/bin/bash
case "$*" in "-m hpc_mnist.job "*) exec {sys.executable} "$@" ;; esac
echo "python $*" >> "$STUB_LOG"
case "$*" in *hpc_mnist.doctor*)
    report=$(sed -E 's/.*--json ([^ ]+).*/\\1/' <<< "$*")
    case "$*" in *--hosts*n2*)
        printf '%s' '{{"checks": [{{"status": "fail", "message": "n2 is broken", "hosts": ["n2"]}}],
                      "bad_hosts": ["n2"]}}' > "$report"; exit 1 ;; esac ;;
esac
""")
    python.chmod(0o755)
    result = three_node_job(tmp_path, scheduler, python, RUN_NAME="doc", OVERRIDES=f"log.dir={run_dir.parent}",
                            SPARE_NODES="1", DOCTOR="1")
    assert result.returncode == 0, result.stderr
    doctor, again, train = launches(tmp_path)
    assert [hosts_of(launch) for launch in (doctor, again, train)] == ["n1,n2,n3", "n1,n3", "n1,n3"]
    assert "hpc_mnist.doctor" in doctor and "hpc_mnist.doctor" in again and "hpc_mnist.train" in train
    assert (f"hpc_mnist: n2 failed the pre-flight check (n2 is broken): recorded as bad in {run_dir}/bad-hosts.json; "
            "going on without it if the job's other hosts suffice") in result.stderr
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == ["n2"]


@pytest.mark.parametrize("spares, message", [
    ("3", "SPARE_NODES=3 but this job has 3 node(s), which leaves none to train on"),
    ("-1", "SPARE_NODES=-1: give 0 or more spare nodes"),
])
def test_too_many_spares_is_one_line_before_any_launch(tmp_path, spares, message):
    env = job_env(tmp_path, fake_trainer(tmp_path, None, 0), SLURM_JOB_NODELIST="n[1-3]", SLURM_JOB_NUM_NODES="3",
                  SPARE_NODES=spares, OVERRIDES=f"log.dir={tmp_path / 'runs'}")
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("hpc_mnist")] == [
        f"hpc_mnist: error: {message}: ask for the nodes to train on plus {spares} (sbatch -N, qsub -l select)"
        if spares == "3" else f"hpc_mnist: error: {message}"]
    assert not launches(tmp_path) and not (tmp_path / "runs").exists()


def test_a_launch_that_ended_gone_names_no_host_and_is_not_relaunched_inside_the_job(tmp_path):
    """MPICH's mpiexec kills every rank when one dies, so nobody records which: the job must not relaunch onto a
    host that may be dead; it requeues as before."""
    run_dir = tmp_path / "runs" / "heal"
    run_dir.mkdir(parents=True)
    gone = {"state": "running", "run_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoint-0001-000000.pt")}
    env = job_env(tmp_path, fails_then_completes(tmp_path, gone, 137), SLURM_JOB_NODELIST="n[1-3]",
                  SLURM_JOB_NUM_NODES="3", RUN_NAME="heal", OVERRIDES=f"log.dir={run_dir.parent}", SPARE_NODES="1")
    result = run_job("slurm.sh", env, tmp_path)
    assert result.returncode == 137, result.stderr
    assert len(launches(tmp_path)) == 1 and "requeueing job 4242" in result.stdout
    assert "relaunching" not in result.stderr


def test_a_launcher_that_waits_for_a_cut_off_host_is_ended_and_the_job_relaunches(tmp_path):
    """The ranks recorded a quiet host and ended, but the launcher (srun) waits for that host's tasks until Slurm
    declares it down: LAUNCH_GRACE seconds later the job script ends the launcher and relaunches."""
    run_dir = tmp_path / "runs" / "heal"
    run_dir.mkdir(parents=True)
    quiet = {**lost_on(run_dir, "n2"), "reason": "rank quiet", "exit_code": 4}
    python = fails_then_completes(tmp_path, quiet, 4)
    python.write_text(python.read_text().replace("    exit 4\n", "    exec sleep 120\n"))  # it lingers
    started = time.monotonic()
    result = three_node_job(tmp_path, "slurm", python, RUN_NAME="heal", OVERRIDES=f"log.dir={run_dir.parent}",
                            SPARE_NODES="1", LAUNCH_GRACE="2")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # not the 120 s the launcher would have waited
    assert "hpc_mnist: the ranks recorded why they ended 2 s ago, and the launcher still waits" in result.stderr
    assert [hosts_of(launch) for launch in launches(tmp_path)] == ["n1,n2", "n1,n3"]

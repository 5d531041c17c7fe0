"""`python -m hpc_mnist.job`, what the job scripts (launch/jobs.sh) ask of the package after their launch, on
real status files written by rundir.write_status: whether the job continues the run and why, what a status
left `running` becomes (both copies), and one line, never a traceback, for what it cannot read. The job
scripts around it: tests/cluster/test_job_scripts.py and test_launch.py; on real schedulers: tests/cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import MPIEXEC
from helpers.processes import REPO, clean_env
from hpc_mnist.runtime import rundir, status

STUBS = REPO / "tests" / "stubs"
GONE = ("hpc_mnist: the launch ended (exit 137) without the ranks recording why: a rank or its node died (the OOM "
        "killer, a node failure; the launcher's report above names it); ")
CONTINUE, DONE, MISTAKE = 0, 1, 2


def job(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_mnist.job", *args], capture_output=True, text=True,
                          cwd=REPO, env=clean_env(status.STATUS_FILE_VAR, **env), timeout=60)


def after_launch(copy: Path, *more: str, scheduler: str = "slurm", code: int = 137) -> subprocess.CompletedProcess:
    return job("after-launch", "--scheduler", scheduler, "--exit", str(code), "--status", str(copy), *more)


@pytest.fixture
def written(tmp_path, monkeypatch):
    """write(state, ...): the trainer's status of run `r7`, in its run directory and in the job's copy, as
    rundir.write_status writes them under a job script; returns the job's copy."""
    run_dir, copy = tmp_path / "runs" / "r7", tmp_path / "jobs" / "42.status.json"
    run_dir.mkdir(parents=True)
    copy.parent.mkdir()
    monkeypatch.setenv(status.STATUS_FILE_VAR, str(copy))

    def write(state: str, **facts) -> Path:
        rundir.write_status(run_dir, state, **facts)
        return copy
    return write


def both(copy: Path) -> list[dict]:
    return [json.loads(copy.read_text()), json.loads((Path(json.loads(copy.read_text())["run_dir"]) /
                                                      "status.json").read_text())]


def test_ranks_killed_after_saving_a_checkpoint_continue_the_run(written):
    """The launch ended with the status still running (a launcher killed every rank, a host died): one line,
    both copies failed, gone, and requeue true: this job's ranks had saved a checkpoint."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0002-000000.pt", epochs_done=2)
    before = json.loads(copy.read_text())
    result = after_launch(copy)
    assert result.returncode == CONTINUE, result.stderr
    assert result.stderr == GONE + "this job had saved checkpoint-0002-000000.pt, the newest checkpoint\n"
    assert result.stdout == "the ranks were lost (above), after this job had made progress\nr7\n"
    for now in both(copy):
        assert now == {**before, "state": "failed", "reason": "gone", "requeue": True}  # nothing else changes
    assert rundir.read_status(Path(before["run_dir"]))["reason"] == "gone"


def test_ranks_killed_before_any_checkpoint_end_the_job(written):
    """No checkpoint in this job: a rank that dies at the same place again must not requeue the job forever."""
    copy = written("running")
    result = after_launch(copy, scheduler="pbs")
    assert result.returncode == DONE and result.stdout == ""
    assert result.stderr == GONE + "the newest checkpoint is kept: resubmit with RUN_NAME=r7 to continue\n"
    for now in both(copy):
        assert (now["state"], now["reason"], now["requeue"]) == ("failed", "gone", False)


def test_ranks_killed_while_the_job_was_being_stopped_end_it(written):
    """A scancel or qdel whose stop a rank did not survive ends the job, whatever its ranks had saved."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0001-000000.pt")
    result = after_launch(copy, "--stopping", "TERM")
    assert result.returncode == DONE and result.stdout == ""
    assert result.stderr == GONE + "the newest checkpoint is kept: resubmit with RUN_NAME=r7 to continue\n"
    assert [(s["state"], s["reason"], s["requeue"]) for s in both(copy)] == [("failed", "gone", False)] * 2


def test_not_stopping_is_an_empty_stopping(written):
    """The job script passes its JOB_STOPPING as it is: empty while nothing stops the job."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0001-000000.pt")
    assert after_launch(copy, "--stopping", "").returncode == CONTINUE


@pytest.mark.parametrize("scheduler, why", [("slurm", "stopped for the time limit"),
                                            ("pbs", "stopped for the walltime")])
def test_a_deadline_stop_continues_the_run_and_leaves_the_status_alone(written, scheduler, why):
    copy = written("stopped", reason="deadline", exit_code=75, checkpoint="/x/runs/r7/checkpoint-0001-000016.pt")
    text = copy.read_text()
    result = after_launch(copy, scheduler=scheduler, code=75)
    assert (result.returncode, result.stdout, result.stderr) == (CONTINUE, f"{why}\nr7\n", "")
    assert copy.read_text() == text


@pytest.mark.parametrize("reason, code, why", [("rank lost", 5, "a rank was lost"),
                                               ("rank quiet", 4, "a rank went quiet")])
def test_a_rank_lost_or_quiet_after_progress_continues_the_run(written, reason, code, why):
    copy = written("failed", reason=reason, exit_code=code, requeue=True, rank=1)
    result = after_launch(copy, code=code)
    assert (result.returncode, result.stdout, result.stderr) == (
        CONTINUE, f"{why} (above), after this job had made progress\nr7\n", "")


@pytest.mark.parametrize("state, facts", [
    ("stopped", {"reason": "signal", "signal": "SIGTERM", "exit_code": 75}),  # scancel, qdel
    ("failed", {"reason": "rank lost", "exit_code": 5}),  # before this segment saved anything
    ("failed", {"reason": "rank quiet", "exit_code": 4}),
    ("completed", {}),
])
def test_other_endings_do_not_continue_the_run(written, state, facts):
    copy = written(state, **facts)
    text = copy.read_text()
    result = after_launch(copy, code=facts.get("exit_code", 0))
    assert (result.returncode, result.stdout, result.stderr) == (DONE, "", "")
    assert copy.read_text() == text


def test_a_run_directory_copy_no_longer_running_is_left_alone(written):
    """Only a copy that still says running is marked gone (a later writer's record stays as it is)."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0001-000000.pt")
    run_dir_copy = Path(json.loads(copy.read_text())["run_dir"]) / "status.json"
    later = {**json.loads(run_dir_copy.read_text()), "state": "completed"}
    status.write(run_dir_copy, later)
    assert after_launch(copy).returncode == CONTINUE
    assert json.loads(run_dir_copy.read_text()) == later
    assert json.loads(copy.read_text())["reason"] == "gone"


def test_the_status_file_defaults_to_the_jobs(written):
    copy = written("stopped", reason="deadline", exit_code=75)
    result = job("after-launch", "--scheduler", "slurm", "--exit", "75", HPC_MNIST_STATUS_FILE=str(copy))
    assert (result.returncode, result.stdout) == (CONTINUE, "stopped for the time limit\nr7\n")


def test_no_status_file_means_nothing_to_continue(tmp_path):
    """The ranks recorded nothing (a start that failed): the launch's own report says why; nothing to add."""
    result = after_launch(tmp_path / "none.status.json", code=2)
    assert (result.returncode, result.stdout, result.stderr) == (DONE, "", "")


def test_a_status_that_names_no_run_gives_an_empty_name(tmp_path):
    """What a stand-in trainer may write: the job script still gets its two lines."""
    copy = tmp_path / "s.json"
    copy.write_text('{"reason": "deadline", "requeue": true}\n')
    result = after_launch(copy, code=75)
    assert (result.returncode, result.stdout) == (CONTINUE, "stopped for the time limit\n\n")


@pytest.mark.parametrize("text, said", [
    ('{"state": "running", "requeue": tr', "is not JSON"),  # cut short (not by our writer: it renames)
    ("", "is not JSON"),
    ("[1, 2]", "holds a list, not a status"),
])
def test_a_malformed_status_file_is_one_line(tmp_path, text, said):
    copy = tmp_path / "42.status.json"
    copy.write_text(text)
    result = after_launch(copy)
    assert result.returncode == MISTAKE and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"hpc_mnist: error: the status file {copy} {said}"), result.stderr
    assert copy.read_text() == text


def test_an_unreadable_status_file_is_one_line(tmp_path):
    copy = tmp_path / "42.status.json"
    copy.mkdir()  # unreadable as a file, even to root (a file with mode 0 is readable to root: CI runs as root)
    result = after_launch(copy)
    assert result.returncode == MISTAKE
    assert result.stderr.startswith(f"hpc_mnist: error: cannot read the status file {copy}: ")


def test_a_status_that_cannot_be_rewritten_is_one_line(written, tmp_path):
    """A folder in the way of the atomic rename: one line, and the job does not continue on a half-done rule."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0001-000000.pt")
    (copy.parent / f".{copy.name}.tmp").mkdir()
    result = after_launch(copy)
    assert result.returncode == MISTAKE and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith(f"hpc_mnist: error: cannot write the status file {copy}: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, said", [
    ([], "the following arguments are required: command"),
    (["requeue"], "invalid choice: 'requeue'"),
    (["after-launch", "--scheduler", "slurm", "--exit", "x", "--status", "s"], "invalid int value: 'x'"),
    (["after-launch", "--scheduler", "lsf", "--exit", "0", "--status", "s"], "invalid choice: 'lsf'"),
    (["after-launch", "--scheduler", "slurm", "--exit", "0"], "after-launch needs --status FILE or "
                                                               "$HPC_MNIST_STATUS_FILE"),
    (["continue-pbs", "--script", "s.sh", "--run-name", "r7"], "the following arguments are required: --count"),
])
def test_usage_mistakes_are_one_line(args, said):
    result = job(*args)
    assert result.returncode == MISTAKE and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and said in result.stderr, result.stderr
    assert result.stderr.startswith("hpc_mnist: error: python -m hpc_mnist.job")


def test_continue_pbs_outside_a_pbs_job_is_one_line():
    result = job("continue-pbs", "--script", "jobscripts/pbs.sh", "--run-name", "r7", "--count", "1")
    assert (result.returncode, result.stdout) == (MISTAKE, "")
    assert result.stderr == "hpc_mnist: error: no PBS job here (PBS_JOBID is not set): nothing to continue\n"


def test_continue_pbs_submits_the_successor_and_prints_its_id(tmp_path):
    """With stub qstat and qsub (the real OpenPBS: tests/cluster/test_pbs_jobs.py)."""
    log = tmp_path / "stub.log"
    result = job("continue-pbs", "--script", "/spool/4242.SC", "--run-name", "r7", "--count", "2",
                 PATH=f"{STUBS}:{os.environ['PATH']}", STUB_LOG=str(log), PBS_JOBID="4242.pbs-server",
                 STUB_VARIABLES='{"CONFIG": "configs/mlp.yaml", "RUN_NAME": "r7", "RESUBMIT_COUNT": "1"}')
    assert (result.returncode, result.stdout, result.stderr) == (0, "4343.pbs-server\n", "")
    qsub = [line for line in log.read_text().splitlines() if line.startswith("qsub ")]
    assert qsub == ["qsub -W depend=afterany:4242.pbs-server -v CONFIG=configs/mlp.yaml,RUN_NAME=r7,RESUBMIT_COUNT=2 "
                    "-l select=2:ncpus=1 -l place=scatter -l walltime=00:30:00 -A lab -N hpc_mnist "
                    "-o login1:/home/u/hpc_mnist.o4242.2 /spool/4242.SC"]


def test_the_job_command_needs_neither_torch_nor_the_trainer():
    """A job script runs it after every launch: standard library only (and the package's status rules)."""
    code = ("import sys, hpc_mnist.job; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('hpc_mnist', 'yaml', 'numpy'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=clean_env(),
                          timeout=60)
    assert done.stdout.strip() == str(sorted(["hpc_mnist", "hpc_mnist.errors", "hpc_mnist.job", "hpc_mnist.runtime",
                                              "hpc_mnist.runtime.badhosts", "hpc_mnist.runtime.chain",
                                              "hpc_mnist.runtime.launch_report", "hpc_mnist.runtime.pbs",
                                              "hpc_mnist.runtime.shell",
                                              "hpc_mnist.runtime.slurm", "hpc_mnist.runtime.status"])), done.stderr


LOST = {"reason": "rank lost", "rank": 1, "rank_host": "n2", "rank_pid": 99, "lost_ranks": [1], "bad_hosts": ["n2"]}


def test_a_rank_lost_names_its_host_bad_in_the_run_directory(written):
    """The trainer's rank-lost status names the host (peers.lost_error's bad_hosts): recorded with why, when and
    the job, said in one line; the run continues (progress was made) and will not use the host again."""
    copy = written("failed", **LOST, requeue=True, epochs_done=2, checkpoint="/x/runs/r7/checkpoint-0002-000000.pt")
    result = after_launch(copy, "--job", "4242", code=5)
    assert result.returncode == CONTINUE, result.stderr
    run_dir = Path(json.loads(copy.read_text())["run_dir"])
    record = json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]
    assert list(record) == ["n2"] and (record["n2"]["why"], record["n2"]["job"]) == ("rank lost (rank 1) in epoch 3",
                                                                                    "4242")
    assert record["n2"]["when"].endswith("Z")
    assert result.stderr == (f"hpc_mnist: recorded n2 as bad in {run_dir}/bad-hosts.json (rank lost (rank 1) in "
                             f"epoch 3): this run will not use it again (`hpc-mnist hosts {run_dir} --clear` clears "
                             "the list)\n")
    again = after_launch(copy, "--job", "4243", code=5)
    assert again.stderr == "" and json.loads((run_dir / "bad-hosts.json").read_text())["hosts"] == record


def test_a_status_left_running_names_no_host(written):
    """Ranks that died without recording why (`gone`) name nobody: nothing is recorded."""
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0002-000000.pt")
    assert after_launch(copy).returncode == CONTINUE
    assert not (Path(json.loads(copy.read_text())["run_dir"]) / "bad-hosts.json").exists()


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")
def test_a_status_left_running_names_the_host_the_launchers_report_names(written, tmp_path):
    """MPICH's mpiexec kills every rank when one dies, so the ranks record nothing, but its report names the host:
    kept by the job script (--launch-output), it makes the host bad, and the job relaunches here on the rest."""
    report = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", "import os, signal; "
                             "os.environ['PMI_RANK'] == '1' and os.kill(os.getpid(), signal.SIGKILL)"],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode != 0 and "BAD TERMINATION" in report.stdout + report.stderr, report
    output = tmp_path / "launch-output"
    output.write_text(f"epoch  train loss\n{report.stdout}")  # Hydra's report is on its standard output
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\nspare\nother\n")
    copy = written("running", checkpoint="/x/runs/r7/checkpoint-0002-000000.pt")
    result = job("after-launch", "--scheduler", "pbs", "--exit", "9", "--status", str(copy), "--launch-output",
                 str(output), "--restarts-left", "3", "--spares", "1", PBS_NODEFILE=str(nodefile))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (CONTINUE, "here"), result
    host = socket.gethostname()
    assert f"a rank or its node died (the OOM killer, a node failure; on {host}, as the launcher's report above " \
           "says)" in result.stderr, result.stderr
    for st in both(copy):
        assert (st["state"], st["reason"], st["bad_hosts"], st["requeue"]) == ("failed", "gone", [host], True)
    run_dir = Path(json.loads(copy.read_text())["run_dir"])
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == [host]


def test_a_chain_without_progress_stops_at_max_fruitless(written):
    """Launches that end without a new checkpoint are counted in the run directory; at MAX_FRUITLESS the run is
    not continued, in one line; a new checkpoint starts the count again."""
    ckpt = "/x/runs/r7/checkpoint-0002-000000.pt"
    copy = written("stopped", reason="deadline", checkpoint=ckpt)
    run_dir = Path(json.loads(copy.read_text())["run_dir"])
    said = [after_launch(copy, "--job", "42", "--link", str(i), "--max-fruitless", "3", code=75) for i in range(4)]
    assert [r.returncode for r in said] == [CONTINUE, CONTINUE, CONTINUE, DONE]
    assert said[3].stdout == "" and said[3].stderr == (
        "hpc_mnist: 3 launches in a row ended without a new checkpoint (MAX_FRUITLESS=3): not continuing run r7, its "
        "newest checkpoint kept; find the cause in the logs above, then resubmit with RUN_NAME=r7 (a new "
        "submission counts anew)\n")
    record = json.loads((run_dir / "chain.json").read_text())
    assert record == {"fruitless": 3, "checkpoint": ckpt, "job": "42", "status_time": record["status_time"]}
    assert record["status_time"] == json.loads(copy.read_text())["time"]
    rundir.write_status(run_dir, "stopped", reason="deadline", checkpoint=ckpt.replace("0002", "0003"))
    assert after_launch(copy, "--job", "42", "--link", "4", "--max-fruitless", "3", code=75).returncode == CONTINUE
    assert json.loads((run_dir / "chain.json").read_text())["fruitless"] == 0


def before_launch(run_dir: Path, *more: str, **env: str) -> subprocess.CompletedProcess:
    return job("before-launch", "--scheduler", "pbs", *more, "--", "--config", "configs/mlp.yaml",
               f"log.dir={run_dir.parent}", f"log.name={run_dir.name}", **env)


def test_too_few_good_hosts_is_one_line_before_any_launch(tmp_path):
    run_dir = tmp_path / "runs" / "r7"
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1\nn1\nn2\nn2\n")
    assert before_launch(run_dir, PBS_NODEFILE=str(nodefile)).returncode == 0  # a new run
    run_dir.mkdir(parents=True)
    (run_dir / "bad-hosts.json").write_text(json.dumps({"hosts": {"n3": {"why": "x", "when": "y", "job": ""}}}))
    assert before_launch(run_dir, PBS_NODEFILE=str(nodefile)).returncode == 0  # not one of this job's
    (run_dir / "bad-hosts.json").write_text(json.dumps({"hosts": {"n2": {"why": "x", "when": "y", "job": ""}}}))
    before = sorted(p.name for p in run_dir.iterdir())
    result = before_launch(run_dir, PBS_NODEFILE=str(nodefile))
    assert result.returncode == MISTAKE and result.stdout == ""
    assert result.stderr == (f"hpc_mnist: error: this job's hosts n2 are recorded as bad in {run_dir}/bad-hosts.json,"
                             " which leaves 1 of the 2 node(s) the job needs: not launching; resubmit away from them "
                             "(sbatch --exclude=n2; qsub -l select=...:host=<a good host>) or clear them with "
                             f"`hpc-mnist hosts {run_dir} --clear`\n")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing deleted


def test_a_chain_without_progress_does_not_launch_again(tmp_path):
    """A scheduler that reruns the job by itself (Slurm's NODE_FAIL requeue, PBS's rerun) meets the count before
    its launch; a user's new submission (link 0, another job) counts anew."""
    run_dir = tmp_path / "runs" / "r7"
    run_dir.mkdir(parents=True)
    (run_dir / "chain.json").write_text(json.dumps({"fruitless": 3, "checkpoint": "c.pt", "job": "42"}))
    result = before_launch(run_dir, "--job", "42", "--link", "1", "--max-fruitless", "3")
    assert result.returncode == MISTAKE and result.stderr.startswith(
        "hpc_mnist: error: 3 launches in a row ended without a new checkpoint (MAX_FRUITLESS=3): not launching run r7")
    assert before_launch(run_dir, "--job", "43", "--link", "0", "--max-fruitless", "3").returncode == 0
    assert before_launch(run_dir, "--job", "42", "--link", "1", "--max-fruitless", "0").returncode == 0


def test_a_launch_whose_job_script_was_killed_is_caught_up_before_the_next(tmp_path):
    """Slurm's own requeue after a node failure kills the job script before its after-launch (measured on the
    lab): the next launch records the host the run directory's status names, counts that launch, and does not
    launch onto the host; once counted, a cleared host stays cleared."""
    run_dir = tmp_path / "runs" / "r7"
    run_dir.mkdir(parents=True)
    rundir.write_status(run_dir, "failed", **LOST, requeue=True, checkpoint=str(run_dir / "checkpoint-0002-000000.pt"))
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1\nn2\n")
    result = before_launch(run_dir, "--job", "42", "--link", "1", PBS_NODEFILE=str(nodefile))
    assert result.returncode == MISTAKE
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"hpc_mnist: recorded n2 as bad in {run_dir}/bad-hosts.json (rank lost (rank 1)")
    assert lines[1].startswith("hpc_mnist: error: this job's hosts n2 are recorded as bad") and len(lines) == 2
    assert json.loads((run_dir / "chain.json").read_text())["fruitless"] == 0  # that launch had saved a checkpoint
    (run_dir / "bad-hosts.json").unlink()  # as hpc-mnist hosts --clear leaves it: no hosts
    result = before_launch(run_dir, "--job", "42", "--link", "1", PBS_NODEFILE=str(nodefile))
    assert (result.returncode, result.stderr) == (0, "")

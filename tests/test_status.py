"""`hpc-mnist status` and `hpc-mnist stop` from a login node, as real processes on run directories with every
state, reason and broken file a reader can meet: one row each and never a traceback, no torch imported, a quick
start, the scheduler asked with a short timeout (stub clients on PATH), and a stop request only for a run that
is running. The stop of a real training run: tests/stops/test_user_stop.py."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.processes import REPO, clean_env
from hpc_mnist.runtime import rundir, stopfile

HOST = socket.gethostname()


# root as an ordinary user sees files: without the capabilities that let it read what its permissions refuse
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def hpc_mnist(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
              timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "hpc_mnist", *args], capture_output=True, text=True,
                          cwd=REPO, env=clean_env(**(env or {})), timeout=timeout)


def write_run(root: Path, name: str, status: dict | str | None = None, epochs: int = 4, rows: int = 2,
              checkpoints: int = 0, summary: dict | None = None) -> Path:
    """A run directory as the trainer leaves it (status.json, config.yaml, metrics.jsonl, checkpoints)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name: mlp\ntrain:\n  epochs: {epochs}\n  batch_size: 64\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": 0.5 + e / 10, "epoch_time_s": 30.0})
                                               + "\n" for e in range(1, rows + 1)))
    for e in range(1, checkpoints + 1):
        (run / f"checkpoint-{e:04d}-000000.pt").write_bytes(b"x")
    if status is not None:
        (run / "status.json").write_text(status if isinstance(status, str) else json.dumps(
            {"run_dir": str(run), "host": HOST, "pid": os.getpid(), "time": time.time(), **status}))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def rows(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout)}


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_run(root, "done", {"state": "completed", "reason": None, "epochs_done": 4, "step": 0}, rows=4,
              checkpoints=4, summary={"status": "completed", "test_acc": 0.9812, "segments": 2})
    write_run(root, "user", {"state": "stopped", "reason": "user stop", "requeue": False, "epochs_done": 1,
                             "step": 0, "stop_file": str(root / "user" / "stop")}, rows=1, checkpoints=1,
              summary={"status": "stopped", "segments": 1})
    write_run(root, "walltime", {"state": "stopped", "reason": "deadline", "requeue": True, "epochs_done": 2,
                                 "step": 16, "scheduler": "slurm", "jobs": ["41", "42"]}, rows=2, checkpoints=2)
    write_run(root, "lost", {"state": "failed", "reason": "rank lost", "error": "rank 1 (pid 7) on node7 is gone\n.."},
              rows=1)
    live = write_run(root, "live", {"state": "running", "epochs_done": 1, "step": 32, "stop_file": "x"},
                     rows=1, checkpoints=1, epochs=5)
    (live / "bad-hosts.json").write_text(json.dumps({"hosts": {"node9": {"why": "ECC", "when": "", "job": ""}}}))
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_run(root, "dead", {"state": "running", "pid": dead.pid})
    write_run(root, "torn", '{"state": "runn', rows=0)
    (root / "torn" / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.7, "epoch_time_s": 2}\n{"epoch": 2, "va')
    (root / "torn" / "bad-hosts.json").write_text("[1, 2")
    old = root / "old"  # a version before status.json: checkpoints only
    old.mkdir()
    (old / "checkpoint-0003-000000.pt").write_bytes(b"x")
    (root / ".jobs").mkdir()  # the job scripts' files: not a run
    (root / "notes").mkdir()  # not a run either
    return root


def test_every_state_reason_and_broken_file_is_one_row_without_a_traceback(runs):
    found = rows(hpc_mnist("status", str(runs), "--json"))
    assert sorted(found) == ["dead", "done", "live", "lost", "old", "torn", "user", "walltime"]
    done = found["done"]
    assert (done["state"], done["epochs_done"], done["epochs"], done["test_acc"], done["segments"]) == (
        "completed", 4, 4, 0.9812, 2)
    assert (done["checkpoint"], done["eta_s"], done["train_time_s"]) == ("checkpoint-0004-000000.pt", None, 120.0)
    assert (found["user"]["state"], found["user"]["reason"]) == ("stopped", "stopped by hpc-mnist stop")
    walltime = found["walltime"]
    assert (walltime["reason"], walltime["step"], walltime["eta_s"]) == ("time limit; its job continues it", 16, 60.0)
    assert (walltime["scheduler"], walltime["jobs"]) == ("slurm", ["41", "42"])
    assert found["lost"]["reason"] == "rank lost: rank 1 (pid 7) on node7 is gone"
    live = found["live"]  # this test's own pid on this host: running, 4 epochs to go at 30 s each
    assert (live["state"], live["eta_s"], live["bad_hosts"], live["val_acc"]) == ("running", 120.0, ["node9"], 0.6)
    assert found["dead"]["state"] == "failed"
    assert found["dead"]["reason"].startswith(f"gone: status.json says running, but pid {found['dead']['pid']}")
    torn = found["torn"]
    assert torn["state"] == "unreadable" and "is not JSON" in torn["reason"]
    assert torn["problems"] == ["metrics.jsonl line 2 is not an epoch row",
                                "bad-hosts.json is not JSON (half-written?)"]
    assert (torn["val_acc"], torn["epochs_done"]) == (0.7, 1)  # what could be read still is
    assert (found["old"]["state"], found["old"]["checkpoint"]) == ("unknown", "checkpoint-0003-000000.pt")
    assert "no status.json" in found["old"]["reason"]


def test_the_table_names_each_run_with_its_state_progress_and_bad_hosts(runs):
    shown = hpc_mnist("status", str(runs / "live"), str(runs / "walltime"), str(runs / "torn"))
    assert shown.returncode == 0, shown.stderr
    line = {r.split("│")[1].strip(): r for r in shown.stdout.splitlines() if r.startswith("│")}
    assert [c.strip() for c in line["live"].split("│")[1:-1]] == [
        "live", "running", "", "", "1/5 +32 steps", "60.00%", "", line["live"].split("│")[8].strip(), "", "30s",
        "2m00s", "node9"]
    assert "0001-000000, " in line["live"] and "s ago" in line["live"]
    assert "slurm 41, 42" in line["walltime"] and "time limit; its job continues it" in line["walltime"]
    assert "unreadable" in line["torn"]


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root reads all without setpriv")
def test_a_directory_this_user_cannot_read_is_a_row_that_says_so(runs):
    if os.geteuid() == 0:
        os.chown(runs / "done", 65534, 65534)  # another user's
    os.chmod(runs / "done", 0o700 if os.geteuid() == 0 else 0)  # closed to others
    found = rows(hpc_mnist("status", str(runs), "--json", prefix=tuple(AS_A_USER) if os.geteuid() == 0 else ()))
    assert found["done"]["state"] == "unreadable"
    assert found["done"]["reason"] == "cannot read the run directory: Permission denied"
    assert found["walltime"]["state"] == "stopped"  # the others as before


def test_status_imports_no_torch_and_starts_well_under_a_second(runs):
    probe = ("import sys, time; t = time.perf_counter(); from hpc_mnist import cli; code = cli.main(['status', "
             f"{str(runs)!r}, '--json']); print(time.perf_counter() - t, 'torch' in sys.modules, code, "
             "file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=clean_env())
    seconds, torch_loaded, code = done.stderr.split()[-3:]
    assert (torch_loaded, code) == ("False", "0"), done.stderr
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        assert hpc_mnist("status", str(runs)).returncode == 0
        walls.append(time.perf_counter() - start)
    assert min(walls) < 1.0, walls  # interpreter start included; about 0.15 s on an idle 2-core machine


def stubs(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """Scheduler clients (squeue=..., sacct=..., qstat=...) that run these bash lines: the environment that finds
    them first."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/bash\n{script}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_the_schedulers_word_is_shown_and_a_job_that_ended_makes_a_running_status_gone(tmp_path):
    """A run on another host (no pid to check from here): squeue lists job 43, sacct says 42 was cancelled."""
    env = stubs(tmp_path, squeue='case "$*" in *43*) echo "43 RUNNING";; esac',
                      sacct='case "$*" in *42*) echo "42|CANCELLED by 0";; esac')
    root = tmp_path / "runs"
    for name, job in (("on", "43"), ("off", "42")):
        write_run(root, name, {"state": "running", "host": "node1", "scheduler": "slurm", "jobs": [job]})
    found = rows(hpc_mnist("status", str(root), "--json", env=env))
    assert (found["on"]["state"], found["on"]["job_states"]) == ("running", {"43": "RUNNING"})
    assert (found["off"]["state"], found["off"]["job_states"]) == ("failed", {"42": "CANCELLED"})
    assert found["off"]["reason"] == "gone: status.json says running, but job 42 is CANCELLED"


def test_pbs_history_says_a_job_has_finished(tmp_path):
    env = stubs(tmp_path, qstat='echo \'{"Jobs": {"12.pbs": {"job_state": "F"}, "13.pbs": {"job_state": "R"}}}\'')
    root = tmp_path / "runs"
    for name, job in (("on", "13.pbs"), ("off", "12.pbs")):
        write_run(root, name, {"state": "running", "host": "node1", "scheduler": "pbs", "jobs": [job]})
    found = rows(hpc_mnist("status", str(root), "--json", env=env))
    assert (found["on"]["state"], found["on"]["job_states"]) == ("running", {"13.pbs": "RUNNING"})
    assert found["off"]["reason"] == "gone: status.json says running, but job 12.pbs is FINISHED"


def test_a_scheduler_that_does_not_answer_costs_its_timeout_and_nothing_else(tmp_path):
    env = stubs(tmp_path, squeue="sleep 30", sacct="exit 1")
    root = tmp_path / "runs"
    write_run(root, "r", {"state": "running", "host": "node1", "scheduler": "slurm", "jobs": ["7"]})
    start = time.perf_counter()
    found = rows(hpc_mnist("status", str(root), "--json", "--scheduler-timeout", "0.5", env=env))
    assert time.perf_counter() - start < 5
    assert (found["r"]["state"], found["r"]["job_states"]) == ("running", {})


def test_a_path_that_is_not_a_directory_is_one_line(tmp_path):
    done = hpc_mnist("status", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr == f"hpc_mnist: error: {tmp_path / 'nope'} is not a directory: name a run directory or a " \
                          "folder of runs (log.dir)\n"


# --- hpc-mnist stop ---

def test_stop_writes_the_users_request_into_the_stop_file_the_run_names(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])  # the run's rank 0, alive on this host
    try:
        run = write_run(tmp_path, "r", {"state": "running", "pid": sleeper.pid, "stop_file": str(tmp_path / "j.stop")})
        done = hpc_mnist("stop", str(run))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"asked run {run} (rank 0 on {HOST}) to stop at its next check with a "
                                      "checkpoint")
        request = json.loads((tmp_path / "j.stop").read_text())
        assert request["by"] == "user" and stopfile.by_user(tmp_path / "j.stop")
        again = hpc_mnist("stop", str(run))
        assert (again.returncode, again.stdout.split(";")[0]) == (0, f"run {run} was asked to stop already")
        shown = rows(hpc_mnist("status", str(run), "--json"))["r"]
        assert (shown["stop_requested"], shown["reason"]) == (True, "stop requested: stops at its next check")
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("status,line", [
    ({"state": "stopped", "reason": "user stop"},
     "is not running (stopped: stopped by hpc-mnist stop): nothing to stop"),
    ({"state": "running", "pid": 2**22 + 7}, "is not running (failed: gone: status.json says running, but pid"),
    ({"state": "running"}, "was started by an older hpc_mnist whose status.json names no stop file"),
])
def test_stop_of_a_run_that_is_not_running_is_one_line_exit_2(tmp_path, status, line):
    run = write_run(tmp_path, "r", status)
    done = hpc_mnist("stop", str(run))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"hpc_mnist: error: run {run} ") and line in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (run / "stop").exists()


def test_stop_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    done = hpc_mnist("stop", str(tmp_path))
    assert (done.returncode, done.stderr) == (2, f"hpc_mnist: error: {tmp_path} is not a run directory (hpc-mnist "
                                                 "status lists the runs under runs/)\n")


# --- the run's side: who asked decides whether the job continues ---

@pytest.mark.parametrize("content,reason,requeue", [("", "deadline", True), (None, "user stop", False)])
def test_a_users_request_ends_the_job_and_the_time_limits_continues_it(tmp_path, monkeypatch, content, reason,
                                                                       requeue):
    stop = tmp_path / "job.stop"
    monkeypatch.setenv(stopfile.VAR, str(stop))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("HPC_MNIST_STATUS_FILE", str(tmp_path / "77.status.json"))
    stop.write_text(content) if content is not None else stopfile.request(stop)
    (tmp_path / "r").mkdir()
    written = rundir.write_status(tmp_path / "r", "stopped", reason="deadline", exit_code=75)
    assert (written["reason"], written["requeue"], written["stop_file"]) == (reason, requeue, str(stop))
    assert (written["scheduler"], written["jobs"]) == ("slurm", ["77"])
    after = subprocess.run([sys.executable, "-m", "hpc_mnist.job", "after-launch", "--scheduler", "slurm", "--exit",
                            "75", "--status", str(tmp_path / "77.status.json")], capture_output=True, text=True,
                           cwd=REPO, env=clean_env())
    assert after.returncode == (0 if requeue else 1), after.stderr  # 0: the job script requeues the job


def test_watch_refreshes_in_place_on_a_terminal_and_ctrl_c_ends_it_quietly(runs):
    pid, fd = pty.fork()
    if pid == 0:  # the child: hpc-mnist status --watch on a terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "hpc_mnist", "status", "--watch", "--every", "0.2",
                                   str(runs / "live")], clean_env(COLUMNS="200"))
    out = b""
    deadline = time.monotonic() + 30
    while out.count(b"live") < 3 and time.monotonic() < deadline:  # the first table and two refreshes
        out += os.read(fd, 65536)
    os.kill(pid, signal.SIGINT)
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0, out[-2000:]
    assert out.count(b"live") >= 3 and b"\x1b[" in out and b"Traceback" not in out  # redrawn with cursor moves

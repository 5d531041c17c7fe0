"""A rank lost on a real machine: killed (the OOM killer, kill -9), stalled, or never started. A survivor names it
in one line with its host and pid (or where it was), status.json tells the truth (failed, why, requeue only
after progress), the checkpoints stay; a process that died without a word reads as failed to every reader."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.commands import ENDLESS_CNN, MPIEXEC, torchrun
from helpers.processes import REPO, clean_env, error_lines, free_port, popen, run_train, worker_pids
from helpers.runs import read_jsonl, status, stop_file, wait_for_rows
from hpc_mnist.core import checkpoint
from hpc_mnist.runtime import peers, rundir

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

HOST = socket.gethostname()
STALL_RUN = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false",
             "data.synthetic_train=4000"]


# --- killed ---

@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_killed_under_torchrun_is_named_by_a_survivor_within_seconds(tmp_path, victim):
    """kill -9 of one rank (what the OOM killer does): the lowest surviving rank names it first, in one line,
    before torchrun's report; status.json says failed with the rank; the epoch checkpoints stay."""
    proc = popen([*ENDLESS_CNN, f"log.dir={tmp_path}", "log.name=r"], torchrun())
    try:
        wait_for_rows(tmp_path / "r", 2, proc)
        pid = worker_pids(proc.pid)[victim]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = error_lines(err)
    survivor = 1 - victim
    prefix = "hpc_mnist: error: " if survivor == 0 else f"hpc_mnist: error (rank {survivor}): "
    assert len(ours) == 1, err[-3000:]
    assert ours[0].startswith(f"{prefix}rank {victim} (pid {pid}) on {HOST} is gone: its process no longer exists. "
                              f"Rank {survivor} stopped in epoch "), ours
    assert "the newest checkpoint, checkpoint-00" in ours[0] and "the same command continues from it" in ours[0]
    assert err.index(ours[0]) < err.index("ChildFailedError") if "ChildFailedError" in err else True
    assert "Traceback" not in err.split(ours[0])[0]  # our line comes first
    assert ended < 30, f"{ended:.1f} s from the kill to torchrun's exit"
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["rank"], st["rank_pid"], st["exit_code"], st["requeue"]) == \
        ("failed", "rank lost", victim, pid, 5, True)  # requeue: this segment saved checkpoints (progress)
    saved = checkpoint.existing(tmp_path / "r")
    assert saved and st["checkpoint"] == str(saved[-1]) and checkpoint.load(saved[-1])["epochs_done"] >= 2
    assert rundir.read_status(tmp_path / "r")["state"] == "failed"
    if victim == 0:
        return
    # Continued without epoch checkpoints, and the same rank killed again before the segment saved anything: a
    # job script must not requeue this time (a rank the OOM killer takes at the same place would loop).
    rows = len(read_jsonl(tmp_path / "r" / "metrics.jsonl"))
    proc = popen([*ENDLESS_CNN, "train.checkpoint_every=0", f"log.dir={tmp_path}", "log.name=r"], torchrun())
    try:
        wait_for_rows(tmp_path / "r", rows + 1, proc)
        os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["rank"], st["requeue"]) == ("failed", "rank lost", 1, False)


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")
def test_a_rank_killed_under_mpiexec_leaves_a_true_record(tmp_path):
    """MPICH's mpiexec (Hydra) SIGKILLs the other ranks as soon as one dies, and its report names a pid of its
    own choosing, not the dead rank's (measured): status.json is the record. It names the dead rank when the
    survivor got that far, and reads as failed (gone) when not; ranks.json maps pids to ranks. (With
    -disable-auto-cleanup the survivors live on, but Hydra signals them with SIGUSR1, even after a normal end
    of one rank, and may still exit before they speak: not used.)"""
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpc_mnist.train", *ENDLESS_CNN, f"log.dir={tmp_path}",
           "log.name=r"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_rows(tmp_path / "r", 2, proc)
        ranks_json = json.loads((tmp_path / "r" / "ranks.json").read_text())  # where each rank runs
        assert ranks_json["hosts"] == [HOST, HOST]
        os.kill(ranks_json["pids"][1], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        for _ in range(100):  # the survivor may outlive mpiexec
            if not peers.process_exists(ranks_json["pids"][0]):
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    named = f"rank 1 (pid {ranks_json['pids'][1]}) on {HOST} is gone: its process no longer exists."
    assert all(named in line for line in error_lines(err)), err
    st = rundir.read_status(tmp_path / "r")
    assert st["state"] == "failed" and st["reason"] in ("rank lost", "gone"), st
    if st["reason"] == "rank lost":
        assert (st["rank"], st["exit_code"]) == (1, 5) and named in st["error"]


def test_a_survivor_that_decides_late_does_not_take_the_reporter_that_exited_for_lost(tmp_path):
    """Rank 2 of three ends; rank 0 names it, records it and ends; rank 1 decides only then (the CI's load once
    delayed a survivor so on the Slurm lab) and finds rank 0's process gone. It must not name rank 0 lost nor
    overwrite rank 0's record (both hosts would be bad, and the job could not heal on its spare)."""
    port, procs = free_port(), []
    try:
        for rank in range(3):
            env = clean_env(OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE="3", LOCAL_RANK=str(rank),
                            LOCAL_WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            procs.append(subprocess.Popen([sys.executable, "tests/helpers/lost_peer.py", str(tmp_path)], cwd=REPO,
                                          env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    gone = f"rank 2 (pid {procs[2].pid}) on {HOST} is gone: its process no longer exists. "
    assert outs[0][0] == f"{gone}Rank 0 stopped in the test\n", outs[0]
    assert outs[1][0] == f"{gone}Rank 1 stopped in the test\n", outs[1]
    assert "Exception raised from" not in outs[1][1], outs[1][1][-3000:]  # nor torch's C++ stack for the store
    assert [p.returncode for p in procs] == [5, 5, 9]
    st = status(tmp_path)
    assert (st["state"], st["reason"], st["lost_ranks"], st["bad_hosts"], st["pid"]) == \
        ("failed", "rank lost", [2], [HOST], procs[0].pid), st


def test_a_running_status_whose_process_died_reads_as_failed(tmp_path, train_here):
    """kill -9 of a single-process run: nobody could write why; its status.json still says running, and every
    reader (and the next segment's start panel) is told the run failed."""
    proc = popen([*ENDLESS_CNN, f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    assert rundir.read_status(tmp_path / "r")["state"] == "running"  # alive: the lock is held
    proc.kill()
    proc.communicate()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "running"
    st = rundir.read_status(tmp_path / "r")
    assert (st["state"], st["reason"]) == ("failed", "gone")
    # stops at step 16
    result = train_here([*ENDLESS_CNN, f"log.dir={tmp_path}", "log.name=r"], env=stop_file(tmp_path))
    assert result.code == 75, result.err[-2000:]
    assert "its last process ended without recording why" in result.out


# --- stalled, or never started ---

# Where rank 1 stops responding, and how rank 0's error line names it: inside a training step, and in the
# work between steps whose collectives used to report every rank as behind.
# (Gathering step times is marked the same way as these two.)
PLACES = [("20", r"epoch 1 step 20, computing"), ("evaluate", r"epoch 1 step \d+, evaluating"),
          ("checkpoint", r"epoch 1 step \d+, writing a checkpoint")]


@pytest.mark.parametrize("place,named", PLACES, ids=[p for p, _ in PLACES])
def test_a_stalled_rank_is_named_and_every_rank_leaves_its_stacks(tmp_path, place, named):
    cmd = [*torchrun(), "-m", "hpc_mnist.train", *STALL_RUN, "dist.timeout=6", "log.timing=true", f"log.dir={tmp_path}",
           "log.name=r"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(HPC_MNIST_TEST_STALL=f"1:{place}"), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    started, error = time.monotonic(), None
    try:
        for line in proc.stderr:
            if line.startswith("hpc_mnist: error:"):
                error = line.strip()
                break
    finally:  # the stalled rank never answers (torchrun would wait 30 s for it): kill the workers, then torchrun
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            os.kill(int(pid), signal.SIGKILL)  # workers run in sessions of their own
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert error is not None
    assert time.monotonic() - started < 90
    assert error.startswith("hpc_mnist: error: a collective timed out after 6 s (dist.timeout): ")
    assert re.search(rf"rank 1 on {re.escape(socket.gethostname())} \({named}\) did not arrive;", error), error
    assert "rank 0 on" not in error
    dumps = {rank: (tmp_path / "r" / f"hang-rank{rank}.txt").read_text() for rank in (0, 1)}
    assert "maybe_stall" in dumps[1] and "waiting in a collective" in dumps[0].splitlines()[0]
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert (st["state"], st["exit_code"]) == ("failed", 4)


def test_a_rank_that_never_starts_fails_the_start_up_in_one_line(tmp_path):
    port = free_port()
    started = time.monotonic()
    result = run_train([*STALL_RUN, "dist.init_timeout=5", f"log.dir={tmp_path}"],
                       env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}, timeout=120)
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"rank 0 could not join the job's rendezvous at 127.0.0.1:{port} within 5 s (dist.init_timeout)" \
        in result.stderr
    assert "1/2 clients joined" in result.stderr
    assert not any(tmp_path.iterdir())  # a failed start leaves no run directory

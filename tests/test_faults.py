"""Faults a user meets on a real machine, on real processes: a rank the OOM killer (or a kill -9) takes, a loss
that breaks on one rank, a disk that fills. Each ends in one line naming what and where, a status.json that tells
the truth, and the newest sound checkpoint kept."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.commands import BASE, MPIEXEC, ranks, torchrun
from helpers.processes import REPO, clean_env, popen, run_train, worker_pids
from helpers.runs import read_jsonl, status, stop_file, wait_for_rows
from hpc_mnist.core import checkpoint
from hpc_mnist.runtime import peers, rundir

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

# A small CNN for many epochs: a kill after the second epoch's row lands long before the run could end.
RUN = [*BASE, "model.channels=[8,16]", "model.fc=32", "train.epochs=200", "dist.timeout=120"]
HOST = socket.gethostname()


def _our_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hpc_mnist: error")]


@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_killed_under_torchrun_is_named_by_a_survivor_within_seconds(tmp_path, victim):
    """kill -9 of one rank (what the OOM killer does): the lowest surviving rank names it first, in one line,
    before torchrun's report; status.json says failed with the rank; the epoch checkpoints stay."""
    proc = popen([*RUN, f"log.dir={tmp_path}", "log.name=r"], torchrun())
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
    ours = _our_lines(err)
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
    proc = popen([*RUN, "train.checkpoint_every=0", f"log.dir={tmp_path}", "log.name=r"], torchrun())
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
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpc_mnist.train", *RUN, f"log.dir={tmp_path}", "log.name=r"]
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
    assert all(named in line for line in _our_lines(err)), err
    st = rundir.read_status(tmp_path / "r")
    assert st["state"] == "failed" and st["reason"] in ("rank lost", "gone"), st
    if st["reason"] == "rank lost":
        assert (st["rank"], st["exit_code"]) == (1, 5) and named in st["error"]


def test_a_non_finite_loss_on_one_rank_stops_every_rank_naming_it(tmp_path):
    """Rank 1's loss turns NaN at step 5 of epoch 2: both ranks stop at the same check, the line names rank 1,
    epoch 2 and step 5, and epoch 1's checkpoint stays the newest."""
    result = run_train([*RUN, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"], launcher=ranks(2),
                       env={"HPC_MNIST_TEST_NAN": "1:2:5"}, timeout=180)
    assert result.returncode != 0
    ours = _our_lines(result.stderr)
    assert ours == [f"hpc_mnist: error: the loss became non-finite on rank 1 ({HOST}) in epoch 2 at step 5 "
                    "(learning rate 0.001): lower optim.lr, or use train.precision=fp32 or bf16"], result.stderr[-3000:]
    st = status(tmp_path / "r")
    assert (st["state"], st["exit_code"], st["reason"], st["rank"], st["epoch"], st["at_step"]) == \
        ("failed", 3, "non-finite loss", 1, 2, 5)
    assert [p.name for p in checkpoint.existing(tmp_path / "r")][-1] == "checkpoint-0001-000000.pt" == \
        Path(st["checkpoint"]).name
    assert [row["epoch"] for row in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1]


def test_a_running_status_whose_process_died_reads_as_failed(tmp_path, train_here):
    """kill -9 of a single-process run: nobody could write why; its status.json still says running, and every
    reader (and the next segment's start panel) is told the run failed."""
    proc = popen([*RUN, f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    assert rundir.read_status(tmp_path / "r")["state"] == "running"  # alive: the lock is held
    proc.kill()
    proc.communicate()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "running"
    st = rundir.read_status(tmp_path / "r")
    assert (st["state"], st["reason"]) == ("failed", "gone")
    result = train_here([*RUN, f"log.dir={tmp_path}", "log.name=r"], env=stop_file(tmp_path))  # stops at step 16
    assert result.code == 75, result.err[-2000:]
    assert "its last process ended without recording why" in result.out


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a file system that fills (root only; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_previous_one(small_disk, train_here):
    """In this process: nothing about a full disk needs a process boundary."""
    run = [*RUN, "model.name=mlp", "model.hidden=[64]", f"log.dir={small_disk}", "log.name=r"]
    assert train_here([*run, "train.epochs=1"]).code == 0
    _fill(small_disk, leave=16 * 1024)  # room for a metrics row and status.json, not a checkpoint
    result = train_here([*run, "train.epochs=2"])
    assert result.code == 2, result.err[-2000:]
    assert _our_lines(result.err) == [
        f"hpc_mnist: error: no space left on {small_disk / 'r'} while writing checkpoint-0002-000000.pt; the "
        "previous checkpoint checkpoint-0001-000000.pt is intact"], result.err[-2000:]
    saved = checkpoint.existing(small_disk / "r")
    assert [p.name for p in saved] == ["checkpoint-0001-000000.pt"] and checkpoint.load(saved[-1])["epochs_done"] == 1
    assert not list((small_disk / "r").glob(".*.tmp"))
    st = status(small_disk / "r")
    assert (st["state"], st["exit_code"], Path(st["checkpoint"]).name) == ("failed", 2, "checkpoint-0001-000000.pt")
    (small_disk / "filler").unlink()  # space again: the same command continues from epoch 1's checkpoint
    result = train_here([*run, "train.epochs=2"])
    assert result.code == 0 and "continuing" in result.out.splitlines()[0], result.err[-2000:]


def test_a_full_disk_costs_a_metrics_row_said_once_not_the_run(small_disk, capsys):
    from hpc_mnist.core.config import LogConfig
    from hpc_mnist.runtime.logger import RunLogger

    log = RunLogger(LogConfig(console="plain", tensorboard=False), small_disk, enabled=True)
    log.epoch({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1,
               "epoch_time_s": 1.0, "samples_per_s": 10.0})
    _fill(small_disk, leave=4096)
    for epoch in (2, 3):  # a row longer than the space left: the part that fits is taken back
        log.epoch({"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1,
                   "epoch_time_s": 1.0, "samples_per_s": 10.0, "note": "x" * 12000})
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert f"no space left on {small_disk} while writing metrics.jsonl: training goes on without it" in out
    assert [json.loads(line)["epoch"] for line in (small_disk / "metrics.jsonl").read_text().splitlines()] == [1]

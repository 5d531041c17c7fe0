"""A stop signal (TERM, INT, USR1; a terminal's Ctrl-C; a scheduler's copies of them): every rank stops at the same
check with one whole checkpoint and exit 75, and the same command continues. A signal that reached only one rank
stops the others too: the ranks look for stop requests every CHECK_EVERY (16) steps and agree on them in one
all-reduce. In this process (a fake peer rank plays the all-reduce) where that suffices; real processes for
signals delivered to them, torchrun and several ranks."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.commands import BASE, LONG_EPOCHS, QUICK_MLP, SMALL_CNN, ranks, torchrun
from helpers.in_process import PeerRank
from helpers.processes import ok, popen, run_train, worker_pids
from helpers.runs import assert_same_run, status, wait_for_rows
from hpc_mnist.core import checkpoint
from hpc_mnist.runtime.stopping import CHECK_EVERY

# --- one rank's signal stops every rank at the same check ---


def test_a_signal_during_start_up_stops_before_the_first_step_and_leaves_nothing(train_here, tmp_path):
    """Ctrl-C (or scancel) while the ranks start: they agree on it before the first step (here the signal reached
    only the peer), stop at once, and leave no run directory; the same command then starts the run."""
    def peer(flags: torch.Tensor) -> torch.Tensor:
        return torch.maximum(flags, torch.tensor([signal.SIGINT])) if flags.numel() == 1 else flags

    stopped = train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"], peer=peer)
    assert stopped.code == 130, stopped.err
    assert "SIGINT during start-up, before the first step: stopped with nothing written" in stopped.out, stopped.out
    assert not (tmp_path / "r").exists()
    assert train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"]).code == 0


def test_a_peers_signal_stops_this_rank_at_the_next_check_and_the_same_command_continues_exactly(train_here, tmp_path):
    args = [*QUICK_MLP, f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=straight"]).code == 0
    peer = PeerRank(from_check=2, signum=signal.SIGTERM)  # SIGTERM reached the peer between steps 16 and 32
    stopped = train_here([*args, "log.name=r"], peer=peer)
    assert stopped.code == 75, stopped.err
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["signal"], st["epochs_done"], st["step"]) == (
        "stopped", "signal", "SIGTERM", 0, 2 * CHECK_EVERY)
    saved = checkpoint.load(Path(st["checkpoint"]))
    assert (saved["epochs_done"], saved["step"], len(saved["partial"])) == (0, 2 * CHECK_EVERY, 1)
    resumed = train_here([*args, "log.name=r"])
    assert resumed.code == 0 and resumed.out.startswith("hpc_mnist: continuing"), resumed.out[:500]
    assert_same_run(tmp_path / "straight", tmp_path / "r")


def test_no_check_between_checks(train_here, tmp_path):
    """The agreement costs one all-reduce every CHECK_EVERY steps and one at an epoch's last step, no more."""
    peer = PeerRank(from_check=10**9)
    assert train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"], peer=peer).code == 0
    assert peer.checks == 2 * 3  # steps 16, 32 and 38 of each epoch


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_resume_matches(straight, tmp_path):
    proc = popen([*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], torchrun())
    wait_for_rows(tmp_path / "r", 1, proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)  # only rank 1 hears it
    proc.communicate(timeout=120)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["signal"]) == ("stopped", "signal", "SIGTERM")
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert (st["state"], st["reason"], st["requeue"]) == ("stopped", "signal", False)
    assert Path(summary["checkpoint"]).exists()
    stopped = checkpoint.load(Path(summary["checkpoint"]))
    assert len(stopped["rng"]) == 2 and len(stopped["partial"] or []) in (0, 2)
    result = ok(run_train([*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={tmp_path}", "log.name=r"],
                          launcher=ranks(2)))
    assert "continuing" in result.stdout.splitlines()[0]
    assert_same_run(straight / "two", tmp_path / "r")


# --- duplicate signals: one whole checkpoint, whatever the order of the copies ---

@pytest.mark.slow
@pytest.mark.parametrize("first,second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM),
                                          (signal.SIGUSR1, signal.SIGTERM)])
def test_copies_of_a_stop_signal_half_a_second_apart_still_give_one_whole_checkpoint(tmp_path, first, second):
    proc = popen([*BASE, "train.epochs=6", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    proc.send_signal(first)
    time.sleep(0.5)
    proc.send_signal(second)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "Traceback" not in err
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["signal"], st["requeue"]) == (
        "stopped", "signal", signal.Signals(first).name, False)
    assert checkpoint.load(Path(st["checkpoint"]))["epochs_done"] >= 1
    assert not list((tmp_path / "r").glob(".*.tmp"))


@pytest.mark.slow
def test_copies_of_the_signal_while_the_process_exits_do_not_change_its_exit_code(tmp_path):
    """Slurm's copies can come after the checkpoint, while torch and the interpreter shut down."""
    proc = popen([*BASE, "train.epochs=6", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    proc.send_signal(signal.SIGTERM)
    for line in proc.stdout:
        if line.startswith("stopped"):
            break
    while proc.poll() is None:  # a copy every few milliseconds until the process is gone
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert proc.returncode == 75, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_sigterm_exit_code_single_process(tmp_path):
    proc = popen([*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "stopped (SIGTERM)" in out and "run the same command again" in out
    assert "Traceback" not in err


# --- Ctrl-C ---

@pytest.mark.slow
def test_ctrl_c_under_torchrun_is_int_then_term_and_stops_cleanly(tmp_path):
    proc = popen([*BASE, "train.epochs=6", f"log.dir={tmp_path}", "log.name=r"], torchrun())
    wait_for_rows(tmp_path / "r", 1, proc)
    for pid in worker_pids(proc.pid).values():  # the terminal's SIGINT reaches every worker ...
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    for pid in worker_pids(proc.pid).values():  # ... and the agent forwards SIGTERM
        os.kill(pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    st = status(tmp_path / "r")
    assert (st["state"], st["signal"]) == ("stopped", "SIGINT")
    assert checkpoint.load(Path(st["checkpoint"]))["epochs_done"] >= 1


@pytest.mark.slow
def test_a_deliberate_second_ctrl_c_aborts_at_once_in_one_line(tmp_path):
    """A long validation (2,700 digits one at a time) holds the clean stop back until the next training step;
    SIGSTOP keeps it there while the clock runs, so that the second Ctrl-C comes 3.5 s after the first."""
    proc = popen([*BASE, "train.epochs=6", "data.synthetic_train=3000", "data.val_fraction=0.9",
                  "train.eval_batch_size=1", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    time.sleep(0.3)  # epoch 2 trains for ~0.1 s, then validates for seconds
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(3.5)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("hpc_mnist: second Ctrl-C: stopping now")
    assert "Traceback" not in err
    assert checkpoint.load(checkpoint.existing(tmp_path / "r")[-1])["epochs_done"] >= 1

"""The stop contract and the run-directory model, with real processes: duplicate signals, deadlines, status
files, reruns that continue / finish / refuse, and exact resume under every change a user makes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.commands import BASE, ranks, torchrun
from helpers.processes import REPO, clean_env, ok, popen, run_train, worker_pids
from helpers.runs import assert_same_run, lrs, read_jsonl, status, stop_file, wait_for_rows
from hpc_mnist.core import checkpoint, config

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

# A small CNN where no signal has to land mid-run (stop files and deadlines stop at a known step whatever the
# machine's speed); the tutorial CNN of BASE where one does.
SMALL = [*BASE, "model.channels=[8,16]", "model.fc=32", "data.synthetic_train=1000", "train.epochs=2"]  # 25 steps


# --- duplicate signals: one whole checkpoint, whatever the order of the copies ---

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


# --- deadlines ---

def test_time_limit_counts_from_process_start_and_stops_mid_epoch(tmp_path):
    """Importing torch alone takes longer than 1 s here: a 1 s limit is met at the first check."""
    result = run_train([*SMALL, "train.time_limit=1", f"log.dir={tmp_path}", "log.name=r"])
    assert result.returncode == 75, result.stderr
    stop_by = next(line for line in result.stdout.splitlines() if "stop by" in line)
    assert "s ago: the run stops at its first check" in stop_by and "in -" not in stop_by, stop_by
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["requeue"], st["epochs_done"], st["step"]) == (
        "stopped", "deadline", True, 0, 16)


# --- exact at any world size, mid-epoch stops included ---

@pytest.mark.parametrize("n", [4])  # 2 ranks: test_resume.py's SIGTERM test; 1: test_stop_rules.py
def test_mid_epoch_stop_and_resume_is_bit_exact(tmp_path, n):
    args = [*SMALL, "data.synthetic_train=2000", "train.batch_size=16", "train.checkpoint_every=0",
            f"log.dir={tmp_path}"]
    straight = ok(run_train([*args, "log.name=straight"], launcher=ranks(n), timeout=400))
    assert ("oversubscribed" in straight.stdout) == (n > (os.cpu_count() or 1))  # the start panel says so
    result = run_train([*args, "log.name=r"], launcher=ranks(n), env=stop_file(tmp_path), timeout=400)
    assert status(tmp_path / "r")["step"] == 16, result.stderr[-2000:]
    ok(run_train([*args, "log.name=r"], launcher=ranks(n), timeout=400))
    assert_same_run(tmp_path / "straight", tmp_path / "r")


# --- the run-directory model ---

def test_readme_main_command_ctrl_c_and_the_same_command_again_ends_as_uninterrupted(tmp_path):
    """The README's main command (torchrun, 2 ranks, configs/mlp.yaml on the bundled MNIST; 2 epochs here), a
    terminal's Ctrl-C (SIGINT to the whole process group) during epoch 2, then the same command again. (Once
    more, it is finished already: test_stop_rules.py.)"""
    program = ["-m", "hpc_mnist.train", "--config", "configs/mlp.yaml", "train.epochs=2", "log.console=plain",
               "log.tensorboard=false", f"log.dir={tmp_path}"]
    ok(run_train(["log.name=straight"], program=program, launcher=torchrun(), timeout=400))
    proc = subprocess.Popen([*torchrun(), *program], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_rows(tmp_path / "mlp", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert status(tmp_path / "mlp")["signal"] == "SIGINT"
    result = ok(run_train([], program=program, launcher=torchrun(), timeout=400))
    assert result.stdout.startswith(f"hpc_mnist: continuing {tmp_path / 'mlp'} from checkpoint-")
    assert_same_run(tmp_path / "straight", tmp_path / "mlp")


# --- resume under every change: continue with the new setting from the checkpoint, or refuse in one line ---

# The resume rules at one process are tested in this process (test_stop_rules.py); here, the same rules where
# several ranks' checkpoints and partial sums are in play.
TABLE = [  # (words for the second command, "continue" + texts on its first line, or "refuse" + text)
    (["train.epochs=3", "optim.lr=5e-4"], "continue", ["train.epochs: 2 -> 3", "optim.lr: 0.001 -> 0.0005"]),
    (["train.precision=bf16"], "continue", ["train.precision: 'fp32' -> 'bf16'"]),
    (["model.name=mlp"], "refuse", ["model.name: 'cnn' -> 'mlp'"]),
]
STOPPED_AT_16 = [*SMALL, "data.synthetic_train=2000", "log.name=r"]  # 2 ranks: step 16 stays inside epoch 1


@pytest.fixture(scope="module")
def stopped_two_ranks(tmp_path_factory) -> Path:
    """One 2-rank run stopped at step 16 of epoch 1 by the stop file; each row continues a copy of it."""
    root = tmp_path_factory.mktemp("stopped")
    run_train([*STOPPED_AT_16, f"log.dir={root}"], launcher=ranks(2), env=stop_file(root), timeout=400)
    assert status(root / "r")["step"] == 16
    return root / "r"


@pytest.mark.parametrize("words,outcome,texts", TABLE, ids=[" ".join(t[0]) for t in TABLE])
def test_resume_rules_after_a_mid_epoch_stop_of_several_ranks(tmp_path, stopped_two_ranks, words, outcome, texts):
    """Stopped at step 16 of epoch 1 on 2 ranks, then the same command with changes: it continues with them
    and says so on its first line, or refuses naming the change."""
    shutil.copytree(stopped_two_ranks, tmp_path / "r")
    args = [*STOPPED_AT_16, f"log.dir={tmp_path}"]
    result = run_train([*args, *words], launcher=ranks(2), timeout=400)
    if outcome == "refuse":
        assert result.returncode != 0 and "hpc_mnist: error: " in result.stderr and texts[0] in result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(text in result.stdout.replace("\n", " ") for text in texts), result.stdout[:2000]
    assert result.stdout.startswith("hpc_mnist: continuing")
    saved = config.build(str(tmp_path / "r" / "config.yaml"))
    assert saved == config.build(str(REPO / "configs" / "smoke.yaml"), [*args[2:], *words])


def test_scale_lr_is_reapplied_at_another_world_size(tmp_path):
    args = [*SMALL, "optim.scale_lr=true", f"log.dir={tmp_path}", "log.name=r"]
    ok(run_train(args))
    result = ok(run_train([*args, "train.epochs=3"], launcher=ranks(2)))
    assert lrs(tmp_path / "r") == [1e-3, 1e-3, 2e-3]
    assert "world size 1 -> 2, batch per rank 32 -> 32: global batch 32 -> 64" in result.stdout.replace("\n", " ")
    assert [row["epoch"] for row in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]


def test_world_size_change_is_deterministic(tmp_path):
    """Stopped mid-epoch at 1 rank, continued at 2 twice from copies of the same stop: equal weights."""
    assert run_train([*SMALL, f"log.dir={tmp_path}", "log.name=a"], env=stop_file(tmp_path)).returncode == 75
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("a", "b"):
        ok(run_train([*SMALL, f"log.dir={tmp_path}", f"log.name={name}", "train.epochs=3"], launcher=ranks(2)))
    wa, wb = (torch.load(tmp_path / n / "model.pt") for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

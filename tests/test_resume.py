"""Nothing lost: checkpoints, resume, signals, restarts, time limits — all with real processes."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (
    BASE,
    REPO,
    TORCHRUN,
    assert_same_run,
    clean_env,
    ok,
    popen,
    read_jsonl,
    run_train,
    wait_for_rows,
    worker_pids,
)
from hpc_mnist.core import checkpoint

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted reference runs: 4 epochs on 1 process and on 2."""
    out = tmp_path_factory.mktemp("straight")
    ok(run_train([*BASE, "train.epochs=4", f"log.dir={out}", "log.name=one"]))
    ok(run_train([*BASE, "train.epochs=4", f"log.dir={out}", "log.name=two"], launcher=TORCHRUN))
    return out


def test_stop_and_resume_equals_straight_run_one_process(straight, tmp_path):
    ok(run_train([*BASE, "train.epochs=2", f"log.dir={tmp_path}", "log.name=r"]))
    result = ok(run_train([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"]))
    first = result.stdout.splitlines()[0]
    assert first.startswith("hpc_mnist: continuing") and "from checkpoint-0002-000000.pt (2 epoch(s) done)" in first
    assert "changed: train.epochs: 2 -> 4" in first
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_same_run(straight / "one", tmp_path / "r")


def test_stop_and_resume_equals_straight_run_two_processes(straight, tmp_path):
    ok(run_train([*BASE, "train.epochs=2", f"log.dir={tmp_path}", "log.name=r"], launcher=TORCHRUN))
    ok(run_train([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"], launcher=TORCHRUN))
    assert_same_run(straight / "two", tmp_path / "r")


def test_checkpoint_contents_and_retention(straight):
    run_dir = straight / "one"
    kept = checkpoint.existing(run_dir)
    assert [p.name for p in kept] == ["checkpoint-0002-000000.pt", "checkpoint-0003-000000.pt",
                                      "checkpoint-0004-000000.pt"]  # the newest 3 (train.keep_checkpoints)
    state = checkpoint.load(kept[-1])
    expected = {"model", "optimizer", "scaler", "rng", "epochs_done", "step", "config", "versions"}
    assert expected <= set(state)
    assert state["epochs_done"] == 4 and state["config"]["model"]["name"] == "cnn"
    assert not any(key.startswith("module.") for key in state["model"])  # unwrapped from DDP
    assert not list(run_dir.glob(".*.tmp"))


def test_sigterm_to_one_rank_stops_both_and_resume_matches(straight, tmp_path):
    proc = popen([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"], TORCHRUN)
    wait_for_rows(tmp_path / "r", 1, proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)  # only rank 1 hears it
    proc.communicate(timeout=120)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["signal"]) == ("stopped", "signal", "SIGTERM")
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert (status["state"], status["reason"], status["requeue"]) == ("stopped", "signal", False)
    assert Path(summary["checkpoint"]).exists()
    stopped = checkpoint.load(Path(summary["checkpoint"]))
    assert len(stopped["rng"]) == 2 and len(stopped["partial"] or []) in (0, 2)
    result = ok(run_train([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"], launcher=TORCHRUN))
    assert "continuing" in result.stdout.splitlines()[0]
    assert_same_run(straight / "two", tmp_path / "r")


def test_sigterm_exit_code_single_process(tmp_path):
    proc = popen([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "stopped (SIGTERM)" in out and "run the same command again" in out
    assert "Traceback" not in err


def test_sigkill_under_torchrun_restart_resumes_and_matches(straight, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--max-restarts=1"]
    proc = popen([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"], launcher)
    wait_for_rows(tmp_path / "r", 2, proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    (tmp_path / "torchrun.log").write_text(out + err)
    assert proc.returncode == 0, err[-3000:]
    assert "hpc_mnist: continuing" in out
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_same_run(straight / "two", tmp_path / "r")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(straight, tmp_path):
    ok(run_train([*BASE, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"]))
    newest = checkpoint.existing(tmp_path / "r")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash on a file system without rename
    result = ok(run_train([*BASE, "train.epochs=4", f"log.dir={tmp_path}", "log.name=r"]))
    assert f"checkpoint {newest} is unreadable" in result.stdout.replace("\n", " ")
    assert "from checkpoint-0002-000000.pt" in result.stdout.splitlines()[0]
    assert_same_run(straight / "one", tmp_path / "r")


def test_resume_with_another_world_size_says_what_changed(tmp_path):
    ok(run_train([*BASE, "train.epochs=2", f"log.dir={tmp_path}", "log.name=r"]))
    result = ok(run_train([*BASE, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"], launcher=TORCHRUN))
    assert "world size 1 -> 2, batch per rank 32 -> 32: global batch 32 -> 64" in result.stdout.replace("\n", " ")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]


def test_incompatible_checkpoint_is_refused(tmp_path):
    ok(run_train([*BASE, "train.epochs=1", f"log.dir={tmp_path}", "log.name=r"]))
    result = run_train([*BASE, "model.name=mlp", f"log.dir={tmp_path}", "log.name=r"])
    assert result.returncode == 2
    assert "already holds a run with other settings (model.name: 'cnn' -> 'mlp')" in result.stderr
    assert "choose another log.name" in result.stderr


def test_non_finite_loss_names_epoch_step_and_lr(tmp_path):
    result = run_train([*BASE, "model.name=mlp", "optim.name=sgd", "optim.lr=1e12", f"log.dir={tmp_path}"])
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("hpc_mnist: error: the loss became non-finite in epoch 1 at step ")
    assert "(learning rate 1e+12)" in line


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    """A full disk, simulated by a file-size limit: the checkpoint write fails, the previous one survives."""
    args = [*BASE, "model.name=mlp", f"log.dir={tmp_path}", "log.name=r"]
    ok(run_train([*args, "train.epochs=1"]))
    before = checkpoint.existing(tmp_path / "r")
    env = clean_env()
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.train", *args, "train.epochs=2"], cwd=REPO, env=env,
                            capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "could not write checkpoint" in result.stderr
    assert "the previous checkpoint checkpoint-0001-000000.pt is intact" in result.stderr
    assert checkpoint.existing(tmp_path / "r") == before
    assert checkpoint.load(before[-1])["epochs_done"] == 1
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_two_runs_in_one_directory(tmp_path):
    proc = popen([*BASE, "train.epochs=6", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    try:
        wait_for_rows(tmp_path / "r", 1, proc)
        result = run_train([*BASE, f"log.dir={tmp_path}", "log.name=r"])
        assert result.returncode == 2
        assert f"run directory {tmp_path / 'r'} is in use by another run" in result.stderr
    finally:
        proc.kill()
        proc.communicate()


def test_named_checkpoint_that_holds_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": os.system}, evil)  # a pickle that would import and call code
    result = run_train([*BASE, f"train.resume={evil}", f"log.dir={tmp_path}"])
    assert result.returncode == 2
    assert f"checkpoint {evil} is unreadable" in result.stderr

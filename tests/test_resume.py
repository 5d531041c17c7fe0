"""Nothing lost: checkpoints, resume, signals, restarts, time limits — all with real processes."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import BASE, ranks, torchrun
from helpers.processes import REPO, clean_env, ok, popen, run_train, worker_pids
from helpers.runs import assert_same_run, read_jsonl, wait_for_rows
from hpc_mnist.core import checkpoint

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

# A small CNN (about 0.1 s an epoch here) and many epochs: a signal sent after the first epoch's row lands
# seconds before the run could end, on a machine several times faster or slower than this one.
RUN = [*BASE, "model.channels=[8,16]", "model.fc=32"]
EPOCHS = 24


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted reference run: EPOCHS epochs on 2 processes (one process: test_stop_rules.py, in-process)."""
    out = tmp_path_factory.mktemp("straight")
    ok(run_train([*RUN, f"train.epochs={EPOCHS}", f"log.dir={out}", "log.name=two"], launcher=ranks(2)))
    return out


def test_checkpoint_contents_and_retention(straight):
    run_dir = straight / "two"
    kept = checkpoint.existing(run_dir)
    assert [p.name for p in kept] == [checkpoint.name(e, 0) for e in range(EPOCHS - 2, EPOCHS + 1)]  # the newest 3
    state = checkpoint.load(kept[-1])
    expected = {"model", "optimizer", "scaler", "rng", "epochs_done", "step", "config", "versions"}
    assert expected <= set(state) and len(state["rng"]) == 2
    assert state["epochs_done"] == EPOCHS and state["config"]["model"]["name"] == "cnn"
    assert not any(key.startswith("module.") for key in state["model"])  # unwrapped from DDP
    assert not list(run_dir.glob(".*.tmp"))


def test_sigterm_to_one_rank_stops_both_and_resume_matches(straight, tmp_path):
    proc = popen([*RUN, f"train.epochs={EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], torchrun())
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
    result = ok(run_train([*RUN, f"train.epochs={EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], launcher=ranks(2)))
    assert "continuing" in result.stdout.splitlines()[0]
    assert_same_run(straight / "two", tmp_path / "r")


def test_sigterm_exit_code_single_process(tmp_path):
    proc = popen([*RUN, f"train.epochs={EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    wait_for_rows(tmp_path / "r", 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "stopped (SIGTERM)" in out and "run the same command again" in out
    assert "Traceback" not in err


def test_sigkill_under_torchrun_restart_resumes_and_matches(straight, tmp_path):
    proc = popen([*RUN, f"train.epochs={EPOCHS}", f"log.dir={tmp_path}", "log.name=r"], torchrun(2, "--max-restarts=1"))
    wait_for_rows(tmp_path / "r", 2, proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    (tmp_path / "torchrun.log").write_text(out + err)
    assert proc.returncode == 0, err[-3000:]
    assert "hpc_mnist: continuing" in out
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
    assert_same_run(straight / "two", tmp_path / "r")


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, train_here):
    """A file-size limit (a quota; a full disk: test_faults.py): the checkpoint write fails, the previous one
    survives. The limited run needs a process of its own; the first segment runs here."""
    args = [*RUN, "model.name=mlp", f"log.dir={tmp_path}", "log.name=r"]
    assert train_here([*args, "train.epochs=1"]).code == 0
    before = checkpoint.existing(tmp_path / "r")
    env = clean_env()
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.train", *args, "train.epochs=2"], cwd=REPO, env=env,
                            capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "could not write " in result.stderr and "checkpoint-0002-000000.pt: File too large" in result.stderr
    assert "the previous checkpoint checkpoint-0001-000000.pt is intact" in result.stderr
    assert checkpoint.existing(tmp_path / "r") == before
    assert checkpoint.load(before[-1])["epochs_done"] == 1
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_two_runs_in_one_directory(tmp_path, train_here):
    proc = popen([*RUN, "train.epochs=1000", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])  # killed below
    try:
        wait_for_rows(tmp_path / "r", 1, proc)
        result = train_here([*RUN, f"log.dir={tmp_path}", "log.name=r"])  # the second run: this process
        assert result.code == 2
        assert f"run directory {tmp_path / 'r'} is in use by another run" in result.err
    finally:
        proc.kill()
        proc.communicate()



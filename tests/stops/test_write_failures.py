"""A write that fails (a quota, a full disk): a checkpoint's says so in one line and keeps the previous one, and the
same command continues once there is room; a metrics row's costs that row, said once, not the run."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import ENDLESS_CNN, SMALL_CNN
from helpers.processes import REPO, clean_env, error_lines
from helpers.runs import status
from hpc_mnist.core import checkpoint

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, train_here):
    """A file-size limit (a quota; a full disk: below): the checkpoint write fails, the previous one
    survives. The limited run needs a process of its own; the first segment runs here."""
    args = [*SMALL_CNN, "model.name=mlp", f"log.dir={tmp_path}", "log.name=r"]
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


def fill(disk: Path, leave: int) -> None:
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_previous_one(small_disk, train_here):
    """In this process: nothing about a full disk needs a process boundary."""
    run = [*ENDLESS_CNN, "model.name=mlp", "model.hidden=[64]", f"log.dir={small_disk}", "log.name=r"]
    assert train_here([*run, "train.epochs=1"]).code == 0
    fill(small_disk, leave=16 * 1024)  # room for a metrics row and status.json, not a checkpoint
    result = train_here([*run, "train.epochs=2"])
    assert result.code == 2, result.err[-2000:]
    assert error_lines(result.err) == [
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
    fill(small_disk, leave=4096)
    for epoch in (2, 3):  # a row longer than the space left: the part that fits is taken back
        log.epoch({"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1,
                   "epoch_time_s": 1.0, "samples_per_s": 10.0, "note": "x" * 12000})
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert f"no space left on {small_disk} while writing metrics.jsonl: training goes on without it" in out
    assert [json.loads(line)["epoch"] for line in (small_disk / "metrics.jsonl").read_text().splitlines()] == [1]

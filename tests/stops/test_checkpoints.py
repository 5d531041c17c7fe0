"""Checkpoints: what one holds and how many are kept; a corrupt one (every one, or only the newest) and one that
holds code, each refused or passed over in one line, never a silent restart."""

import os

import pytest
import torch

from helpers.commands import LONG_EPOCHS, QUICK_MLP
from helpers.runs import assert_same_run
from hpc_mnist.core import checkpoint


@pytest.mark.slow
def test_checkpoint_contents_and_retention(straight):
    run_dir = straight / "two"
    kept = checkpoint.existing(run_dir)
    newest_3 = range(LONG_EPOCHS - 2, LONG_EPOCHS + 1)
    assert [p.name for p in kept] == [checkpoint.name(e, 0) for e in newest_3]
    state = checkpoint.load(kept[-1])
    expected = {"model", "optimizer", "scaler", "rng", "epochs_done", "step", "config", "versions"}
    assert expected <= set(state) and len(state["rng"]) == 2
    assert state["epochs_done"] == LONG_EPOCHS and state["config"]["model"]["name"] == "cnn"
    assert not any(key.startswith("module.") for key in state["model"])  # unwrapped from DDP
    assert not list(run_dir.glob(".*.tmp"))


def test_every_checkpoint_corrupt_is_refused_not_silently_restarted(train_here, tmp_path):
    assert train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"]).code == 0
    for path in checkpoint.existing(tmp_path / "r"):
        path.write_bytes(b"junk")
    result = train_here([*QUICK_MLP, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"])
    assert result.code == 2
    assert result.err.count("\n") == 1 and "none of its checkpoints is usable" in result.err


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(train_here, tmp_path):
    args = [*QUICK_MLP, f"log.dir={tmp_path}"]
    assert train_here([*args, "train.epochs=4", "log.name=straight"]).code == 0
    assert train_here([*args, "train.epochs=3", "log.name=r"]).code == 0
    newest = checkpoint.existing(tmp_path / "r")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash on a file system without rename
    result = train_here([*args, "train.epochs=4", "log.name=r"])
    assert result.code == 0
    assert f"checkpoint {newest} is unreadable" in result.out.replace("\n", " ")
    assert "from checkpoint-0002-000000.pt" in result.out.splitlines()[0]
    assert_same_run(tmp_path / "straight", tmp_path / "r")


def test_a_named_checkpoint_that_holds_code_is_refused(train_here, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": os.system}, evil)  # a pickle that would import and call code
    result = train_here([*QUICK_MLP, f"train.resume={evil}", f"log.dir={tmp_path}"])
    assert result.code == 2 and f"checkpoint {evil} is unreadable" in result.err

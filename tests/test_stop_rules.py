"""The stop contract's rules and the resume rules, in this process, in seconds.

The trainer runs here as a single process (`train.main`); a second rank is played by a fake collective: the
agreement's all-reduce (`dist.any_rank`) returns what a peer would add to it (a signal it received, a
non-finite loss it saw, its deadline). What needs real processes (signals delivered to processes, torchrun,
several ranks' checkpoints) stays in test_stop_contract.py and test_resume.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from helpers.commands import BASE
from helpers.in_process import PeerRank, as_a_user_would
from helpers.processes import REPO
from helpers.runs import assert_same_run, lrs, status, stop_file
from hpc_mnist import train
from hpc_mnist.core import checkpoint, config
from hpc_mnist.runtime import stopping
from hpc_mnist.runtime.stopping import CHECK_EVERY, bad_key

# An MLP (milliseconds a step) on 1,200 synthetic train samples: 38 steps of 32 per epoch, checks at 16, 32 and 38.
SMALL = [*BASE, "model.name=mlp", "train.epochs=2"]


# --- the agreement: whatever one rank sees, every rank stops at the same check ---

def test_a_signal_during_start_up_stops_before_the_first_step_and_leaves_nothing(train_here, tmp_path):
    """Ctrl-C (or scancel) while the ranks start: they agree on it before the first step (here the signal reached
    only the peer), stop at once, and leave no run directory; the same command then starts the run."""
    def peer(flags: torch.Tensor) -> torch.Tensor:
        return torch.maximum(flags, torch.tensor([signal.SIGINT])) if flags.numel() == 1 else flags

    stopped = train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"], peer=peer)
    assert stopped.code == 130, stopped.err
    assert "SIGINT during start-up, before the first step: stopped with nothing written" in stopped.out, stopped.out
    assert not (tmp_path / "r").exists()
    assert train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"]).code == 0


def test_a_peers_signal_stops_this_rank_at_the_next_check_and_the_same_command_continues_exactly(train_here, tmp_path):
    args = [*SMALL, f"log.dir={tmp_path}"]
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


def test_a_peers_deadline_is_a_deadline_stop_here(train_here, tmp_path):
    result = train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"], peer=PeerRank(from_check=1, late=1))
    assert result.code == 75
    assert (status(tmp_path / "r")["reason"], status(tmp_path / "r")["step"]) == ("deadline", CHECK_EVERY)


def test_a_peers_non_finite_loss_stops_every_rank_naming_its_step(train_here, tmp_path):
    result = train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"], peer=PeerRank(from_check=1, bad_step=7))
    assert result.code == 3
    assert result.err.count("\n") == 1 and "non-finite in epoch 1 at step 7 (learning rate 0.001)" in result.err
    st = status(tmp_path / "r")
    assert (st["state"], st["exit_code"], st["reason"], st["rank"], st["at_step"]) == \
        ("failed", 3, "non-finite loss", 1, 7)
    assert st["checkpoint"] is None  # none written yet: nothing unsound was saved


def test_the_earliest_non_finite_step_wins_then_the_lowest_rank(train_here, tmp_path):
    """This rank's loss breaks at step 9 of epoch 2, the peer's at step 7: the peer is named, and epoch 1's
    checkpoint stays the newest."""
    result = train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"], env={"HPC_MNIST_TEST_NAN": "0:2:9"},
                        peer=PeerRank(from_check=4, bad_step=7))
    assert result.code == 3
    st = status(tmp_path / "r")
    assert (st["rank"], st["epoch"], st["at_step"]) == (1, 2, 7)
    assert Path(st["checkpoint"]).name == "checkpoint-0001-000000.pt" == checkpoint.existing(tmp_path / "r")[-1].name
    keys = torch.tensor([bad_key(9, 0), bad_key(7, 3), bad_key(7, 1), 0, bad_key(8, 0)])
    assert stopping._bad_from_key(int(keys.max())) == (7, 1)
    assert stopping._bad_from_key(0) == (0, -1)


def test_no_check_between_checks(train_here, tmp_path):
    """The agreement costs one all-reduce every CHECK_EVERY steps and one at an epoch's last step, no more."""
    peer = PeerRank(from_check=10**9)
    assert train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"], peer=peer).code == 0
    assert peer.checks == 2 * 3  # steps 16, 32 and 38 of each epoch


# --- the resume rules: the same command with one change, after a mid-epoch stop ---

CHANGES = [  # (words for the second command, expected: "continue" + text on the first line, or "refuse" + text)
    (["train.epochs=3"], "continue", "train.epochs: 2 -> 3"),
    (["optim.scheduler=cosine"], "continue", "optim.scheduler: 'none' -> 'cosine'"),
    (["optim.lr=5e-4"], "continue", "optim.lr: 0.001 -> 0.0005"),
    (["train.precision=bf16"], "continue", "train.precision: 'fp32' -> 'bf16'"),
    (["train.batch_size=16"], "continue", "global batch 32 -> 16"),
    (["model.name=linear"], "refuse", "model.name: 'mlp' -> 'linear'"),
    (["optim.name=sgd"], "refuse", "optim.name: 'adam' -> 'sgd'"),
    (["train.seed=1"], "refuse", "train.seed: 0 -> 1"),
    (["train.resume=never"], "refuse", "train.resume=never would mix two runs"),
]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped at step 16 of epoch 1 by the stop file (made once, copied by each test)."""
    root = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as m:
        as_a_user_would(m)
        for key, value in stop_file(root).items():
            m.setenv(key, value)
        assert train.main([*SMALL, f"log.dir={root}", "log.name=r"]) == 75
    assert status(root / "r")["step"] == CHECK_EVERY
    return root / "r"


@pytest.mark.parametrize("words,outcome,text", CHANGES, ids=[" ".join(c[0]) for c in CHANGES])
def test_resume_rules_after_a_mid_epoch_stop(train_here, stopped_run, tmp_path, words, outcome, text):
    """The same command with one change continues with it and says so on its first line, or refuses in one
    line naming the change and leaves the run as it was."""
    shutil.copytree(stopped_run, tmp_path / "r")
    args = [*SMALL, f"log.dir={tmp_path}", "log.name=r"]
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    result = train_here([*args, *words])
    if outcome == "refuse":
        assert result.code == 2 and result.err.startswith("hpc_mnist: error: ") and text in result.err
        assert result.err.count("\n") == 1
        assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before
        return
    assert result.code == 0, result.err[-2000:]
    assert result.out.startswith("hpc_mnist: continuing") and text in result.out.replace("\n", " ")
    saved = config.build(str(tmp_path / "r" / "config.yaml"))
    assert saved == config.build(str(REPO / "configs" / "smoke.yaml"), [*args[2:], *words])
    assert status(tmp_path / "r")["state"] == "completed"


# --- deadlines, status files and the run directory ---

def test_the_stop_file_is_a_deadline_stop_and_the_same_command_continues_exactly(train_here, tmp_path):
    args = [*SMALL, f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=straight"]).code == 0
    assert train_here([*args, "log.name=r"], env=stop_file(tmp_path)).code == 75
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["requeue"], st["step"]) == ("stopped", "deadline", True, CHECK_EVERY)
    assert train_here([*args, "log.name=r"]).code == 0
    assert_same_run(tmp_path / "straight", tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["train_time_s"] <= summary["wall_time_s"]


def test_status_file_copy_for_job_scripts(train_here, tmp_path):
    copy = tmp_path / "job-status.json"
    result = train_here([*SMALL, "train.epochs=1", f"log.dir={tmp_path}", "log.name=r"],
                        env={"HPC_MNIST_STATUS_FILE": str(copy)})
    assert result.code == 0
    assert json.loads(copy.read_text()) == status(tmp_path / "r") and status(tmp_path / "r")["state"] == "completed"


def test_rerun_of_a_finished_run_changes_nothing(train_here, tmp_path):
    assert train_here([*SMALL, "train.epochs=1", f"log.dir={tmp_path}", "log.name=r"]).code == 0
    summary = (tmp_path / "r" / "summary.json").read_text()
    result = train_here(["--config", str(tmp_path / "r" / "config.yaml")])
    assert result.code == 0 and "finished already" in result.out.splitlines()[0]
    assert (tmp_path / "r" / "summary.json").read_text() == summary


def test_every_checkpoint_corrupt_is_refused_not_silently_restarted(train_here, tmp_path):
    assert train_here([*SMALL, f"log.dir={tmp_path}", "log.name=r"]).code == 0
    for path in checkpoint.existing(tmp_path / "r"):
        path.write_bytes(b"junk")
    result = train_here([*SMALL, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"])
    assert result.code == 2
    assert result.err.count("\n") == 1 and "none of its checkpoints is usable" in result.err


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(train_here, tmp_path):
    args = [*SMALL, f"log.dir={tmp_path}"]
    assert train_here([*args, "train.epochs=4", "log.name=straight"]).code == 0
    assert train_here([*args, "train.epochs=3", "log.name=r"]).code == 0
    newest = checkpoint.existing(tmp_path / "r")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash on a file system without rename
    result = train_here([*args, "train.epochs=4", "log.name=r"])
    assert result.code == 0
    assert f"checkpoint {newest} is unreadable" in result.out.replace("\n", " ")
    assert "from checkpoint-0002-000000.pt" in result.out.splitlines()[0]
    assert_same_run(tmp_path / "straight", tmp_path / "r")


def test_a_failed_start_leaves_no_run_directory(train_here, tmp_path):
    nowhere = tmp_path / "nowhere"
    result = train_here([*SMALL, "data.name=mnist", f"data.root={nowhere}", f"log.dir={tmp_path / 'runs'}"])
    assert result.code == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere").exists()


def test_a_named_checkpoint_that_holds_code_is_refused(train_here, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": os.system}, evil)  # a pickle that would import and call code
    result = train_here([*SMALL, f"train.resume={evil}", f"log.dir={tmp_path}"])
    assert result.code == 2 and f"checkpoint {evil} is unreadable" in result.err


def test_a_non_finite_loss_names_epoch_step_and_lr(train_here, tmp_path):
    result = train_here([*SMALL, "optim.name=sgd", "optim.lr=1e12", f"log.dir={tmp_path}"])
    assert result.code == 3, result.err
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("hpc_mnist: error: the loss became non-finite in epoch 1 at step ")
    assert "(learning rate 1e+12)" in line


# --- schedules and learning rates across a continuation ---


def test_more_epochs_rebuild_the_one_cycle_schedule(train_here, tmp_path):
    args = [*SMALL, "optim.scheduler=onecycle", f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=r"]).code == 0
    assert train_here([*args, "log.name=r", "train.epochs=3"]).code == 0  # used to fail: "Tried to step 51 times"
    assert train_here([*args, "log.name=s", "train.epochs=3"]).code == 0
    assert lrs(tmp_path / "r")[2] == pytest.approx(lrs(tmp_path / "s")[2])  # epoch 3 on the 3-epoch schedule


def test_cosine_continues_downward_with_more_epochs(train_here, tmp_path):
    args = [*SMALL, "optim.scheduler=cosine", f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=r"]).code == 0
    assert train_here([*args, "log.name=r", "train.epochs=4"]).code == 0
    assert train_here([*args, "log.name=s", "train.epochs=4"]).code == 0
    assert lrs(tmp_path / "r")[2:] == pytest.approx(lrs(tmp_path / "s")[2:])


def test_a_changed_lr_is_the_lr_that_trains(train_here, tmp_path):
    args = [*SMALL, f"log.dir={tmp_path}", "log.name=r"]
    assert train_here(args, env=stop_file(tmp_path)).code == 75
    assert train_here([*args, "optim.lr=5e-4"]).code == 0
    assert lrs(tmp_path / "r") == [5e-4, 5e-4]
    assert "lr: 0.0005" in (tmp_path / "r" / "config.yaml").read_text()


# --- timed checkpoints inside epochs (train.checkpoint_minutes) ---

def test_timed_checkpoints_inside_epochs_lose_nothing_and_change_nothing(train_here, tmp_path):
    """Due at every check (a tiny train.checkpoint_minutes): checkpoints at steps 16 and 32 of each 38-step
    epoch besides the epoch's own; status.json names the newest while the run goes on; after a crash right
    after epoch 2's step-32 checkpoint the same command ends exactly as an uninterrupted run."""
    args = [*SMALL, f"log.dir={tmp_path}", "train.keep_checkpoints=20"]
    assert train_here([*args, "log.name=straight"]).code == 0
    run_dir = tmp_path / "r"
    seen: list[dict] = []

    class Watch(PeerRank):  # reads status.json as each check begins, adds nothing
        def __call__(self, flags: torch.Tensor) -> torch.Tensor:
            if flags.numel() > 1:  # a check (not the start-up agreement, before the run directory exists)
                seen.append(status(run_dir))
            return super().__call__(flags)

    assert train_here([*args, "log.name=r", "train.checkpoint_minutes=1e-9"], peer=Watch(10**9)).code == 0
    assert [p.name for p in checkpoint.existing(run_dir)] == [checkpoint.name(*at) for at in (
        (0, 16), (0, 32), (1, 0), (1, 16), (1, 32), (2, 0))]
    assert_same_run(tmp_path / "straight", run_dir)  # writing checkpoints changes no result
    assert (seen[1]["state"], seen[1]["epochs_done"], seen[1]["step"]) == ("running", 0, 16)
    assert seen[1]["checkpoint"] == str(run_dir / checkpoint.name(0, 16))

    # The crash: nothing after epoch 2's step-32 checkpoint was written.
    for path in checkpoint.existing(run_dir)[-1:]:
        path.unlink()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text(rows[0] + "\n")
    (run_dir / "summary.json").unlink()
    (run_dir / "model.pt").unlink()
    result = train_here([*args, "log.name=r"])
    assert result.code == 0 and f"from {checkpoint.name(1, 32)}" in result.out.splitlines()[0], result.out[:300]
    assert_same_run(tmp_path / "straight", run_dir)

"""The same command again after a stop, with a change: it continues with the change from the checkpoint and says
so on its first line, or refuses in one line naming the change and leaves the run as it was. Schedules and
learning rates across a continuation; another world size. At one process in this process, in seconds; with
several ranks' checkpoints and partial sums in real processes."""

import shutil
from pathlib import Path

import pytest
import torch

from helpers.commands import QUICK_MLP, SHORT_CNN, ranks
from helpers.in_process import as_a_user_would
from helpers.processes import REPO, ok, run_train
from helpers.runs import lrs, read_jsonl, status, stop_file
from hpc_mnist import train
from hpc_mnist.core import config
from hpc_mnist.runtime.stopping import CHECK_EVERY

# --- one process, in this process ---

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
        assert train.main([*QUICK_MLP, f"log.dir={root}", "log.name=r"]) == 75
    assert status(root / "r")["step"] == CHECK_EVERY
    return root / "r"


@pytest.mark.parametrize("words,outcome,text", CHANGES, ids=[" ".join(c[0]) for c in CHANGES])
def test_resume_rules_after_a_mid_epoch_stop(train_here, stopped_run, tmp_path, words, outcome, text):
    """The same command with one change continues with it and says so on its first line, or refuses in one
    line naming the change and leaves the run as it was."""
    shutil.copytree(stopped_run, tmp_path / "r")
    args = [*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"]
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


# --- schedules and learning rates across a continuation ---

def test_more_epochs_rebuild_the_one_cycle_schedule(train_here, tmp_path):
    args = [*QUICK_MLP, "optim.scheduler=onecycle", f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=r"]).code == 0
    assert train_here([*args, "log.name=r", "train.epochs=3"]).code == 0  # used to fail: "Tried to step 51 times"
    assert train_here([*args, "log.name=s", "train.epochs=3"]).code == 0
    assert lrs(tmp_path / "r")[2] == pytest.approx(lrs(tmp_path / "s")[2])  # epoch 3 on the 3-epoch schedule


def test_cosine_continues_downward_with_more_epochs(train_here, tmp_path):
    args = [*QUICK_MLP, "optim.scheduler=cosine", f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=r"]).code == 0
    assert train_here([*args, "log.name=r", "train.epochs=4"]).code == 0
    assert train_here([*args, "log.name=s", "train.epochs=4"]).code == 0
    assert lrs(tmp_path / "r")[2:] == pytest.approx(lrs(tmp_path / "s")[2:])


def test_a_changed_lr_is_the_lr_that_trains(train_here, tmp_path):
    args = [*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"]
    assert train_here(args, env=stop_file(tmp_path)).code == 75
    assert train_here([*args, "optim.lr=5e-4"]).code == 0
    assert lrs(tmp_path / "r") == [5e-4, 5e-4]
    assert "lr: 0.0005" in (tmp_path / "r" / "config.yaml").read_text()


# --- several ranks, real processes ---

# The same rules where several ranks' checkpoints and partial sums are in play.
TABLE = [  # (words for the second command, "continue" + texts on its first line, or "refuse" + text)
    (["train.epochs=3", "optim.lr=5e-4"], "continue", ["train.epochs: 2 -> 3", "optim.lr: 0.001 -> 0.0005"]),
    (["train.precision=bf16"], "continue", ["train.precision: 'fp32' -> 'bf16'"]),
    (["model.name=mlp"], "refuse", ["model.name: 'cnn' -> 'mlp'"]),
]
STOPPED_AT_16 = [*SHORT_CNN, "data.synthetic_train=2000", "log.name=r"]  # 2 ranks: step 16 stays inside epoch 1


@pytest.fixture(scope="module")
def stopped_two_ranks(tmp_path_factory) -> Path:
    """One 2-rank run stopped at step 16 of epoch 1 by the stop file; each row continues a copy of it."""
    root = tmp_path_factory.mktemp("stopped")
    run_train([*STOPPED_AT_16, f"log.dir={root}"], launcher=ranks(2), env=stop_file(root), timeout=400)
    assert status(root / "r")["step"] == 16
    return root / "r"


@pytest.mark.slow
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


@pytest.mark.slow
def test_scale_lr_is_reapplied_at_another_world_size(tmp_path):
    args = [*SHORT_CNN, "optim.scale_lr=true", f"log.dir={tmp_path}", "log.name=r"]
    ok(run_train(args))
    result = ok(run_train([*args, "train.epochs=3"], launcher=ranks(2)))
    assert lrs(tmp_path / "r") == [1e-3, 1e-3, 2e-3]
    assert "world size 1 -> 2, batch per rank 32 -> 32: global batch 32 -> 64" in result.stdout.replace("\n", " ")
    assert [row["epoch"] for row in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_world_size_change_is_deterministic(tmp_path):
    """Stopped mid-epoch at 1 rank, continued at 2 twice from copies of the same stop: equal weights."""
    assert run_train([*SHORT_CNN, f"log.dir={tmp_path}", "log.name=a"], env=stop_file(tmp_path)).returncode == 75
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("a", "b"):
        ok(run_train([*SHORT_CNN, f"log.dir={tmp_path}", f"log.name={name}", "train.epochs=3"], launcher=ranks(2)))
    wa, wb = (torch.load(tmp_path / n / "model.pt") for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

"""A non-finite loss, on any rank: every rank stops at the same check, one line names the rank, epoch, step and
learning rate where it first broke (exit 3), and the newest sound checkpoint stays the newest."""

import socket
from pathlib import Path

import pytest
import torch

from helpers.commands import ENDLESS_CNN, QUICK_MLP, ranks
from helpers.in_process import PeerRank
from helpers.processes import error_lines, run_train
from helpers.runs import read_jsonl, status
from hpc_mnist.core import checkpoint
from hpc_mnist.runtime import stopping
from hpc_mnist.runtime.stopping import bad_key

HOST = socket.gethostname()


def test_a_non_finite_loss_names_epoch_step_and_lr(train_here, tmp_path):
    result = train_here([*QUICK_MLP, "optim.name=sgd", "optim.lr=1e12", f"log.dir={tmp_path}"])
    assert result.code == 3, result.err
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("hpc_mnist: error: the loss became non-finite in epoch 1 at step ")
    assert "(learning rate 1e+12)" in line


def test_a_peers_non_finite_loss_stops_every_rank_naming_its_step(train_here, tmp_path):
    result = train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"], peer=PeerRank(from_check=1, bad_step=7))
    assert result.code == 3
    assert result.err.count("\n") == 1 and "non-finite in epoch 1 at step 7 (learning rate 0.001)" in result.err
    st = status(tmp_path / "r")
    assert (st["state"], st["exit_code"], st["reason"], st["rank"], st["at_step"]) == \
        ("failed", 3, "non-finite loss", 1, 7)
    assert st["checkpoint"] is None  # none written yet: nothing unsound was saved


def test_the_earliest_non_finite_step_wins_then_the_lowest_rank(train_here, tmp_path):
    """This rank's loss breaks at step 9 of epoch 2, the peer's at step 7: the peer is named, and epoch 1's
    checkpoint stays the newest."""
    result = train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"], env={"HPC_MNIST_TEST_NAN": "0:2:9"},
                        peer=PeerRank(from_check=4, bad_step=7))
    assert result.code == 3
    st = status(tmp_path / "r")
    assert (st["rank"], st["epoch"], st["at_step"]) == (1, 2, 7)
    assert Path(st["checkpoint"]).name == "checkpoint-0001-000000.pt" == checkpoint.existing(tmp_path / "r")[-1].name
    keys = torch.tensor([bad_key(9, 0), bad_key(7, 3), bad_key(7, 1), 0, bad_key(8, 0)])
    assert stopping._bad_from_key(int(keys.max())) == (7, 1)
    assert stopping._bad_from_key(0) == (0, -1)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_naming_it(tmp_path):
    """Rank 1's loss turns NaN at step 5 of epoch 2: both ranks stop at the same check, the line names rank 1,
    epoch 2 and step 5, and epoch 1's checkpoint stays the newest."""
    result = run_train([*ENDLESS_CNN, "train.epochs=3", f"log.dir={tmp_path}", "log.name=r"], launcher=ranks(2),
                       env={"HPC_MNIST_TEST_NAN": "1:2:5"}, timeout=180)
    assert result.returncode != 0
    ours = error_lines(result.stderr)
    assert ours == [f"hpc_mnist: error: the loss became non-finite on rank 1 ({HOST}) in epoch 2 at step 5 "
                    "(learning rate 0.001): lower optim.lr, or use train.precision=fp32 or bf16"], result.stderr[-3000:]
    st = status(tmp_path / "r")
    assert (st["state"], st["exit_code"], st["reason"], st["rank"], st["epoch"], st["at_step"]) == \
        ("failed", 3, "non-finite loss", 1, 2, 5)
    assert [p.name for p in checkpoint.existing(tmp_path / "r")][-1] == "checkpoint-0001-000000.pt" == \
        Path(st["checkpoint"]).name
    assert [row["epoch"] for row in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1]

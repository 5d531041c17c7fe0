"""A deadline (train.time_limit counted from process start, the stop file, a peer's): the ranks stop at their
first check past it, with requeue true for the job script, and the same command continues exactly."""

import json

import pytest

from helpers.commands import QUICK_MLP, SHORT_CNN
from helpers.in_process import PeerRank
from helpers.processes import run_train
from helpers.runs import assert_same_run, status, stop_file
from hpc_mnist.runtime.stopping import CHECK_EVERY


def test_the_stop_file_is_a_deadline_stop_and_the_same_command_continues_exactly(train_here, tmp_path):
    args = [*QUICK_MLP, f"log.dir={tmp_path}"]
    assert train_here([*args, "log.name=straight"]).code == 0
    assert train_here([*args, "log.name=r"], env=stop_file(tmp_path)).code == 75
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["requeue"], st["step"]) == ("stopped", "deadline", True, CHECK_EVERY)
    assert train_here([*args, "log.name=r"]).code == 0
    assert_same_run(tmp_path / "straight", tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["train_time_s"] <= summary["wall_time_s"]


def test_a_peers_deadline_is_a_deadline_stop_here(train_here, tmp_path):
    result = train_here([*QUICK_MLP, f"log.dir={tmp_path}", "log.name=r"], peer=PeerRank(from_check=1, late=1))
    assert result.code == 75
    assert (status(tmp_path / "r")["reason"], status(tmp_path / "r")["step"]) == ("deadline", CHECK_EVERY)


@pytest.mark.slow
def test_time_limit_counts_from_process_start_and_stops_mid_epoch(tmp_path):
    """Importing torch alone takes longer than 1 s here: a 1 s limit is met at the first check."""
    result = run_train([*SHORT_CNN, "train.time_limit=1", f"log.dir={tmp_path}", "log.name=r"])
    assert result.returncode == 75, result.stderr
    stop_by = next(line for line in result.stdout.splitlines() if "stop by" in line)
    assert "s ago: the run stops at its first check" in stop_by and "in -" not in stop_by, stop_by
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["requeue"], st["epochs_done"], st["step"]) == (
        "stopped", "deadline", True, 0, 16)

"""The run directory: status.json and its copy for job scripts, a finished run run again, a failed start that
leaves nothing, and one directory that two runs cannot share."""

import json
import sys

import pytest

from helpers.commands import QUICK_MLP, SMALL_CNN
from helpers.processes import popen
from helpers.runs import status, wait_for_rows


def test_status_file_copy_for_job_scripts(train_here, tmp_path):
    copy = tmp_path / "job-status.json"
    result = train_here([*QUICK_MLP, "train.epochs=1", f"log.dir={tmp_path}", "log.name=r"],
                        env={"HPC_MNIST_STATUS_FILE": str(copy)})
    assert result.code == 0
    assert json.loads(copy.read_text()) == status(tmp_path / "r") and status(tmp_path / "r")["state"] == "completed"


def test_rerun_of_a_finished_run_changes_nothing(train_here, tmp_path):
    assert train_here([*QUICK_MLP, "train.epochs=1", f"log.dir={tmp_path}", "log.name=r"]).code == 0
    summary = (tmp_path / "r" / "summary.json").read_text()
    result = train_here(["--config", str(tmp_path / "r" / "config.yaml")])
    assert result.code == 0 and "finished already" in result.out.splitlines()[0]
    assert (tmp_path / "r" / "summary.json").read_text() == summary


def test_a_failed_start_leaves_no_run_directory(train_here, tmp_path):
    nowhere = tmp_path / "nowhere"
    result = train_here([*QUICK_MLP, "data.name=mnist", f"data.root={nowhere}", f"log.dir={tmp_path / 'runs'}"])
    assert result.code == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_two_runs_in_one_directory(tmp_path, train_here):
    # killed below
    proc = popen([*SMALL_CNN, "train.epochs=1000", f"log.dir={tmp_path}", "log.name=r"], [sys.executable])
    try:
        wait_for_rows(tmp_path / "r", 1, proc)
        result = train_here([*SMALL_CNN, f"log.dir={tmp_path}", "log.name=r"])  # the second run: this process
        assert result.code == 2
        assert f"run directory {tmp_path / 'r'} is in use by another run" in result.err
    finally:
        proc.kill()
        proc.communicate()

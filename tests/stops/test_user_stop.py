"""`hpc-mnist stop` on a real 2-rank run, from another process as a login node would: the ranks stop at their
next check with one checkpoint, status.json says `user stop` with requeue false (a job script then ends the
job), `hpc-mnist status` shows it live and stopped, and the same command continues to the uninterrupted result."""

import json
import subprocess
import sys

import pytest

from helpers.commands import LONG_EPOCHS, SMALL_CNN, ranks
from helpers.processes import REPO, clean_env, ok, popen, run_train
from helpers.runs import assert_same_run, status, wait_for_rows


def hpc_mnist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_mnist", *args], capture_output=True, text=True, cwd=REPO,
                          env=clean_env(), timeout=60)


@pytest.mark.slow
def test_stop_from_another_process_checkpoints_ends_without_requeue_and_the_run_continues_exactly(straight,
                                                                                                  tmp_path):
    args = [*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={tmp_path}", "log.name=r"]
    proc = popen(args, ranks(2))
    wait_for_rows(tmp_path / "r", 1, proc)
    live = json.loads(hpc_mnist("status", str(tmp_path), "--json").stdout)[0]
    assert (live["name"], live["state"], live["epochs"]) == ("r", "running", LONG_EPOCHS)
    assert live["epochs_done"] >= 1 and live["eta_s"] > 0 and live["checkpoint"].startswith("checkpoint-")
    asked = hpc_mnist("stop", str(tmp_path / "r"))
    assert asked.returncode == 0 and asked.stdout.startswith(f"asked run {tmp_path / 'r'} (rank 0 on "), asked
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    st = status(tmp_path / "r")
    assert (st["state"], st["reason"], st["requeue"], st["exit_code"]) == ("stopped", "user stop", False, 75)
    assert st["epochs_done"] < LONG_EPOCHS
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("stopped", "user stop")
    assert f"stopped (user stop) after {st['epochs_done']} epoch(s)" in out, out[-2000:]
    shown = json.loads(hpc_mnist("status", str(tmp_path / "r"), "--json").stdout)[0]
    assert (shown["state"], shown["reason"]) == ("stopped", "stopped by hpc-mnist stop")
    again = hpc_mnist("stop", str(tmp_path / "r"))
    assert again.returncode == 2 and "is not running (stopped" in again.stderr
    resumed = ok(run_train(args, launcher=ranks(2)))
    assert "continuing" in resumed.stdout.splitlines()[0]
    assert not (tmp_path / "r" / "stop").exists()  # the request was for the stopped segment only
    assert_same_run(straight / "two", tmp_path / "r")

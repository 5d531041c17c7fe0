"""`hpc-mnist status` on run directories the trainer wrote, one per way a run ends (completed, stopped for a
signal and for the deadline, a user's stop, a non-finite loss, a status left running by a process that died):
each row with its state and reason, as a script reads them (--json)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.commands import QUICK_MLP
from helpers.in_process import PeerRank
from helpers.processes import REPO, clean_env
from helpers.runs import stop_file
from hpc_mnist.runtime import stopfile


@pytest.mark.slow  # six runs in this process: half a minute on 2 busy cores
def test_every_ending_the_trainer_writes_reads_back_as_its_state_and_reason(train_here, tmp_path):
    runs = tmp_path / "runs"
    args = [*QUICK_MLP, f"log.dir={runs}"]
    assert train_here([*args, "log.name=completed"]).code == 0
    assert train_here([*args, "log.name=signal"], peer=PeerRank(from_check=2, signum=signal.SIGTERM)).code == 75
    assert train_here([*args, "log.name=deadline"], env=stop_file(tmp_path)).code == 75
    asked = tmp_path / "asked.stop"
    stopfile.request(asked)
    assert train_here([*args, "log.name=user"], env={stopfile.VAR: str(asked)}).code == 75
    assert train_here([*args, "log.name=diverged"], peer=PeerRank(from_check=1, bad_step=7)).code == 3
    assert train_here([*args, "log.name=died"], peer=PeerRank(from_check=2, signum=signal.SIGTERM)).code == 75
    died = json.loads((runs / "died" / "status.json").read_text())  # as a rank 0 killed mid-run leaves it
    (runs / "died" / "status.json").write_text(json.dumps({**died, "state": "running", "pid": 2**22 + 5}))
    done = subprocess.run([sys.executable, "-m", "hpc_mnist", "status", str(runs), "--json"], capture_output=True,
                          text=True, cwd=REPO, env=clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    found = {r["name"]: (r["state"], r["reason"].split(":")[0]) for r in json.loads(done.stdout)}
    assert found == {"completed": ("completed", ""), "signal": ("stopped", "signal SIGTERM; not requeued"),
                     "deadline": ("stopped", "time limit; its job continues it"),
                     "user": ("stopped", "stopped by hpc-mnist stop"),
                     "diverged": ("failed", "non-finite loss"), "died": ("failed", "gone")}
    assert os.path.exists(asked)  # read, never consumed: the job's files are the job script's

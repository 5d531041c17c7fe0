"""Hang diagnostics with real processes: a rank that stops responding mid-training is named by rank 0 within
the collective timeout, every rank's stacks land in the run directory; a rank that never starts fails the
start-up within dist.init_timeout, in one line."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers.commands import torchrun
from helpers.processes import REPO, clean_env, free_port, run_train

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

ARGS = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false", "data.synthetic_train=4000"]


# Where rank 1 stops responding, and how rank 0's error line names it: inside a training step, and in the
# work between steps whose collectives used to report every rank as behind.
# (Gathering step times is marked the same way as these two.)
PLACES = [("20", r"epoch 1 step 20, computing"), ("evaluate", r"epoch 1 step \d+, evaluating"),
          ("checkpoint", r"epoch 1 step \d+, writing a checkpoint")]


@pytest.mark.parametrize("place,named", PLACES, ids=[p for p, _ in PLACES])
def test_a_stalled_rank_is_named_and_every_rank_leaves_its_stacks(tmp_path, place, named):
    cmd = [*torchrun(), "-m", "hpc_mnist.train", *ARGS, "dist.timeout=6", "log.timing=true", f"log.dir={tmp_path}",
           "log.name=r"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(HPC_MNIST_TEST_STALL=f"1:{place}"), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    started, error = time.monotonic(), None
    try:
        for line in proc.stderr:
            if line.startswith("hpc_mnist: error:"):
                error = line.strip()
                break
    finally:  # the stalled rank never answers (torchrun would wait 30 s for it): kill the workers, then torchrun
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            os.kill(int(pid), signal.SIGKILL)  # workers run in sessions of their own
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert error is not None
    assert time.monotonic() - started < 90
    assert error.startswith("hpc_mnist: error: a collective timed out after 6 s (dist.timeout): ")
    assert re.search(rf"rank 1 on {re.escape(socket.gethostname())} \({named}\) did not arrive;", error), error
    assert "rank 0 on" not in error
    dumps = {rank: (tmp_path / "r" / f"hang-rank{rank}.txt").read_text() for rank in (0, 1)}
    assert "maybe_stall" in dumps[1] and "waiting in a collective" in dumps[0].splitlines()[0]
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert (status["state"], status["exit_code"]) == ("failed", 4)


def test_a_rank_that_never_starts_fails_the_start_up_in_one_line(tmp_path):
    port = free_port()
    started = time.monotonic()
    result = run_train([*ARGS, "dist.init_timeout=5", f"log.dir={tmp_path}"],
                       env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}, timeout=120)
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"rank 0 could not join the job's rendezvous at 127.0.0.1:{port} within 5 s (dist.init_timeout)" \
        in result.stderr
    assert "1/2 clients joined" in result.stderr
    assert not any(tmp_path.iterdir())  # a failed start leaves no run directory

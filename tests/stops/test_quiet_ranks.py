"""A rank that goes quiet without closing its sockets (a frozen process: SIGSTOP) is named within 60 s of the fault
with default settings, by one line and in status.json, and every process of the job is gone within 90 s, under
torchrun (the agent holds the store) and MPICH's mpiexec (rank 0's process holds it, and is the one frozen)."""

import json
import os
import signal
import socket
import sys
import time

import pytest

from helpers.commands import MPIEXEC, SMALL_CNN, torchrun
from helpers.processes import error_lines, popen, worker_pids
from helpers.runs import status, wait_for_rows
from hpc_mnist.errors import EXIT_HUNG
from hpc_mnist.runtime.peers import process_exists

pytestmark = pytest.mark.slow  # real processes

HOST = socket.gethostname()
NAMED_WITHIN, GONE_WITHIN = 60, 90  # seconds from the fault (issue 29)


def mpi_pids(run_dir) -> dict[int, int]:
    return dict(enumerate(json.loads((run_dir / "ranks.json").read_text())["pids"]))


@pytest.mark.parametrize("launcher, victim", [
    ("torchrun", 1),
    pytest.param("mpiexec", 0, marks=pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")),
])
def test_a_frozen_rank_is_named_within_a_minute_and_every_process_ends(tmp_path, launcher, victim):
    run_dir = tmp_path / "r"
    cmd = torchrun() if launcher == "torchrun" else [MPIEXEC, "-n", "2", sys.executable]
    proc = popen([*SMALL_CNN, "train.epochs=200", f"log.dir={tmp_path}", "log.name=r"], cmd)
    try:
        wait_for_rows(run_dir, 2, proc)  # frozen once the watch has read its beats for a while (not at start-up)
        pids = worker_pids(proc.pid) if launcher == "torchrun" else mpi_pids(run_dir)
        frozen = time.monotonic()
        os.kill(pids[victim], signal.SIGSTOP)
        named = None
        while proc.poll() is None and time.monotonic() - frozen < GONE_WITHIN + 30:
            if named is None and (run_dir / "status.json").exists() and status(run_dir)["state"] == "failed":
                named = time.monotonic() - frozen
            time.sleep(0.2)
        out, err = proc.communicate(timeout=5)
        ended = time.monotonic() - frozen
        if named is None and status(run_dir)["state"] == "failed":
            named = ended  # written and followed by the launcher's exit within one poll
        while any(process_exists(pid) for pid in pids.values()) and time.monotonic() - frozen < GONE_WITHIN:
            time.sleep(0.1)  # the launcher may exit a moment before the kill of a frozen rank has taken effect
        gone = time.monotonic() - frozen
        leftovers = [pid for pid in pids.values() if process_exists(pid)]
    finally:
        for pid in pids.values():
            if process_exists(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = error_lines(err)
    assert named is not None and named < NAMED_WITHIN, (named, err[-3000:])
    assert ended < GONE_WITHIN and gone < GONE_WITHIN and not leftovers, (ended, gone, leftovers, err[-3000:])
    assert len(ours) == 1, err[-3000:]
    assert f"rank {victim} (pid {pids[victim]}) on {HOST} is quiet (epoch " in ours[0], ours
    assert "no heartbeat" in ours[0] or "store it holds" in ours[0], ours
    st = status(run_dir)
    assert (st["state"], st["reason"], st["quiet_ranks"], st["quiet_hosts"], st["exit_code"], st["requeue"]) == \
        ("failed", "rank quiet", [victim], [HOST], EXIT_HUNG, True)  # requeue: epoch 1's checkpoint is progress
    assert st["checkpoint"].endswith(".pt") and os.path.exists(st["checkpoint"])
    survivor = 1 - victim
    assert (run_dir / f"hang-rank{survivor}.txt").read_text().startswith(f"rank {survivor}: the job ends: ")
    assert not (run_dir / f"hang-rank{victim}.txt").exists()  # a frozen process writes nothing


"""A rank that goes quiet without closing its sockets (a frozen process: SIGSTOP) is named within 60 s of the fault
with default settings, by one line and in status.json, and every process of the job is gone within 90 s, under
torchrun (the agent holds the store) and MPICH's mpiexec (rank 0's process holds it, and is the one frozen)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.commands import MPIEXEC, SMALL_CNN, SMOKE, torchrun
from helpers.processes import REPO, clean_env, error_lines, popen, run_train, worker_pids
from helpers.runs import status, wait_for_rows
from hpc_mnist.core import config
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



def test_a_rank_stuck_in_its_own_work_is_named_within_a_minute(tmp_path):
    """Rank 1's main thread hangs at step 15 (the tests' stall: as a hung kernel or driver would) while its
    process, and so its watch, still answers; rank 0 waits for it in DDP's all-reduce. With default settings rank
    1 is named, as stuck and where, within a minute, and every process ends."""
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([*torchrun(), "-m", "hpc_mnist.train", *SMALL_CNN, "train.epochs=3", f"log.dir={tmp_path}",
                             "log.name=r"], cwd=REPO, env=clean_env(HPC_MNIST_TEST_STALL="1:15"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    first_step = None  # the stall comes at step 15, a fraction of a second after the first
    try:
        while first_step is None and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                first_step = json.loads((run_dir / "status.json").read_text()).get("first_step_at")
            time.sleep(0.05)
        out, err = proc.communicate(timeout=GONE_WITHIN + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    st = status(run_dir)
    named = st["time"] - first_step
    assert named < NAMED_WITHIN, (named, err[-3000:])
    assert time.time() - st["time"] < GONE_WITHIN
    ours = error_lines(err)
    assert len(ours) == 1, err[-3000:]
    assert f"on {HOST} is quiet (epoch 1 step 15, computing): its process answers, but its own work" in ours[0], ours
    assert (st["state"], st["reason"], st["quiet_ranks"], st["where"], st["exit_code"]) == \
        ("failed", "rank quiet", [1], {"1": "epoch 1 step 15, computing"}, EXIT_HUNG), st
    assert "maybe_stall" in (run_dir / "hang-rank1.txt").read_text()  # its stacks show where it hangs


WRITE_BPS = 8192  # the slowed file system's write rate: a checkpoint of the smoke MLP takes twice quiet_after


@pytest.fixture
def slowed_dir(tmp_path):
    """A real file system whose writes the kernel throttles to WRITE_BPS (ext4 on a loop device, cgroup v1's
    blkio throttle on that device alone): the slow parallel file system of a busy centre, on one machine."""
    knob = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
    tools = [shutil.which(t) for t in ("losetup", "mkfs.ext4", "mount", "umount")]
    if os.geteuid() != 0 or not knob.exists() or not all(tools):
        pytest.skip("a throttled file system needs root, losetup, mkfs.ext4 and cgroup v1's blkio throttle")
    image, mount = tmp_path / "disk.img", tmp_path / "slow"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    rdev = os.stat(device).st_rdev
    key = f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        subprocess.run(["mount", device, str(mount)], check=True)
        knob.write_text(f"{key} {WRITE_BPS}\n")
        yield mount
    finally:
        knob.write_text(f"{key} 0\n")
        subprocess.run(["umount", str(mount)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_checkpoints_slower_than_quiet_after_raise_no_false_alarm(slowed_dir):
    """Each checkpoint of this run takes longer to reach the disk than dist.quiet_after (default), while the other
    rank waits in its next collective: nobody is quiet, and the run ends as it would anywhere."""
    done = run_train([*SMOKE, "train.epochs=2", "log.tensorboard=false", f"log.dir={slowed_dir}", "log.name=r"],
                     launcher=torchrun(), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "quiet" not in done.stdout + done.stderr
    assert status(slowed_dir / "r")["state"] == "completed"
    rows = [json.loads(line) for line in (slowed_dir / "r" / "metrics.jsonl").read_text().splitlines()]
    quiet_after = config.build(str(REPO / "configs/smoke.yaml"), []).dist.quiet_after
    slowest = max(r["epoch_time_s"] - r["train_time_s"] for r in rows)  # validation and the checkpoint's write
    print(f"the slowest epoch end (its checkpoint written to {WRITE_BPS} B/s): {slowest:.1f} s")
    assert slowest > quiet_after, rows  # the write really outlasted the allowance

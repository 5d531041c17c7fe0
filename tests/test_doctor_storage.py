"""The doctor's storage check: the run directory is writable from every host, shared between hosts, and has room
for train.keep_checkpoints + 1 checkpoints of this model with its optimizer state. Real doctor processes on a
tmpfs filled to the brim, a directory this user cannot write, 2 ranks under torchrun; the estimate against a
real checkpoint; the node-local verdict from what ranks on two hosts report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import SMOKE, torchrun
from helpers.processes import REPO, clean_env, ok, run_train
from hpc_mnist.core import config
from hpc_mnist.doctor import checks, storage
from hpc_mnist.doctor.checks import check_storage
from hpc_mnist.doctor.ranks import RankInfo

ROOT = os.geteuid() == 0
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]  # root, held to permissions


def doctor(*args: str, launcher: tuple[str, ...] = (sys.executable,), prefix: tuple[str, ...] = ()) -> tuple[
        subprocess.CompletedProcess, dict]:
    """The doctor on SMOKE's run, and its storage check."""
    out = Path(args[0]).parent / "doctor.json"
    done = subprocess.run([*prefix, *launcher, "-m", "hpc_mnist.doctor", "--timeout", "30", "--json", str(out),
                           *SMOKE, *args[1:], f"log.dir={args[0]}"], capture_output=True, text=True, cwd=REPO,
                          env=clean_env(COLUMNS="250"), timeout=180)
    assert "Traceback" not in done.stderr, done.stderr
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]} if out.exists() else {}
    return done, checks.get("storage", {})


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs, mounted for the test."""
    if not ROOT or not shutil.which("mount"):
        pytest.skip("mounts a tmpfs: needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_file_system_without_room_for_the_checkpoints_fails_and_says_how_much_is_free_and_needed(tmpfs):
    (tmpfs / "filler").write_bytes(b"\0" * 900 * 1024)  # leaves about 100 KiB: less than one smoke checkpoint
    free = shutil.disk_usage(tmpfs).free
    done, check = doctor(str(tmpfs / "runs"), "log.name=r")
    assert done.returncode == 1, done.stdout + done.stderr
    assert check["status"] == "fail"
    assert check["message"].startswith(f"{tmpfs / 'runs' / 'r'}: {free / 1024:.1f} KiB free on tmpfs at {tmpfs} ")
    assert "train.keep_checkpoints + 1 = 4 checkpoints of " in check["message"] and "free some space" in \
        check["message"]
    assert done.stdout.rstrip().endswith("unhealthy: storage")
    assert sorted(p.name for p in tmpfs.iterdir()) == ["doctor.json", "filler"]  # no run directory, no probe


def test_a_full_file_system_is_one_that_cannot_be_written(tmpfs):
    (tmpfs / "filler").write_bytes(b"\0" * 1024 * 1024)
    done, check = doctor(str(tmpfs), "log.name=r")
    assert done.returncode == 1
    assert check["status"] == "fail"
    assert check["message"].startswith("rank 0 on ") and f"cannot write {tmpfs} (for the run directory " \
        f"{tmpfs / 'r'}): No space left on device" in check["message"]


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="root held to permissions by setpriv")
def test_a_directory_this_user_cannot_write_fails(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chown(closed, 65534, 65534)
    closed.chmod(0o755)  # another user's: readable, not writable by this one
    tmp_path.chmod(0o777)  # the report itself goes beside it
    done, check = doctor(str(closed), "log.name=r", prefix=tuple(AS_A_USER))
    assert done.returncode == 1, done.stdout + done.stderr
    assert check["message"].endswith(f"cannot write {closed} (for the run directory {closed / 'r'}): Permission "
                                     "denied: set log.dir to a folder every host can write")


def test_ranks_on_two_hosts_that_do_not_see_each_others_files_name_a_node_local_directory():
    def rank(r: int, host: str) -> RankInfo:
        return RankInfo(r, 2, 0, 1, "slurm", host, 100 + r, "cpu", storage={
            "run_dir": "/tmp/runs/r", "probed": "/tmp", "writable": True, "error": "", "free_bytes": 2**30,
            "checkpoint_bytes": 0, "fs_type": "tmpfs", "mount": "/tmp", "probe": f"/tmp/.probe-{r}"})
    infos = [rank(0, "node1"), rank(1, "node2")]
    local = check_storage(infos, 2**20, 3, {0: True, 1: False})
    assert (local.status, local.message) == ("fail", "the run directory /tmp/runs/r is on a node-local file system "
                                             "(tmpfs at /tmp on each host): rank 0 on node1 does not see what node2 "
                                             "write there; set log.dir to a file system every host shares")
    shared = check_storage(infos, 2**20, 3, {0: True, 1: True})
    assert shared.status == "ok" and shared.message.startswith("/tmp/runs/r writable from 2 host(s); 1.0 GiB free")


@pytest.mark.slow
def test_the_estimate_covers_a_real_checkpoint_without_overstating_it(tmp_path):
    ok(run_train([*SMOKE, "optim.name=adam", f"log.dir={tmp_path}", "log.name=r"]))
    real = max(p.stat().st_size for p in (tmp_path / "r").glob("checkpoint-*.pt"))
    estimate = storage.checkpoint_size(config.build(str(REPO / "configs/smoke.yaml"), ["optim.name=adam"]), 1)
    assert real <= estimate <= 1.25 * real, (real, estimate)


@pytest.mark.slow
def test_two_ranks_under_torchrun_see_each_others_probe_and_leave_nothing(tmp_path):
    done, check = doctor(str(tmp_path / "runs"), "log.name=r", launcher=tuple(torchrun()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert check["status"] == "ok" and check["message"].startswith(f"{tmp_path / 'runs' / 'r'} writable from 1 host")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor.json"]


def test_a_host_that_cannot_write_is_blamed_alone_and_a_set_up_failing_everywhere_is_not():
    """The job scripts go on without the hosts a failure names (SPARE_NODES): only where other hosts passed."""
    def rank(r: int, host: str, writable: bool) -> RankInfo:
        return RankInfo(r, 3, 0, 1, "slurm", host, 100 + r, "cpu", storage={
            "run_dir": "/shared/runs/r", "probed": "/shared", "writable": writable, "error": "Read-only file system",
            "free_bytes": 2**30, "checkpoint_bytes": 0, "fs_type": "nfs", "mount": "/shared", "probe": ""})
    one = check_storage([rank(0, "n1", True), rank(1, "n2", False), rank(2, "n3", True)], 2**20, 3,
                        {0: True, 1: True, 2: True})
    assert (one.status, one.hosts) == ("fail", ["n2"])
    every = check_storage([rank(r, f"n{r + 1}", False) for r in range(3)], 2**20, 3, {0: True, 1: True, 2: True})
    assert (every.status, every.hosts) == ("fail", [])


def test_the_test_hook_fails_the_named_hosts_and_the_report_lists_them(monkeypatch):
    infos = [RankInfo(r, 3, 0, 1, "slurm", f"n{r + 1}", 100 + r, "cpu") for r in range(3)]
    assert checks.check_named_hosts(infos) is None  # unset: no such check
    monkeypatch.setenv(checks.FAIL_HOSTS_VAR, "n2,elsewhere")
    code, report = checks.verdict({}, infos, None, [None] * 3, "gloo")
    assert code == 1 and report["bad_hosts"] == ["n2"]  # the other checks' failures here blame no host alone
    assert [c for c in report["checks"] if c["name"] == "named to fail"] == [
        {"name": "named to fail", "status": "fail", "hosts": ["n2"],
         "message": f"n2 named in ${checks.FAIL_HOSTS_VAR} (a test of the job scripts)"}]
    monkeypatch.setenv(checks.FAIL_HOSTS_VAR, "elsewhere")
    code, report = checks.verdict({}, infos, None, [None] * 3, "gloo")
    assert report["bad_hosts"] == [] and [c["status"] for c in report["checks"] if c["name"] == "named to fail"] == [
        "ok"]

"""A bad host is not used again by its run: the record (bad-hosts.json, runtime/badhosts.py), the pre-launch
check of a job's hosts, `hpc-mnist hosts` that shows and clears it, a PBS successor placed on good hosts
(pbs.placed), a Slurm requeue that excludes them (runtime/slurm.py under the stub scontrol), and the chain of
launches without progress (runtime/chain.py). What the job scripts do with them: test_job.py,
test_job_scripts.py; on the real labs: cluster/test_stops.py, cluster/test_pbs_jobs.py."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.processes import REPO, clean_env
from hpc_mnist import hosts as hosts_command
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import badhosts, chain, pbs, slurm

STUBS = REPO / "tests" / "stubs"


def test_a_host_is_recorded_once_with_why_when_and_the_job(tmp_path):
    assert badhosts.add(tmp_path, ["n2", "n2", "n3"], "rank lost (rank 1)", "4242") == ["n2", "n3"]
    assert badhosts.add(tmp_path, ["n2"], "rank quiet (rank 3)", "4243") == []  # the first record stays
    record = json.loads((tmp_path / "bad-hosts.json").read_text())
    assert set(record) == {"hosts"} and list(record["hosts"]) == ["n2", "n3"]
    n2 = record["hosts"]["n2"]
    assert (n2["why"], n2["job"]) == ("rank lost (rank 1)", "4242")
    when = datetime.datetime.fromisoformat(n2["when"].replace("Z", "+00:00"))
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left beside it


def test_why_names_the_reason_ranks_and_epoch():
    st = {"reason": "rank lost", "rank": 2, "lost_ranks": [2, 3], "epochs_done": 1}
    assert badhosts.why(st) == "rank lost (ranks 2, 3) in epoch 2"
    assert badhosts.why({"reason": "rank quiet", "rank": 1}) == "rank quiet (rank 1)"


@pytest.mark.parametrize("text", ["[1]", "{\"hosts\": [\"n1\"]}", "not json", "{\"hosts\": {\"n1\": 3}}"])
def test_a_damaged_record_is_one_line(tmp_path, text):
    (tmp_path / "bad-hosts.json").write_text(text)
    with pytest.raises(UserError, match="is not a record of bad hosts"):
        badhosts.read(tmp_path)


def test_clear_forgets_named_hosts_or_all_and_refuses_a_typo(tmp_path):
    badhosts.add(tmp_path, ["n1", "n2", "n3"], "rank lost", "")
    assert badhosts.clear(tmp_path, ["n2"]) == ["n2"]
    assert list(badhosts.read(tmp_path)) == ["n1", "n3"]
    with pytest.raises(UserError, match="n9 is not recorded as bad .* \\(recorded: n1, n3\\)"):
        badhosts.clear(tmp_path, ["n9"])
    assert list(badhosts.read(tmp_path)) == ["n1", "n3"]  # a typo clears nothing
    assert badhosts.clear(tmp_path) == ["n1", "n3"] and badhosts.read(tmp_path) == {}


def test_good_hosts_keep_the_allocations_order():
    assert badhosts.good(["n3", "n1", "n2", "n1"], {"n1": {}}) == ["n3", "n2"]


def test_too_few_good_hosts_is_one_line_naming_them(tmp_path):
    assert badhosts.check(["n1", "n2"], {"n3": {}}, 2, tmp_path) == ["n1", "n2"]
    assert badhosts.check(["n1", "n2", "n3"], {"n3": {}}, 2, tmp_path) == ["n1", "n2"]  # a spare left
    with pytest.raises(UserError, match="this job's hosts n2 are recorded as bad in .*bad-hosts.json, which leaves 1 "
                                        "of the 2 node\\(s\\) the job needs: not launching"):
        badhosts.check(["n1", "n2"], {"n2": {}}, 2, tmp_path)


def test_the_start_panel_note_names_them(tmp_path):
    assert badhosts.panel_notes(tmp_path) == []
    badhosts.add(tmp_path, ["n2"], "rank lost (rank 1)", "7")
    [note] = badhosts.panel_notes(tmp_path)
    assert note.startswith("bad hosts, not used again by this run: n2 (rank lost (rank 1), 20")
    assert f"`hpc-mnist hosts {tmp_path} --clear` clears them" in note


def test_hosts_command_shows_and_clears(tmp_path, capsys):
    assert hosts_command.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path}: no bad hosts recorded\n"
    badhosts.add(tmp_path, ["n1", "n2"], "rank lost (rank 1)", "42")
    assert hosts_command.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["n1", "n2"] and lines[0].endswith(", job 42: rank lost (rank 1)")
    assert hosts_command.main([str(tmp_path), "--clear", "n1"]) == 0
    assert capsys.readouterr().out == "cleared n1: the run may use it again\n"
    assert hosts_command.main([str(tmp_path), "--clear"]) == 0
    assert capsys.readouterr().out == "cleared n2: the run may use it again\n"
    assert badhosts.read(tmp_path) == {}


@pytest.mark.parametrize(("args", "message"), [
    (lambda t: [str(t / "none")], "no run directory"),
    (lambda t: [str(t), "--clear", "n9"], "n9 is not recorded as bad"),
])
def test_hosts_command_mistakes_are_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "hpc_mnist.cli", "hosts", *args(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, env=clean_env(), timeout=60)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("hpc_mnist: error: ") and message in done.stderr


def test_a_pbs_successor_names_a_good_host_per_chunk():
    """Measured on OpenPBS 23.06: select has no 'not this host', so the good hosts are named, the ones up first
    (n2 is busy with this very job: still chosen after the free ones)."""
    hosts = {"n1": "free", "n2": "job-busy", "n3": "free", "n4": "down"}
    assert pbs.placed("2:ncpus=4", ["n1"], hosts) == "1:ncpus=4:host=n2+1:ncpus=4:host=n3"
    assert pbs.placed("1:ncpus=4:host=n1+1:ncpus=4:host=n2", ["n2"], hosts) == "1:ncpus=4:host=n1+1:ncpus=4:host=n3"
    assert pbs.placed("1:ncpus=2+1:ngpus=1", ["n2"], hosts) == "1:ncpus=2:host=n1+1:ngpus=1:host=n3"
    assert pbs.placed("3:ncpus=4", ["n1"], hosts) == "1:ncpus=4:host=n2+1:ncpus=4:host=n3+1:ncpus=4:host=n4"
    with pytest.raises(UserError, match="without the run's bad hosts \\(n1, n3\\) the server has 2 of the 3 host"):
        pbs.placed("3:ncpus=4", ["n1", "n3"], hosts)


def test_a_pbs_successor_without_bad_hosts_keeps_its_select():
    info = {"Resource_List": {"select": "2:ncpus=1", "place": "scatter"}}
    line = pbs.continuation(info, "1.s", "/x.sh", "r", 1)
    assert "select=2:ncpus=1" in line
    line = pbs.continuation(info, "1.s", "/x.sh", "r", 1, ["n1"], {"n1": "free", "n2": "free", "n3": "free"})
    assert "select=1:ncpus=1:host=n2+1:ncpus=1:host=n3" in line


@pytest.fixture
def stub_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{STUBS}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "stub.log"))
    return lambda: [line for line in (tmp_path / "stub.log").read_text().splitlines() if "show" not in line]


@pytest.fixture
def term_restored():
    """slurm.requeue ignores TERM from then on in its process (the requeue's TERM must not cut its line short)."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_a_slurm_requeue_without_bad_hosts_is_a_plain_requeue(stub_slurm, term_restored):
    assert slurm.requeue("42", []) == []
    assert stub_slurm() == ["scontrol requeue 42"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_a_slurm_requeue_holds_excludes_and_releases(stub_slurm, monkeypatch, term_restored):
    """Measured on the lab's Slurm: a running job's ExcNodeList cannot be updated, so the job is requeued held,
    updated (its own exclusions kept) and released."""
    monkeypatch.setenv("STUB_EXCLUDED", "n3")
    assert slurm.requeue("42", ["n2"]) == ["n3", "n2"]
    assert stub_slurm() == ["scontrol requeuehold 42", "scontrol update JobId=42 ExcNodeList=n3,n2",
                            "scontrol release 42"]


def test_a_slurm_exclusion_that_leaves_too_few_nodes_is_not_requeued(stub_slurm, monkeypatch, term_restored):
    """Measured: Slurm accepts it and leaves the job pending for ever (Reason BadConstraints)."""
    monkeypatch.setenv("STUB_NUM_NODES", "2")
    monkeypatch.setenv("STUB_PARTITION_NODES", "n[1-2]")
    with pytest.raises(UserError, match="not requeueing job 42: without the bad hosts \\(n2\\) partition batch "
                                        "has 1 of the 2 node"):
        slurm.requeue("42", ["n2"])
    assert stub_slurm() == []


def test_the_chain_counts_launches_without_a_new_checkpoint(tmp_path):
    assert chain.count(tmp_path, None, "7", 0) == 1  # nothing saved yet
    assert chain.count(tmp_path, "c-1.pt", "7", 1) == 0  # progress
    assert chain.count(tmp_path, "c-1.pt", "7", 2) == 1
    assert chain.count(tmp_path, None, "7", 3) == 2  # a gone status names no checkpoint: no progress either
    assert chain.count(tmp_path, "c-1.pt", "7", 4) == 3
    assert chain.count(tmp_path, "c-1.pt", "7", 0) == 4  # a relaunch in the same first job counts on
    assert chain.count(tmp_path, "c-1.pt", "8", 0) == 1  # a user's new submission starts a new chain
    assert chain.count(tmp_path, "c-2.pt", "8", 1) == 0
    (tmp_path / "chain.json").write_text("{broken")
    assert chain.count(tmp_path, "c-2.pt", "8", 2) == 0  # a damaged record starts the count again

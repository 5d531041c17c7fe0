"""The pre-flight doctor: real launches (healthy, a missing rank, ranks bound to one core) and each check."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from helpers.commands import torchrun
from helpers.processes import REPO, clean_env, free_port
from hpc_mnist.doctor.allreduce import nccl_network
from hpc_mnist.doctor.checks import (
    allocation_nodes,
    check_cpu_sets,
    check_gpus,
    check_master,
    check_mpi4py,
    check_threads,
    check_transport,
    check_world,
    cpu_ranges,
)
from hpc_mnist.doctor.ranks import RankInfo


def _by_hand(rank: int, port: int, *args: str, taskset: str | None = None) -> subprocess.Popen:
    """One rank started with torchrun's variables, as a user debugging a launch would."""
    env = clean_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "hpc_mnist.doctor", *args]
    return subprocess.Popen((["taskset", "-c", taskset] if taskset else []) + cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


@pytest.mark.slow
def test_two_ranks_under_torchrun_are_healthy(tmp_path):
    result = subprocess.run([*torchrun(), "-m", "hpc_mnist.doctor", "--timeout", "20", "--json",
                             str(tmp_path / "doctor.json")], capture_output=True, text=True, cwd=REPO,
                            env=clean_env(COLUMNS="150"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for header in ("rank", "host", "local rank", "device", "CPU affinity", "threads"):
        assert header in result.stdout
    assert result.stdout.rstrip().endswith("healthy")
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert [(r["rank"], r["local_rank"], r["device"], r["host"]) for r in report["ranks"]] == [
        (0, 0, "cpu", socket.gethostname()), (1, 1, "cpu", socket.gethostname())]
    assert report["ranks"][0]["cpus"] == sorted(os.sched_getaffinity(0))
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["all-reduce"]["status"] == "ok" and report["allreduce"]["correct"]
    assert checks["master address"]["status"] == "skip"  # one host: loopback is fine
    assert checks["CPU binding"]["status"] == "skip" and checks["threads"]["status"] == "ok"


@pytest.mark.slow
def test_a_missing_rank_is_named_within_the_timeout():
    start = time.monotonic()
    rank0 = _by_hand(0, free_port(), "--timeout", "3")
    out, err = rank0.communicate(timeout=90)
    assert rank0.returncode == 1, out + err
    assert "FAIL rendezvous: 1 of 2 ranks checked in within 3 s; checked in: rank 0 " \
           f"({socket.gethostname()}); did not: rank 1" in " ".join(out.split())
    assert time.monotonic() - start < 60  # 3 s of waiting plus start-up, never the 10-minute collective timeout


@pytest.mark.slow
def test_a_missing_rank_0_is_named_by_the_others():
    rank1 = _by_hand(1, free_port(), "--timeout", "3")
    out, err = rank1.communicate(timeout=90)
    assert rank1.returncode == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpc_mnist.doctor: FAIL rank 1 on {socket.gethostname()}: "
                                                   "no rendezvous at 127.0.0.1:")
    assert "did not: rank 0" in err and "checked in: rank 1" in err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset")
def test_two_ranks_bound_to_one_core_fail(tmp_path):
    port = free_port()
    ranks = [_by_hand(r, port, "--timeout", "20", "--json", str(tmp_path / f"r{r}.json"), taskset="0")
             for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [1, 1], outs
    checks = {c["name"]: c for c in json.loads((tmp_path / "r0.json").read_text())["checks"]}
    assert checks["CPU binding"]["status"] == "fail"
    assert checks["CPU binding"]["message"].startswith("ranks 0 and 1 on ") and "share core(s) 0" in \
        checks["CPU binding"]["message"]
    assert checks["threads"]["status"] == "fail"  # 2 threads on 1 core
    assert "unhealthy: CPU binding, threads" in outs[0][0]


# ---- each check on its own ---------------------------------------------------------------------------------

def rank(r: int, host: str = "a", **kw) -> RankInfo:
    base = {"world_size": 2, "local_rank": r, "local_world_size": 2, "launcher": "torchrun", "host": host,
            "pid": 1, "device": "cpu", "cpus": [0, 1, 2, 3], "cpu_count": 4, "threads": 1,
            "master_addr": "a", "master_ip": "10.0.0.1"}
    return RankInfo(rank=r, **{**base, **kw})


def test_world_size_against_the_allocation():
    assert check_world([rank(0), rank(1)], None).status == "ok"
    one = check_world([rank(0, world_size=1, local_world_size=1)], 2)
    assert one.status == "fail" and "the job has 2 node(s) but the ranks run on 1 as one process" in one.message
    two_hosts = [rank(0, "a", local_rank=0, local_world_size=1), rank(1, "b", local_rank=0, local_world_size=1)]
    assert check_world(two_hosts, 2).status == "ok"
    wrong = check_world([rank(0, local_world_size=4), rank(1, local_world_size=4)], None)
    assert wrong.status == "fail" and "a runs 2 rank(s) but they say the local world size is 4" in wrong.message
    idle = check_world([rank(0, gpus_on_host=4), rank(1, gpus_on_host=4)], None)
    assert idle.status == "warn" and "has 4 GPUs and 2 rank(s)" in idle.message


def test_allocation_nodes_from_the_scheduler(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith(("PBS_", "SLURM_"))]:
        monkeypatch.delenv(key)
    assert allocation_nodes() is None
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1\nn1\nn2\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    assert allocation_nodes() == 2
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")  # a step on part of the job
    assert allocation_nodes() == 2


def test_two_ranks_on_one_gpu_fail():
    same = [rank(0, gpu_index=0, gpu_uuid="GPU-1"), rank(1, gpu_index=0, gpu_uuid="GPU-1")]
    result = check_gpus(same)
    assert result.status == "fail" and result.message.startswith("ranks 0, 1 on a share GPU 0 (GPU-1)")
    apart = [rank(0, gpu_index=0, gpu_uuid="GPU-1"), rank(1, gpu_index=1, gpu_uuid="GPU-2")]
    assert check_gpus(apart).status == "ok"
    # One visible GPU per rank (CUDA_VISIBLE_DEVICES=0 / =1): both say index 0, yet they differ.
    masked = [rank(0, gpu_index=0, visible_devices="0"), rank(1, gpu_index=0, visible_devices="1")]
    assert check_gpus(masked).status == "ok"
    assert check_gpus([rank(0), rank(1)]).status == "skip"


def test_cpu_sets_overlap_only_matters_when_bound():
    assert check_cpu_sets([rank(0), rank(1)]).status == "skip"  # both float over all 4 cores
    bound = [rank(0, cpus=[0, 1]), rank(1, cpus=[2, 3])]
    assert check_cpu_sets(bound).status == "ok"
    clash = check_cpu_sets([rank(0, cpus=[0, 1, 2]), rank(1, cpus=[2, 3])])
    assert clash.status == "fail" and "ranks 0 and 1 on a share core(s) 2" in clash.message
    other_hosts = [rank(0, "a", cpus=[0, 1]), rank(1, "b", cpus=[0, 1])]
    assert check_cpu_sets(other_hosts).status == "ok"


def test_thread_oversubscription():
    assert check_threads([rank(0, threads=2), rank(1, threads=2)]).status == "ok"  # 4 on 4 cores
    over = check_threads([rank(0, threads=4), rank(1, threads=4)])
    assert over.status == "fail" and "2 rank(s) x 4 thread(s) = 8 threads on 4 core(s)" in over.message
    pinned = check_threads([rank(0, threads=2, cpus=[0]), rank(1, cpus=[1])])
    assert pinned.status == "fail" and "rank 0 on a runs 2 threads on 1 core(s)" in pinned.message
    assert "set OMP_NUM_THREADS=2 or run fewer ranks per node" in over.message
    crowded = check_threads([rank(r, cpus=[0, 1], local_world_size=4) for r in range(4)])  # 1 thread each already
    assert crowded.status == "fail" and crowded.message.endswith("run at most 2 rank(s) on this host"), crowded
    assert "OMP_NUM_THREADS" not in crowded.message


def test_one_host_needs_no_master_address_check():
    assert check_master([rank(0, master_addr=None, master_ip=None)]).message == "one host: none needed"
    assert check_master([rank(0)]).message == "one host: a is fine"


def test_master_address_only_checked_across_hosts():
    assert check_master([rank(0, master_ip="127.0.0.1"), rank(1, master_ip="127.0.0.1")]).status == "skip"
    loop = check_master([rank(0, "a", master_ip="127.0.1.1"), rank(1, "b", master_ip="127.0.1.1")])
    assert loop.status == "fail" and "loopback" in loop.message
    lost = check_master([rank(0, "a"), rank(1, "b", master_ip=None)])
    assert lost.status == "fail" and "rank 1 on b cannot resolve MASTER_ADDR='a'" in lost.message
    assert check_master([rank(0, "a"), rank(1, "b")]).status == "ok"


def test_mpi4py_where_the_launch_needs_it():
    assert check_mpi4py([rank(0, mpi4py=None)]).status == "skip"  # torchrun
    missing = check_mpi4py([rank(0, launcher="mpi", mpi4py="4.1"), rank(1, launcher="mpi", mpi4py=None)])
    assert missing.status == "fail" and "rank 1 on a cannot import mpi4py" in missing.message


def test_nccl_transport():
    log = ("vm:1:1 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so.\n"
           "vm:1:1 [0] NCCL INFO Using network Socket\n")
    assert nccl_network(log) == "Socket"
    assert nccl_network("NCCL INFO Using network AWS Libfabric\n") == "AWS Libfabric"
    two_hosts = [rank(0, "a"), rank(1, "b")]
    slow = check_transport(two_hosts, "nccl", ["Socket", "Socket"])
    assert slow.status == "fail" and "TCP sockets" in slow.message
    assert check_transport(two_hosts, "nccl", ["AWS Libfabric"] * 2).status == "ok"
    assert check_transport([rank(0), rank(1)], "nccl", ["Socket"] * 2).status == "ok"  # one host
    assert check_transport(two_hosts, "gloo", [None, None]).status == "skip"


def test_cpu_ranges():
    assert cpu_ranges([5, 0, 1, 2, 8, 9]) == "0-2,5,8-9"


def test_an_mpi_launch_without_mpi4py_fails_in_one_line(tmp_path):
    shim = tmp_path / "mpi4py"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = clean_env(PMI_RANK="0", PMI_SIZE="2", OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.doctor", "--timeout", "2"], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("hpc_mnist.doctor: FAIL mpi4py: an MPI launch was detected")
    assert result.stderr.count("\n") == 1

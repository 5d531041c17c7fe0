"""Rank resolution for every launcher, and real multi-process runs under MPI."""

import json
import os
import sys

import pytest
import torch

from helpers.commands import MPIEXEC, SMOKE
from helpers.processes import LAUNCH_VARS, REPO, run_train
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import cpus, devices, launchers, rendezvous
from hpc_mnist.runtime.launchers import Placement


@pytest.fixture
def env(monkeypatch):
    """A clean launcher environment; returns a setter for the variables under test."""
    for key in list(os.environ):
        if key.startswith(LAUNCH_VARS):
            monkeypatch.delenv(key)

    def set_vars(**values):
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))
    return set_vars


def test_no_launcher_is_one_process(env):
    assert launchers.detect() == Placement("none")


def test_torchrun(env):
    env(RANK=5, WORLD_SIZE=8, LOCAL_RANK=1, LOCAL_WORLD_SIZE=4)
    assert launchers.detect() == Placement("torchrun", 5, 1, 8, 4)


@pytest.mark.parametrize("variables, expected", [
    ({"PALS_RANKID": 6, "PALS_LOCAL_RANKID": 2, "PMI_SIZE": 8, "PALS_LOCAL_SIZE": 4, "PMI_RANK": 6},
     Placement("mpi", 6, 2, 8, 4)),  # Cray PALS (Polaris, Aurora)
    ({"PMI_RANK": 3, "PMI_SIZE": 4, "MPI_LOCALRANKID": 1, "MPI_LOCALNRANKS": 2},
     Placement("mpi", 3, 1, 4, 2)),  # MPICH Hydra, Intel MPI
    ({"OMPI_COMM_WORLD_RANK": 2, "OMPI_COMM_WORLD_SIZE": 4, "OMPI_COMM_WORLD_LOCAL_RANK": 0,
      "OMPI_COMM_WORLD_LOCAL_SIZE": 2}, Placement("mpi", 2, 0, 4, 2)),  # Open MPI
    ({"PMIX_RANK": 1, "PMIX_LOCAL_RANK": 1}, Placement("mpi", 1, 1, 0, None)),  # PMIx: size from mpi4py
])
def test_mpi_launchers(env, variables, expected):
    env(**variables)
    assert launchers.detect() == expected


def test_srun_step(env):
    env(SLURM_STEP_ID=0, SLURM_PROCID=5, SLURM_LOCALID=1, SLURM_NTASKS=8, SLURM_NNODES=2, SLURM_JOB_ID=42)
    assert launchers.detect() == Placement("slurm", 5, 1, 8, 4)


def test_batch_shell_without_srun_is_one_process(env):
    """sbatch's shell exports SLURM_PROCID/SLURM_NTASKS; trusting them would wait forever for peers."""
    env(SLURM_PROCID=0, SLURM_NTASKS=8, SLURM_LOCALID=0, SLURM_JOB_ID=42, SLURM_NNODES=2)
    assert launchers.detect() == Placement("none")


def test_torchrun_under_mpiexec_uses_torchrun_ranks(env):
    """Under `mpiexec --ppn 1 torchrun`, PMI_RANK is the node index, not the worker's rank."""
    env(PMI_RANK=1, PMI_SIZE=2, RANK=6, WORLD_SIZE=8, LOCAL_RANK=2, LOCAL_WORLD_SIZE=4)
    assert launchers.detect() == Placement("torchrun", 6, 2, 8, 4)


def test_srun_as_the_mpi_launcher_needs_no_mpi4py(env):
    env(SLURM_STEP_ID=0, SLURM_PROCID=3, SLURM_LOCALID=3, SLURM_NTASKS=4, SLURM_NNODES=1, PMI_RANK=3, PMI_SIZE=4)
    assert launchers.detect().launcher == "slurm"


@pytest.mark.parametrize("plugin_vars", [
    {"PALS_RANKID": 3},  # srun --mpi=cray_shasta, the default on HPE Cray systems (Perlmutter, Frontier)
    {"PMIX_RANK": 3},  # srun --mpi=pmix
    {"PALS_RANKID": 3, "PALS_LOCAL_RANKID": 1, "PMIX_RANK": 3, "PMIX_LOCAL_RANK": 1},
])
def test_srun_mpi_plugins_without_a_world_size_take_the_slurm_path(env, plugin_vars):
    """Slurm's MPI plugins give each task a rank but no world size: still an srun step, no mpi4py needed."""
    env(SLURM_STEP_ID=0, SLURM_PROCID=3, SLURM_LOCALID=1, SLURM_NODEID=1, SLURM_NTASKS=4, SLURM_NNODES=2,
        SLURM_STEP_NUM_TASKS=4, SLURM_STEP_NUM_NODES=2, SLURM_STEP_TASKS_PER_NODE="2(x2)", **plugin_vars)
    assert launchers.detect() == Placement("slurm", 3, 1, 4, 2)


@pytest.mark.parametrize("tasks_per_node, node, local_rank, local_size", [
    ("2,1", 0, 1, 2), ("2,1", 1, 0, 1),  # srun -N2 -n3
    ("3(x2),1", 1, 2, 3), ("3(x2),1", 2, 0, 1),  # srun -N3 -n7
    ("4(x2)", 1, 3, 4),
])
def test_uneven_srun_layouts(env, tasks_per_node, node, local_rank, local_size):
    """The local world size is the count for this task's node, not tasks / nodes."""
    counts = [int(n) for part in tasks_per_node.split(",")
              for n in [part.split("(x")[0]] * (int(part.split("(x")[1][:-1]) if "(x" in part else 1)]
    rank = sum(counts[:node]) + local_rank
    env(SLURM_STEP_ID=0, SLURM_PROCID=rank, SLURM_LOCALID=local_rank, SLURM_NODEID=node,
        SLURM_STEP_NUM_TASKS=sum(counts), SLURM_STEP_NUM_NODES=len(counts), SLURM_NTASKS=sum(counts),
        SLURM_NNODES=len(counts), SLURM_STEP_TASKS_PER_NODE=tasks_per_node, SLURM_TASKS_PER_NODE=tasks_per_node)
    assert launchers.detect() == Placement("slurm", rank, local_rank, sum(counts), local_size)


def test_uneven_layout_from_the_job_when_the_step_does_not_say(env):
    """Older Slurm sets only SLURM_TASKS_PER_NODE (the job's layout, which a plain srun step uses)."""
    env(SLURM_STEP_ID=0, SLURM_PROCID=2, SLURM_LOCALID=0, SLURM_NODEID=1, SLURM_NTASKS=3, SLURM_NNODES=2,
        SLURM_TASKS_PER_NODE="2,1")
    assert launchers.detect() == Placement("slurm", 2, 0, 3, 1)


def test_mpirun_inside_a_slurm_step_uses_mpi_ranks(env):
    """Open MPI starts its daemons with srun: SLURM_PROCID is then the node index."""
    env(SLURM_STEP_ID=0, SLURM_PROCID=0, SLURM_NTASKS=1, SLURM_NNODES=1,
        OMPI_COMM_WORLD_RANK=3, OMPI_COMM_WORLD_SIZE=4, OMPI_COMM_WORLD_LOCAL_RANK=3, OMPI_COMM_WORLD_LOCAL_SIZE=4)
    assert launchers.detect() == Placement("mpi", 3, 3, 4, 4)


def test_explicit_init_without_its_variables(env):
    with pytest.raises(UserError, match="dist.init=slurm but SLURM_STEP_ID/SLURM_PROCID are not set"):
        launchers.detect("slurm")
    with pytest.raises(UserError, match="dist.init=torchrun but RANK/WORLD_SIZE are not set"):
        launchers.detect("torchrun")
    env(RANK=0, WORLD_SIZE=1)
    assert launchers.detect("none") == Placement("none")
    env(RANK=0, WORLD_SIZE=2)  # each of torchrun's processes would train alone, in one run directory
    with pytest.raises(UserError, match="dist.init=none, but this process is rank 0 of 2 started by torchrun"):
        launchers.detect("none")


def test_inconsistent_or_malformed_variables(env):
    env(RANK=4, WORLD_SIZE=4)
    with pytest.raises(UserError, match="inconsistent torchrun variables"):
        launchers.detect()
    env(RANK="one")
    with pytest.raises(UserError, match="RANK='one' is not an integer"):
        launchers.detect()


@pytest.mark.parametrize("local_rank, visible, index", [(0, 4, 0), (3, 4, 3), (5, 4, 1), (3, 1, 0), (7, 1, 0)])
def test_device_index(local_rank, visible, index):
    """A rank that sees one GPU (CUDA_VISIBLE_DEVICES per rank, --gpus-per-task=1) uses device 0."""
    assert devices.device_index(local_rank, visible) == index


def test_fewer_ranks_than_gpus_spread_over_both_sockets():
    """Aurora --ppn 6 binds ranks 3-5 to socket 1: they take tiles on socket 1 (6-11), not 3-5."""
    assert [devices.device_index(r, 12, 6) for r in range(6)] == [0, 2, 4, 6, 8, 10]
    assert [devices.device_index(r, 4, 4) for r in range(4)] == [0, 1, 2, 3]
    assert [devices.device_index(r, 12, 24) for r in (0, 13)] == [0, 1]


@pytest.mark.parametrize("nodelist, host", [
    ("nid001234", "nid001234"), ("nid[001234-001237]", "nid001234"), ("nid[005,007-009],login1", "nid005"),
    ("x3005c0s13b0n0,x3005c0s13b1n0", "x3005c0s13b0n0"), ("gpu-[10-11]", "gpu-10"),
])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert rendezvous.first_host(nodelist) == host


def _mpiexec_2(args, extra_env=None, program=None):
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install -e '.[dev]' brings the MPICH wheel)")
    return run_train(args, env=extra_env, launcher=[MPIEXEC, "-n", "2", sys.executable], program=program)


@pytest.mark.slow
def test_mpiexec_two_ranks_train_with_identical_parameters(tmp_path):
    result = _mpiexec_2([str(tmp_path), *SMOKE, f"log.dir={tmp_path}", "log.name=run"],
                        program=[str(REPO / "tests" / "helpers" / "train_and_dump.py")])
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["launcher"], summary["world_size"], summary["backend"]) == ("mpi", 2, "gloo")
    assert summary["test_acc"] > 0.2


@pytest.mark.slow
def test_launcher_and_mpi4py_disagree(tmp_path):
    result = _mpiexec_2([*SMOKE, f"log.dir={tmp_path}"], extra_env={"OMPI_COMM_WORLD_SIZE": "3"})
    assert result.returncode != 0
    assert "variables say rank 0 of 3 but mpi4py says rank 0 of 2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mpi_launch_without_mpi4py(tmp_path):
    shim = tmp_path / "shim" / "mpi4py"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('mpi4py hidden by the test')\n")
    result = run_train([*SMOKE, f"log.dir={tmp_path}"],
                       env={"PMI_RANK": "0", "PMI_SIZE": "2", "PYTHONPATH": str(shim.parent)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hpc_mnist: error: an MPI launch was detected but mpi4py cannot be imported: load the site's mpi4py "
        "(or pip install 'hpc_mnist[mpi]' off clusters), or launch with torchrun"]


@pytest.mark.slow
def test_bare_python_in_a_slurm_batch_shell_runs_alone(tmp_path):
    result = run_train([*SMOKE, f"log.dir={tmp_path}", "log.name=run", "dist.timeout=20"],
                       env={"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["launcher"]) == (1, "none")


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("variables, chosen", [
    ({}, False),                                                          # nobody chose: the node's share
    ({"OMP_NUM_THREADS": "1"}, True),                                     # torchrun, or the user
    ({"OMP_NUM_THREADS": "2", "PBS_JOBID": "7.pbs", "NCPUS": "2"}, False),  # PBS sets it to the chunk's ncpus
    ({"OMP_NUM_THREADS": "1", "PBS_JOBID": "7.pbs", "NCPUS": "2"}, True),   # the user's export, or ompthreads
    ({"OMP_NUM_THREADS": "2", "NCPUS": "2"}, True),                       # not in a PBS job: a choice
])
def test_threads_are_the_ranks_share_unless_someone_chose(env, monkeypatch, threads_restored, variables, chosen):
    """PBS puts OMP_NUM_THREADS=NCPUS into every job, whatever qsub -v says: 2 ranks x 2 threads on 2 cores ran
    oversubscribed (and the doctor failed every multi-rank CPU job). That value is not a user's choice."""
    for name in ("OMP_NUM_THREADS", "NCPUS"):
        monkeypatch.delenv(name, raising=False)
    env(**variables)
    torch.set_num_threads(5)  # what the OpenMP runtime may have taken from OMP_NUM_THREADS at import
    threads, why = cpus.set_cpu_threads(local_world_size=2)
    if chosen:
        assert (threads, why) == (5, f"OMP_NUM_THREADS={variables['OMP_NUM_THREADS']}")
    else:
        cores = len(os.sched_getaffinity(0))
        assert threads == max(1, cores // 2 if cores == os.cpu_count() else cores)
        assert ("not a choice" in why) == ("PBS_JOBID" in variables), why


def test_cores_busy_with_other_work_are_named_on_the_start_panel(env, monkeypatch, threads_restored):
    """Threads waiting for cores that other processes hold collapse (an MLP epoch: 6,959 samples/s with 2 threads
    on 2 loaded cores, 59,200 with 1): the start panel names the cause and the setting that avoids it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    if cores != os.cpu_count() or cores < 2:
        pytest.skip("needs two or more cores, unpinned")
    monkeypatch.setattr(cpus, "busy_cores", lambda own=1: cores - 1)
    threads, why = cpus.set_cpu_threads(local_world_size=1)
    # Said, not changed: every segment of a run computes with the same threads (exact resume).
    assert threads == cores and why.endswith(
        f"; {cores - 1} core(s) busy with other work: OMP_NUM_THREADS=1 may run many times faster")
    monkeypatch.setattr(cpus, "busy_cores", lambda own=1: 0)
    assert cpus.set_cpu_threads(local_world_size=1) == (cores, f"its share of {cores} core(s) among 1 rank(s)")


def test_busy_cores_counts_runnable_tasks_beyond_our_own():
    assert cpus.busy_cores(own_processes=10**6) == 0  # never negative
    assert cpus.busy_cores(own_processes=0) >= 1  # at least this process, reading
    assert cpus.busy_cores(own_processes=-100) == os.cpu_count()  # runnable tasks beyond the cores: all busy


def test_a_share_of_one_core_is_not_reworded_by_other_work(env, monkeypatch, threads_restored):
    """2 ranks on 2 cores already take one thread each: other work changes nothing on the panel (the PBS lab's
    jobs check its words)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    if cores != os.cpu_count() or cores != 2:
        pytest.skip("needs exactly two unpinned cores")
    monkeypatch.setattr(cpus, "busy_cores", lambda own=1: 2)
    assert cpus.set_cpu_threads(local_world_size=2) == (1, "its share of 2 core(s) among 2 rank(s)")

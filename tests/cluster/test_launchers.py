"""Multi-node launches across the lab's hosts: torchrun with c10d, one torchrun per node under srun, and
MPICH's real mpiexec (Hydra) reaching a second host, as `python -m hpc_mnist.launch --system pbs` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.jobs import EPOCHS, PY, SLOW, SMOKE, assert_whole_checkpoint, finished, wait_for_epoch
from cluster.labs import NETNS_SSH, SlurmLab
from helpers.runs import status

pytestmark = pytest.mark.cluster
TORCHRUN = str(Path(PY).parent / "torchrun")
# Trains exactly as `python -m hpc_mnist.train`, then appends the rendezvous address the rank ended up with to
# $MASTERS_FILE in one O_APPEND write (whole lines: four ranks printing to stdout at once came back
# interleaved through Hydra's forwarding, "mastermaster hm-n1").
SHOW_MASTER = ("import os, runpy, sys; sys.argv[0] = 'hpc_mnist.train'\n"
               "try:\n    runpy.run_module('hpc_mnist.train', run_name='__main__')\n"
               "finally:\n    fd = os.open(os.environ['MASTERS_FILE'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
               "    os.write(fd, f\"master {os.environ.get('MASTER_ADDR')}\\n\".encode())")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_torchrun_c10d_across_two_hosts(lab: SlurmLab):
    """`torchrun --nnodes=2 --rdzv_backend=c10d` started by hand on each host, rendezvous on the first."""
    work = lab.workdir("torchrun-c10d")
    cmd = [TORCHRUN, "--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d", "--rdzv_endpoint=hm-n1:29411",
           "--rdzv_id=c10d-test", "-m", "hpc_mnist.train", *SMOKE, f"log.dir={work}", "log.name=run"]
    agents = [lab.popen_on_host(host, cmd) for host in lab.hosts[:2]]
    outputs = []
    for agent in agents:
        try:
            outputs.append(agent.communicate(timeout=150)[0])
        finally:
            agent.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(outputs)
    result = summary(work / "run")
    assert (result["world_size"], result["num_nodes"], result["launcher"]) == (4, 2, "torchrun"), result


def test_mpiexec_across_two_hosts_from_a_pbs_job(lab: SlurmLab):
    """A simulated PBS job on two lab hosts: hpc_mnist.launch --system pbs runs the venv's MPICH mpiexec,
    whose Hydra proxies reach the second host through the lab's ssh stand-in (HYDRA_LAUNCHER_EXEC)."""
    pytest.importorskip("mpi4py")
    mpiexec = Path(PY).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("no mpiexec in this environment (pip install mpich)")
    work = lab.workdir("mpi-pbs")
    nodefile = work / "nodefile"
    nodefile.write_text("hm-n1\nhm-n2\n")  # one line per host, as with mpiprocs=1 chunks (Polaris, Aurora)
    ssh_log, masters_file = work / "ssh.log", work / "masters"
    pbs_job = dict(PBS_JOBID="77.hm-head", PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(work),
                   HYDRA_LAUNCHER="ssh", HYDRA_LAUNCHER_EXEC=str(NETNS_SSH), NETNS_SSH_LOG=str(ssh_log),
                   MASTERS_FILE=str(masters_file))
    result = lab.on_host("hm-n1", [PY, "-m", "hpc_mnist.launch", "--system", "pbs", "--ppn", "2", "--",
                                   PY, "-c", SHOW_MASTER, *SMOKE, f"log.dir={work}", "log.name=run"],
                         variables=pbs_job, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hm-n2" in ssh_log.read_text(), "Hydra did not go through the ssh stand-in to the second host"
    run = summary(work / "run")
    assert (run["world_size"], run["num_nodes"], run["launcher"]) == (4, 2, "mpi"), run
    masters = masters_file.read_text().splitlines()
    assert masters == ["master hm-n1"] * 4, masters  # the host's name (10.78.0.1), not loopback


TORCHRUN_JOB = """#!/bin/bash
# The multi-node torchrun recipe (README, Multi-node): one agent per node, c10d rendezvous on the first node.
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --ntasks-per-node=1 {torchrun} --nnodes="$SLURM_NNODES" --nproc_per_node=2 --rdzv_backend=c10d \\
    --rdzv_endpoint="$head:29500" --rdzv_id="$SLURM_JOB_ID" -m hpc_mnist.train {args}
"""


def test_srun_torchrun_one_agent_per_node_and_scancel(lab: SlurmLab):
    """The recipe trains 2 nodes x 2 workers; a scancel (TERM to the agents and the workers) ends it with
    a whole checkpoint and status stopped."""
    work = lab.workdir("srun-torchrun")
    run_dir = work / "run"
    script = work / "job.sh"
    script.write_text(TORCHRUN_JOB.format(torchrun=TORCHRUN, args=" ".join(
        [*SMOKE, *SLOW.split(), f"train.epochs={EPOCHS}", f"log.dir={work}", "log.name=run"])))
    job = lab.submit(script, "-N2", "--ntasks-per-node=1", "--cpus-per-task=2", "-t", "5", out=work / "job.out")
    wait_for_epoch(lab, job, run_dir)
    lab.cancel(job)
    result = finished(lab, job, work / "job.out", timeout=90)
    assert result.state == "CANCELLED", result.info
    run = summary(run_dir)
    assert (run["world_size"], run["num_nodes"], run["launcher"]) == (4, 2, "torchrun"), run
    st = status(run_dir)
    assert (st["state"], st["reason"], st["requeue"]) == ("stopped", "signal", False), (st, result.log)
    assert_whole_checkpoint(run_dir, st)

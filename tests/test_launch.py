"""The launcher's launch lines, and every job script run end to end under a simulated scheduler."""

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
import yaml

from conftest import MPIEXEC, REPO, clean_env

STUBS = REPO / "tests" / "stubs"
SCRIPTS = sorted((REPO / "jobscripts").glob("*.sh")) + sorted((REPO / "launch").glob("*.sh")) + [REPO / ".ci" / "run"]
COMMAND = ["--", "python", "-m", "hpc_mnist.train"]


def scheduler_free_env(**values: str) -> dict[str, str]:
    """No launcher, scheduler or site variables: detection sees only what a test sets."""
    return clean_env("HPC_MNIST_", "NERSC_HOST", **values)


def launch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_mnist.launch", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


@pytest.fixture
def nodefile(tmp_path):
    def make(count: int) -> Path:
        path = tmp_path / f"nodefile{count}"
        path.write_text("".join(f"x3005c0s{i}b0n0\n" for i in range(count)))
        return path
    return make


@pytest.mark.parametrize("system, nodes, expected", [
    ("polaris", 1, "mpiexec -n 4 --ppn 4 --depth 8 --cpu-bind depth --hostfile {nodefile} "
                   "{launch}/gpu_affinity_polaris.sh python -m hpc_mnist.train"),
    ("polaris", 2, "mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth --hostfile {nodefile} "
                   "{launch}/gpu_affinity_polaris.sh python -m hpc_mnist.train"),
    ("aurora", 2, "mpiexec -n 24 --ppn 12 --cpu-bind list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:"
                  "77-84:85-92:93-100 --hostfile {nodefile} python -m hpc_mnist.train"),
    ("pbs", 2, "mpiexec -n 2 --ppn 1 --hostfile {nodefile} python -m hpc_mnist.train"),
])
def test_dry_run_pbs(nodefile, system, nodes, expected):
    path = nodefile(nodes)
    result = launch(["--system", system, "--dry-run", *COMMAND],
                    scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == expected.format(nodefile=path, launch=REPO / "launch")
    assert lines[0].startswith(f"# system {system}, {nodes} node(s)")


def test_dry_run_polaris_shows_site_environment(nodefile):
    result = launch(["--system", "polaris", "--dry-run", *COMMAND],
                    scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(nodefile(1))))
    assert "export NCCL_NET='AWS Libfabric'" in result.stdout
    assert "export HPC_MNIST_MASTER_DOMAIN=hsn.cm.polaris.alcf.anl.gov" in result.stdout
    assert "export FI_CXI_DEFAULT_CQ_SIZE=131072" in result.stdout


@pytest.mark.parametrize("system, nodes, expected", [
    ("perlmutter", 1, "srun -N 1 -n 4 --ntasks-per-node 4 --gpus-per-node 4 --cpus-per-task 32 --cpu-bind cores"),
    ("perlmutter", 2, "srun -N 2 -n 8 --ntasks-per-node 4 --gpus-per-node 4 --cpus-per-task 32 --cpu-bind cores"),
    ("frontier", 2, "srun -N 2 -n 16 -c 7 --gpus-per-task 1 --gpu-bind closest"),
    ("slurm", 2, "srun -N 2 -n 8 --ntasks-per-node 4"),
])
def test_dry_run_slurm(system, nodes, expected):
    env = scheduler_free_env(SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES=str(nodes), SLURM_GPUS_ON_NODE="4")
    result = launch(["--system", system, "--dry-run", *COMMAND], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected + " python -m hpc_mnist.train"


def test_dry_run_options_override(nodefile):
    path = nodefile(4)
    result = launch(["--system", "polaris", "--nodes", "2", "--ppn", "2", "--cpu-bind", "core", "--dry-run",
                     *COMMAND], scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path)))
    line = result.stdout.splitlines()[-1].split()
    assert line[:9] == ["mpiexec", "-n", "4", "--ppn", "2", "--depth", "8", "--cpu-bind", "core"]
    subset = Path(line[line.index("--hostfile") + 1])
    assert subset.read_text().split() == path.read_text().split()[:2]  # the first 2 of 4 nodes


def test_dry_run_workstation():
    result = launch(["--ppn", "2", "--dry-run", *COMMAND, "train.epochs=1"], scheduler_free_env())
    program, *rest = result.stdout.splitlines()[-1].split()
    assert program.endswith("torchrun")
    assert rest == "--standalone --nproc_per_node=2 -m hpc_mnist.train train.epochs=1".split()


@pytest.mark.parametrize("env, system, message", [
    ({}, "polaris", "PBS_NODEFILE is not set"),
    ({}, "frontier", "no SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2"}, "slurm", "--nodes 3 but the job has 2 node(s)"),
])
def test_launcher_errors(env, system, message):
    result = launch(["--system", system, "--nodes", "3", "--dry-run", *COMMAND], scheduler_free_env(**env))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_system_detection_from_site_variables():
    for env, name in [({"NERSC_HOST": "perlmutter"}, "perlmutter"), ({"LMOD_SYSTEM_NAME": "frontier"}, "frontier"),
                      ({"PBS_O_HOST": "polaris-login-02.hsn.cm.polaris.alcf.anl.gov"}, "polaris"),
                      ({"PBS_O_HOST": "aurora-uan-0010.hostmgmt"}, "aurora"), ({"PBS_JOBID": "7"}, "pbs"),
                      ({"SLURM_JOB_ID": "7"}, "slurm"), ({}, "local")]:
        code = "from hpc_mnist.launch import detect_system; print(detect_system())"
        out = subprocess.run([sys.executable, "-c", code], env=scheduler_free_env(**env), capture_output=True,
                             text=True)
        assert out.stdout.strip() == name, env


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shell_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install -e '.[dev]')")
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script, scheduler", [
    ("polaris.sh", "pbs"), ("aurora.sh", "pbs"), ("perlmutter.sh", "slurm"), ("frontier.sh", "slurm"),
    ("slurm.sh", "slurm"),
])
def test_job_script_runs_under_a_simulated_scheduler(tmp_path, script, scheduler):
    """Stub srun/mpiexec/module first on PATH translate to local processes; 2 CPU ranks, smoke config."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install -e '.[dev]' brings the MPICH wheel)")
    log = tmp_path / "stub.log"
    env = scheduler_free_env(PATH=f"{STUBS}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", STUB_LOG=str(log),
                    REAL_MPIEXEC=MPIEXEC, CONFIG="configs/smoke.yaml", RANKS_PER_NODE="2", PYTHON=sys.executable,
                    OVERRIDES=f"log.dir={tmp_path} log.console=plain train.device=cpu", HPC_MNIST_MASTER_DOMAIN="")
    if scheduler == "pbs":
        nodefile = tmp_path / "nodefile"
        nodefile.write_text(socket.gethostname() + "\n")
        env.update(PBS_JOBID="4242.pbs-server", PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(REPO))
    else:
        env.update(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_NTASKS="2",
                   SLURM_PROCID="0", SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NODELIST="localhost")
    result = subprocess.run(["bash", str(REPO / "jobscripts" / script)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "4242" / "summary.json").read_text())  # run directory = job id
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["launcher"] == ("mpi" if scheduler == "pbs" else "slurm")
    calls = log.read_text()
    assert ("mpiexec -n 2 --ppn 2" if scheduler == "pbs" else "srun -N 1 -n 2") in calls
    if script in ("polaris.sh", "aurora.sh", "perlmutter.sh", "frontier.sh"):
        assert "module " in calls  # the site file loaded its modules
    if scheduler == "pbs":  # walltime 00:30:00 from qstat, less 60 s: PBS gives no early warning
        saved = yaml.safe_load((tmp_path / "4242" / "config.yaml").read_text())
        assert saved["train"]["time_limit"] == 1740.0


def test_slurm_early_warning_stops_with_a_checkpoint_and_requeues(tmp_path):
    """USR1 to the batch shell (as --signal=B:USR1@120 sends it) reaches the ranks through srun."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    log = tmp_path / "stub.log"
    slow = ("model.name=cnn optim.name=adam optim.lr=1e-3 train.batch_size=32 train.epochs=6 "
            "data.synthetic_train=1500 data.synthetic_test=200 train.precision=fp32")
    env = scheduler_free_env(PATH=f"{STUBS}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", STUB_LOG=str(log),
                    CONFIG="configs/smoke.yaml", RANKS_PER_NODE="2", PYTHON=sys.executable,
                    OVERRIDES=f"log.dir={tmp_path} log.console=plain {slow}", SLURM_JOB_ID="4243",
                    SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_SUBMIT_DIR=str(REPO),
                    SLURM_JOB_NODELIST="localhost")
    proc = subprocess.Popen(["bash", str(REPO / "jobscripts" / "slurm.sh")], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "4243" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    summary = json.loads((tmp_path / "4243" / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("preempted", "SIGUSR1")
    assert "scontrol requeue 4243" in log.read_text()
    assert "requeueing job 4243" in out

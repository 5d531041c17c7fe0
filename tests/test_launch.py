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

from helpers.commands import MPIEXEC
from helpers.processes import REPO, clean_env, free_port

STUBS = REPO / "tests" / "stubs"
LMOD = STUBS / "lmod.bash"  # `module`/`conda` shell functions whose activate step reads an unset variable
SCRIPTS = [*sorted((REPO / "jobscripts").glob("*.sh")), *sorted((REPO / "launch").glob("*.sh")), REPO / ".ci" / "run",
           *sorted((REPO / "tests" / "stubs").iterdir()), *sorted((REPO / "tests" / "cluster" / "pals").iterdir()),
           *(REPO / "tests" / "cluster" / name for name in ("pbs_lab.sh", "onpbs", "pbs-tmrsh"))]
COMMAND = ["--", "python", "-m", "hpc_mnist.train"]

SRUN = "srun"


def scheduler_free_env(**values: str) -> dict[str, str]:
    """No launcher, scheduler or site variables: detection sees only what a test sets."""
    return clean_env("HPC_MNIST_", "NERSC_HOST", **{"DOCTOR": "0", **values})  # the pre-flight has its own tests


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
                    scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path), HPC_MNIST_MPI="mpich"))
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


@pytest.mark.parametrize("ppn, cpu_bind", [
    # ALCF's documented list for 12 ranks; 6 and 24 split the same free cores (0 and 52 are the system's)
    # into equal blocks, half the ranks on each socket.
    (12, "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"),
    (6, "list:1-17:18-34:35-51:53-69:70-86:87-103"),
    (24, "list:1-4:5-8:9-12:13-16:17-20:21-24:25-28:29-32:33-36:37-40:41-44:45-48:"
         "53-56:57-60:61-64:65-68:69-72:73-76:77-80:81-84:85-88:89-92:93-96:97-100"),
])
def test_dry_run_aurora_cpu_binding_follows_ppn(nodefile, ppn, cpu_bind):
    path = nodefile(2)
    result = launch(["--system", "aurora", "--ppn", str(ppn), "--dry-run", *COMMAND],
                    scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (f"mpiexec -n {2 * ppn} --ppn {ppn} --cpu-bind {cpu_bind} "
                                              f"--hostfile {path} python -m hpc_mnist.train")


@pytest.mark.parametrize("system, nodes, ppn, expected", [
    ("perlmutter", 1, None, f"{SRUN} -N 1 -n 4 --ntasks-per-node 4 --gpus-per-node 4 --cpus-per-task 32 "
                            "--cpu-bind cores"),
    ("perlmutter", 2, None, f"{SRUN} -N 2 -n 8 --ntasks-per-node 4 --gpus-per-node 4 --cpus-per-task 32 "
                            "--cpu-bind cores"),
    # 8 ranks share the 4 GPUs and get 16 of the node's 128 hardware threads each (not 8 x 32 = 256)
    ("perlmutter", 2, 8, f"{SRUN} -N 2 -n 16 --ntasks-per-node 8 --gpus-per-node 4 --cpus-per-task 16 "
                         "--cpu-bind cores"),
    ("frontier", 2, None, f"{SRUN} -N 2 -n 16 --ntasks-per-node 8 -c 7 --gpus-per-task 1 --gpu-bind closest "
                          "--network=disable_rdzv_get"),
    ("frontier", 2, 4, f"{SRUN} -N 2 -n 8 --ntasks-per-node 4 -c 14 --gpus-per-task 1 --gpu-bind closest "
                       "--network=disable_rdzv_get"),
    ("slurm", 2, None, f"{SRUN} -N 2 -n 8 --ntasks-per-node 4"),
])
def test_dry_run_slurm(system, nodes, ppn, expected):
    env = scheduler_free_env(SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES=str(nodes), SLURM_GPUS_ON_NODE="4")
    result = launch(["--system", system, *(["--ppn", str(ppn)] if ppn else []), "--dry-run", *COMMAND], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected + " python -m hpc_mnist.train"


@pytest.mark.parametrize("system, ppn, message", [
    ("frontier", 16, "a Frontier node has 8 GCDs"), ("perlmutter", 65, "a Perlmutter GPU node has 64 cores"),
    ("aurora", 103, "an Aurora node has 102 cores"),
])
def test_ppn_beyond_a_node_is_refused_in_one_line(system, ppn, message):
    result = launch(["--system", system, "--ppn", str(ppn), "--dry-run", *COMMAND], scheduler_free_env())
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_dry_run_outside_a_job_shows_modules_and_placeholder_hosts():
    """What a user previews on a login node before qsub: no PBS variables, no `module` command at all."""
    result = launch(["--system", "polaris", "--nodes", "2", "--dry-run"], scheduler_free_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "outside a job: placeholder hosts" in lines[0]
    assert lines[1:4] == ["module use /soft/modulefiles", "module load conda", "conda activate base"]
    assert "export NCCL_NET='AWS Libfabric'" in lines
    assert lines[-1] == (f"mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth --hostfile '$PBS_NODEFILE' "
                         f"{REPO / 'launch'}/gpu_affinity_polaris.sh python -m hpc_mnist.train")


@pytest.mark.parametrize("system, modules, line", [
    ("aurora", ["module load frameworks"], "mpiexec -n 12 --ppn 12 --cpu-bind list:1-8:"),
    ("perlmutter", ["module load pytorch"], f"{SRUN} -N 3 -n 12 --ntasks-per-node 4 "),
    ("frontier", ["module load PrgEnv-gnu/8.7.0 cpe/26.03",
                  "module load rocm/7.1.1 craype-accel-amd-gfx90a rccl-net-plugin"], f"{SRUN} -N 3 -n 24 "),
])
def test_dry_run_outside_a_job_on_every_site(tmp_path, system, modules, line):
    """The same preview under the module stand-in: nothing is loaded (the log stays empty), nothing created."""
    log = tmp_path / "stub.log"
    nodes = "3" if system != "aurora" else "1"
    result = launch(["--system", system, "--nodes", nodes, "--dry-run"],
                    scheduler_free_env(BASH_ENV=str(LMOD), STUB_LOG=str(log), MIOPEN_USER_DB_PATH=str(tmp_path / "m")))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:1 + len(modules)] == modules and lines[-1].startswith(line)
    assert not log.exists() and not (tmp_path / "m").exists()
    if system == "perlmutter":  # NCCL named to the OFI plugin: a missing plugin fails, no silent TCP fallback
        assert "export NCCL_NET='AWS Libfabric'" in lines


def test_generic_pbs_uses_open_mpis_syntax_under_open_mpi(tmp_path, nodefile):
    """Open MPI's mpiexec has no --ppn: the launcher asks `mpiexec --version` and uses --map-by ppr:P:node."""
    fake = tmp_path / "bin" / "mpiexec"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'mpiexec (Open MPI) 5.0.3'\n")
    fake.chmod(0o755)
    path = nodefile(2)
    env = scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path), PATH=f"{fake.parent}:{os.environ['PATH']}")
    result = launch(["--system", "pbs", "--ppn", "4", "--dry-run", *COMMAND], env)
    assert result.stdout.splitlines()[-1] == \
        f"mpiexec -n 8 --map-by ppr:4:node --hostfile {path} python -m hpc_mnist.train"
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")  # MPICH (and Cray PALS, Intel MPI): --ppn
    result = launch(["--system", "pbs", "--ppn", "4", "--dry-run", *COMMAND], env)
    assert result.stdout.splitlines()[-1] == f"mpiexec -n 8 --ppn 4 --hostfile {path} python -m hpc_mnist.train"


def site_setup(site: str, tmp_path: Path, **values: str) -> subprocess.CompletedProcess:
    """Source launch/<site>.sh the way a job script does (set -euo pipefail) under the module stand-in."""
    check = 'set -euo pipefail; source "launch/$1.sh"; [[ $- == *u* ]]; echo "set-up finished: $HPC_MNIST_SITE"'
    env = scheduler_free_env(BASH_ENV=str(LMOD), STUB_LOG=str(tmp_path / "stub.log"),
                             MIOPEN_USER_DB_PATH=str(tmp_path / "miopen"), **values)
    return subprocess.run(["bash", "-c", check, "bash", site], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("site, loads", [
    ("polaris", ["module use /soft/modulefiles", "module load conda", "conda activate base"]),
    ("aurora", ["module load frameworks"]),
    ("perlmutter", ["module load pytorch"]),
    ("frontier", ["module load PrgEnv-gnu/8.7.0 cpe/26.03", "module load rocm/7.1.1 craype-accel-amd-gfx90a "
                  "rccl-net-plugin"]),
])
def test_site_modules_load_under_nounset(tmp_path, site, loads):
    """conda's activate step reads an unset variable: the site file loads with nounset off, then turns it on."""
    result = site_setup(site, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"set-up finished: {site}"
    assert (tmp_path / "stub.log").read_text().splitlines() == loads


@pytest.mark.parametrize("site, missing", [("polaris", "conda"), ("perlmutter", "pytorch"), ("frontier", "rocm/7.1.1")])
def test_a_missing_module_stops_the_set_up_in_one_line(tmp_path, site, missing):
    result = site_setup(site, tmp_path, STUB_MISSING_MODULE=missing)
    assert result.returncode != 0 and "set-up finished" not in result.stdout
    ours = [line for line in result.stderr.splitlines() if line.startswith("hpc_mnist:")]
    assert len(ours) == 1 and f"launch/{site}.sh" in ours[0], result.stderr


@pytest.mark.parametrize("version, ok", [("2025.3.1", True), ("2025.2.0", True), ("2025.0.5", False),
                                         ("2024.2.1", False)])
def test_aurora_needs_frameworks_2025_2_for_xccl(tmp_path, version, ok):
    result = site_setup("aurora", tmp_path, STUB_FRAMEWORKS_VERSION=version)
    assert (result.returncode == 0) == ok, result.stderr
    if not ok:
        assert result.stderr.strip().splitlines() == [
            f"hpc_mnist: frameworks/{version.rsplit('.', 1)[0]} is loaded but the xccl backend needs frameworks 2025.2 "
            "or later: set HPC_MNIST_FRAMEWORKS=frameworks/<newer> (see 'module avail frameworks')"]


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
    assert "no site settings" in result.stdout and "local.sh" not in result.stdout  # there is no launch/local.sh
    program, *rest = result.stdout.splitlines()[-1].split()
    assert program.endswith("torchrun")
    assert rest == "--standalone --nproc_per_node=2 -m hpc_mnist.train train.epochs=1".split()


@pytest.mark.parametrize("env, system, message", [
    ({}, "polaris", "PBS_NODEFILE is not set"),
    ({}, "frontier", "no SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2"}, "slurm", "--nodes 3 but the job has 2 node(s)"),
])
def test_launcher_errors(env, system, message):
    result = launch(["--system", system, "--nodes", "3", *COMMAND], scheduler_free_env(**env))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_system_detection_from_site_variables():
    for env, name in [({"NERSC_HOST": "perlmutter"}, "perlmutter"), ({"LMOD_SYSTEM_NAME": "frontier"}, "frontier"),
                      ({"PBS_O_HOST": "polaris-login-02.hsn.cm.polaris.alcf.anl.gov"}, "polaris"),
                      ({"PBS_O_HOST": "aurora-uan-0010.hostmgmt"}, "aurora"), ({"PBS_JOBID": "7"}, "pbs"),
                      ({"SLURM_JOB_ID": "7"}, "slurm"), ({}, "local")]:
        code = "from hpc_mnist.runtime.systems import detect_system; print(detect_system())"
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
    ("slurm.sh", "slurm"), ("pbs.sh", "pbs"),
])
@pytest.mark.slow
def test_job_script_runs_under_a_simulated_scheduler(tmp_path, script, scheduler):
    """Stub srun/mpiexec first on PATH translate to local processes; 2 CPU ranks, smoke config. `module` and
    `conda` are shell functions (BASH_ENV) whose activate step reads an unset variable, as conda's does: the
    job scripts run under `set -u` and must still finish their set-up."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install -e '.[dev]' brings the MPICH wheel)")
    log = tmp_path / "stub.log"
    env = scheduler_free_env(PATH=f"{STUBS}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", STUB_LOG=str(log),
                    BASH_ENV=str(LMOD), MIOPEN_USER_DB_PATH=str(tmp_path / "miopen"),
                    REAL_MPIEXEC=MPIEXEC, CONFIG="configs/smoke.yaml", RANKS_PER_NODE="2", PYTHON=sys.executable,
                    OVERRIDES=f"log.dir={tmp_path} log.console=plain train.device=cpu", HPC_MNIST_MASTER_DOMAIN="")
    if scheduler == "pbs":
        nodefile = tmp_path / "nodefile"
        nodefile.write_text(socket.gethostname() + "\n")
        env.update(PBS_JOBID="4242.pbs-server", PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(REPO))
    else:
        # MASTER_PORT: the trainer's Slurm default (20000 + job id) is one port for every test of this table
        env.update(MASTER_PORT=str(free_port()), SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1",
                   SLURM_NTASKS="2", SLURM_PROCID="0", SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NODELIST="localhost")
    result = subprocess.run(["bash", str(REPO / "jobscripts" / script)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "4242" / "summary.json").read_text())  # run directory = job id
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["launcher"] == ("mpi" if scheduler == "pbs" else "slurm")
    calls = log.read_text()
    assert ("mpiexec -n 2 --ppn 2" if scheduler == "pbs" else "srun -N 1 -n 2") in calls
    expected_loads = {"polaris.sh": "conda activate base", "aurora.sh": "module load frameworks",
                      "perlmutter.sh": "module load pytorch", "frontier.sh": "module load rocm/7.1.1"}
    if script in expected_loads:
        assert expected_loads[script] in calls  # the site file loaded its modules
    if script == "frontier.sh":
        assert (tmp_path / "miopen").is_dir()  # MIOpen's node-local cache folder, made on every node
    if scheduler == "pbs":  # PBS gives no early warning: the trainer's deadline is the job's start + walltime
        assert "the PBS job's walltime less train.deadline_margin, in 1,7" in result.stdout, result.stdout[-3000:]
        assert "--config configs/smoke.yaml log.dir=" in calls  # no second deadline (train.time_limit) on the line


def fake_python(tmp_path: Path, status: int = 0) -> Path:
    """A PYTHON that records its arguments and exits with `status`: the job script's own logic, no training.
    Exit 75 stands for a time-limit stop with a checkpoint, which the trainer also writes to the status file.
    What the job script asks the package after the launch (`-m hpc_mnist.job`) goes to the real Python."""
    fake = tmp_path / "python"
    stop = ('[ -z "$HPC_MNIST_STATUS_FILE" ] || '
            'echo \'{"reason": "deadline", "requeue": true}\' > "$HPC_MNIST_STATUS_FILE"')
    job = f'case "$*" in "-m hpc_mnist.job "*) exec {sys.executable} "$@" ;; esac'
    fake.write_text(f'#!/bin/sh\n{job}\necho "python $*" >> "$STUB_LOG"\n{stop if status == 75 else ""}\n'
                    f'exit {status}\n')
    fake.chmod(0o755)
    return fake


def test_scaling_slurm_uses_every_frontier_gcd(tmp_path):
    log = tmp_path / "stub.log"
    env = scheduler_free_env(PATH=f"{STUBS}:{os.environ['PATH']}", BASH_ENV=str(LMOD), STUB_LOG=str(log),
                             PYTHON=str(fake_python(tmp_path)), SYSTEM="frontier", SLURM_JOB_ID="77",
                             SLURM_NTASKS_PER_NODE="4", SLURM_JOB_NUM_NODES="2", SLURM_SUBMIT_DIR=str(REPO),
                             MIOPEN_USER_DB_PATH=str(tmp_path / "miopen"))
    result = subprocess.run(["bash", str(REPO / "jobscripts" / "scaling_slurm.sh")], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    run = [line for line in log.read_text().splitlines() if line.startswith("python -m hpc_mnist.scaling")]
    assert len(run) == 1 and "--system frontier --nodes 1,2 --ppn 8 " in run[0]
    assert (tmp_path / "miopen").is_dir()


@pytest.mark.parametrize("home, warned", [(REPO.parent, True), (Path("/nonexistent-home"), False)])
def test_aurora_warns_when_submitted_from_home(tmp_path, home, warned):
    """ALCF asks for Aurora jobs to be submitted from the project directory, not $HOME."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x4000c0s0b0n0\n")
    env = scheduler_free_env(PATH=f"{STUBS}:{os.environ['PATH']}", BASH_ENV=str(LMOD), STUB_LOG=str(tmp_path / "log"),
                             PYTHON=str(fake_python(tmp_path)), PBS_JOBID="79.aurora", PBS_NODEFILE=str(nodefile),
                             PBS_O_WORKDIR=str(REPO), HOME=str(home))
    result = subprocess.run(["bash", str(REPO / "jobscripts" / "aurora.sh")], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("ALCF asks for jobs to be submitted from the project directory" in result.stderr) == warned


@pytest.mark.parametrize("qos, requeued", [("debug", False), ("regular", True)])
def test_perlmutter_requeues_automatically_only_outside_debug(tmp_path, qos, requeued):
    """A stop with a checkpoint (exit 75) requeues the job in regular, not in the debug QOS."""
    log = tmp_path / "stub.log"
    env = scheduler_free_env(PATH=f"{STUBS}:{os.environ['PATH']}", BASH_ENV=str(LMOD), STUB_LOG=str(log),
                             PYTHON=str(fake_python(tmp_path, 75)), SLURM_JOB_ID="78", SLURM_JOB_QOS=qos,
                             SLURM_SUBMIT_DIR=str(REPO), HPC_MNIST_JOB_FILES=str(tmp_path / "jobs"))
    result = subprocess.run(["bash", str(REPO / "jobscripts" / "perlmutter.sh")], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 75, result.stderr
    assert ("scontrol requeue 78" in log.read_text()) == requeued


@pytest.mark.slow
def test_slurm_early_warning_stops_with_a_checkpoint_and_requeues(tmp_path):
    """USR1 to the batch shell (as --signal=B:USR1@120 sends it) becomes the ranks' stop file: a deadline stop."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    log = tmp_path / "stub.log"
    slow = ("model.name=cnn optim.name=adam optim.lr=1e-3 train.batch_size=32 train.epochs=6 "
            "data.synthetic_train=1500 data.synthetic_test=200 train.precision=fp32")
    env = scheduler_free_env(PATH=f"{STUBS}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", STUB_LOG=str(log),
                    CONFIG="configs/smoke.yaml", RANKS_PER_NODE="2", PYTHON=sys.executable,
                    OVERRIDES=f"log.dir={tmp_path} log.console=plain {slow}", SLURM_JOB_ID="4243",
                    MASTER_PORT=str(free_port()),
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
    assert (summary["status"], summary["reason"]) == ("stopped", "deadline")
    assert "scontrol requeue 4243" in log.read_text()
    assert "requeueing job 4243" in out


def test_job_scripts_run_the_pre_flight_check_first_and_stop_when_it_fails(tmp_path):
    """The doctor runs through the job's own launch line before the trainer; a failed check ends the job."""
    log = tmp_path / "stub.log"
    fake = tmp_path / "python"  # a doctor that reports a failed check; a trainer that would succeed
    fake.write_text('#!/bin/sh\necho "python $*" >> "$STUB_LOG"\ncase "$*" in *hpc_mnist.doctor*) exit 1;; '
                    f'"-m hpc_mnist.job "*) exec {sys.executable} "$@";; esac\n')
    fake.chmod(0o755)
    base = dict(PATH=f"{STUBS}:{os.environ['PATH']}", BASH_ENV=str(LMOD), STUB_LOG=str(log), PYTHON=str(fake),
                SLURM_JOB_ID="81", SLURM_SUBMIT_DIR=str(REPO), HPC_MNIST_JOB_FILES=str(tmp_path / "jobs"))
    result = subprocess.run(["bash", str(REPO / "jobscripts" / "slurm.sh")], capture_output=True, text=True,
                            env=scheduler_free_env(**base, DOCTOR="1"), cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "hpc_mnist: the pre-flight check failed (verdicts above): not training" in result.stderr
    before, *calls = log.read_text().splitlines()  # first the run's own check (bad hosts, a fruitless chain)
    assert before.startswith("python -m hpc_mnist.job before-launch --scheduler slurm --job 81 ")
    assert calls[0].startswith("python -m hpc_mnist.launch --system slurm")
    assert calls[0].endswith("--config configs/cnn.yaml")  # the run's storage is checked
    # it blamed no host alone (no report): nothing to go on without
    assert [c.split()[2] for c in calls[1:]] == ["hpc_mnist.job"] and "after-doctor" in calls[1]
    log.unlink()
    skipped = subprocess.run(["bash", str(REPO / "jobscripts" / "slurm.sh")], capture_output=True, text=True,
                             env=scheduler_free_env(**base), cwd=tmp_path, timeout=60)  # DOCTOR=0
    assert skipped.returncode == 0, skipped.stderr
    launches = [c for c in log.read_text().splitlines() if "hpc_mnist.launch" in c]
    assert ["hpc_mnist.train" in c for c in launches] == [True]


@pytest.mark.parametrize("saved, stopping", [(False, ""), (True, ""), (True, "TERM")])
def test_a_job_script_says_when_the_ranks_ended_without_recording_why(tmp_path, saved, stopping):
    """The launch returned but status.json still says running (a launcher killed every rank, or a host died):
    the job script says so in one line and marks both copies of the status failed, gone. It continues the run
    only when this job's ranks had saved a checkpoint (a running status names it only then) and the job was not
    being stopped (a scancel or qdel whose stop a rank did not survive still ends the job)."""
    status_file, run_dir = tmp_path / "1.status.json", tmp_path / "r7"
    run_dir.mkdir()
    running = {"state": "running", "reason": None, "requeue": False, "run_dir": str(run_dir),
               **({"checkpoint": f"{run_dir}/checkpoint-0002-000000.pt"} if saved else {})}
    (run_dir / "status.json").write_text(json.dumps(running, indent=2))
    script = f"""
        source launch/jobs.sh
        JOB_SCHEDULER=pbs HPC_MNIST_STATUS_FILE={status_file} JOB_STOPPING={stopping}
        job_run() {{ cp {run_dir}/status.json "$HPC_MNIST_STATUS_FILE"; return 137; }}
        continue_pbs_job() {{ echo "continued: $(stopped_why)"; }}
        job_launch true
    """
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 137
    said = ("hpc_mnist: the launch ended (exit 137) without the ranks recording why: a rank or its node died (the "
            "OOM killer, a node failure; the launcher's report above names it); ")
    continues = saved and not stopping
    if continues:
        assert result.stderr.strip() == said + "this job had saved checkpoint-0002-000000.pt, the newest checkpoint"
        assert result.stdout.strip() == "continued: the ranks were lost (above), after this job had made progress"
    else:
        assert result.stderr.strip() == said + "the newest checkpoint is kept: resubmit with RUN_NAME=r7 to continue"
        assert "continued" not in result.stdout
    for path in (status_file, run_dir / "status.json"):
        status = json.loads(path.read_text())
        assert (status["state"], status["reason"], status["requeue"]) == ("failed", "gone", continues), path


@pytest.mark.parametrize("system, expected", [
    ("perlmutter", f"{SRUN} -N 2 --nodelist nid1,nid3 -n 8 --ntasks-per-node 4 --gpus-per-node 4"),
    ("frontier", f"{SRUN} -N 2 --nodelist nid1,nid3 -n 16 --ntasks-per-node 8 -c 7"),
    ("slurm", f"{SRUN} -N 2 --nodelist nid1,nid3 -n 8 --ntasks-per-node 4"),
])
def test_hosts_pin_an_srun_launch_to_the_good_hosts(system, expected):
    """A job of 3 nodes with a spare (or a bad host): srun trains on the hosts named, not on any 2 of the 3."""
    env = scheduler_free_env(SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES="3", SLURM_GPUS_ON_NODE="4")
    result = launch(["--system", system, "--hosts", "nid1,nid3", "--dry-run", *COMMAND], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(expected), result.stdout


@pytest.mark.parametrize("system", ["polaris", "aurora", "pbs"])
def test_hosts_give_mpiexec_a_host_file_of_the_good_hosts_and_reuse_it(tmp_path, nodefile, system):
    path = nodefile(3)
    hosts = path.read_text().split()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(path), HPC_MNIST_MPI="mpich", TMPDIR=str(tmp))
    lines = []
    for nodes in ([], ["--nodes", "1"], []):
        result = launch(["--system", system, "--hosts", f"{hosts[2]},{hosts[0]}", *nodes, "--dry-run", *COMMAND], env)
        assert result.returncode == 0, result.stderr
        lines.append(result.stdout.splitlines()[-1])
    files = [Path(line.split("--hostfile ")[1].split()[0]) for line in lines]
    assert [f.read_text().split() for f in files] == [[hosts[2], hosts[0]], [hosts[2]], [hosts[2], hosts[0]]]
    assert files[0] == files[2] and len(list(tmp.iterdir())) == 2  # one file per host list, not one per launch
    assert " -n 8 " in lines[0] or " -n 2 " in lines[0] or " -n 24 " in lines[0]


def test_hosts_outside_the_job_are_one_line(nodefile):
    env = scheduler_free_env(PBS_JOBID="1.pbs", PBS_NODEFILE=str(nodefile(2)), HPC_MNIST_MPI="mpich")
    result = launch(["--system", "pbs", "--hosts", "elsewhere", "--dry-run", *COMMAND], env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--hosts elsewhere: not a host of this job" in result.stderr
    local = launch(["--system", "local", "--hosts", "a", "--dry-run", *COMMAND], scheduler_free_env())
    assert local.returncode == 2 and "--hosts needs a batch job" in local.stderr

"""The systems hpc_mnist launches on, and how each wants its ranks started.

What the launcher and the scaling study share: the table of systems (scheduler, ranks per node), which one this
is (from variables each site sets), whether this shell is inside a job and which hosts it has, the site settings
file `launch/<system>.sh` and what it would change, and the mpiexec / srun / torchrun line for a number of nodes
and ranks per node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpc_mnist import resources
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import pbs

# Aurora: 2 sockets x 52 cores; ALCF reserves cores 0 and 52 for the system.
AURORA_SOCKET_CORES = (range(1, 52), range(53, 104))
PERLMUTTER_CORES, PERLMUTTER_GPUS = 64, 4  # one AMD Milan (2 hardware threads per core), 4 A100
FRONTIER_GCDS = 8  # 7 usable cores per GCD's L3 region (low-noise mode keeps the 8th for the system)
PLACEHOLDER_NODEFILE = "$PBS_NODEFILE"
NODES_VAR = "HPC_MNIST_NODES"  # the launch's node count, for its ranks (a job may hold spares)


@dataclass(frozen=True)
class System:
    scheduler: str  # pbs | slurm | local
    ranks_per_node: int  # one per GPU (GCD, tile)


SYSTEMS = {
    "polaris": System("pbs", 4),
    "aurora": System("pbs", 12),
    "perlmutter": System("slurm", 4),
    "frontier": System("slurm", 8),
    "pbs": System("pbs", 1),
    "slurm": System("slurm", 1),
    "local": System("local", 1),
}


def detect_system() -> str:
    """The system this runs on, from variables each site sets; generic pbs/slurm/local otherwise."""
    env = os.environ
    if env.get("HPC_MNIST_SYSTEM"):
        return env["HPC_MNIST_SYSTEM"]
    hints = " ".join([env.get("NERSC_HOST", ""), env.get("LMOD_SYSTEM_NAME", ""), env.get("PBS_O_HOST", ""),
                      socket.gethostname()]).lower()
    for name in ("polaris", "aurora", "perlmutter", "frontier"):
        if name in hints:
            return name
    if "PBS_JOBID" in env:
        return "pbs"
    if "SLURM_JOB_ID" in env:
        return "slurm"
    return "local"


def in_allocation(system: System) -> bool:
    """Whether this shell is inside a job of the system's scheduler (a workstation always is)."""
    if system.scheduler == "pbs":
        return bool(os.environ.get("PBS_NODEFILE"))
    return system.scheduler != "slurm" or "SLURM_JOB_ID" in os.environ


def allocated_hosts(system: System) -> list[str]:
    """The job's hosts: PBS's node file, Slurm's node count (srun picks the hosts itself), or this machine."""
    if system.scheduler == "pbs":
        nodefile = os.environ.get("PBS_NODEFILE")
        if not nodefile or not Path(nodefile).exists():
            raise UserError("a PBS system but PBS_NODEFILE is not set or missing: run inside a PBS job (qsub), "
                            "or add --dry-run to preview the line")
        return _nodefile_hosts()
    if system.scheduler == "slurm":
        if "SLURM_JOB_ID" not in os.environ:
            raise UserError("a Slurm system but no SLURM_JOB_ID: run inside an allocation (sbatch or salloc), "
                            "or add --dry-run to preview the line")
        count = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
        return [f"node{i}" for i in range(count)]  # srun -N picks the hosts itself
    return [socket.gethostname()]


def chosen_hosts(system: System, allocated: list[str], chosen: list[str], preview: bool) -> list[str]:
    """--hosts: hosts of this job (PBS's node file says which; Slurm's srun --nodelist checks them itself)."""
    if system.scheduler == "local":
        raise UserError("--hosts needs a batch job (PBS or Slurm): on a workstation every rank runs here")
    if system.scheduler == "pbs" and not preview:
        foreign = [h for h in chosen if h not in allocated]
        if foreign:
            raise UserError(f"--hosts {', '.join(foreign)}: not a host of this job (PBS_NODEFILE lists "
                            f"{', '.join(allocated)})")
    return list(dict.fromkeys(chosen))


def _hostfile(hosts: list[str], nodes: int) -> str:
    """PBS_NODEFILE itself, or a file naming the first `nodes` hosts (a launch on part of a job: a scaling point,
    or the good hosts without spares). Named by its content, so that relaunches and sweeps reuse one file instead
    of leaving a new one in the temporary folder each time (the launcher replaces this process: nobody is left
    to delete it)."""
    if hosts[:nodes] == _nodefile_hosts() or hosts[0].startswith("<"):  # the whole job, or a preview
        return os.environ.get("PBS_NODEFILE", PLACEHOLDER_NODEFILE)
    chosen = "\n".join(hosts[:nodes]) + "\n"
    path = Path(tempfile.gettempdir()) / f"hpc_mnist-hosts-{hashlib.sha1(chosen.encode()).hexdigest()[:12]}.txt"
    if not path.is_file() or path.read_text() != chosen:
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(chosen)
        partial.replace(path)
    return str(path)


def _nodefile_hosts() -> list[str]:
    """PBS_NODEFILE's hosts, each once, in order ([] when there is none)."""
    nodefile = os.environ.get("PBS_NODEFILE")
    return pbs.nodefile_hosts(nodefile) if nodefile and Path(nodefile).exists() else []


def aurora_cpu_bind(ppn: int) -> str:
    """ALCF's `--cpu-bind list:` for `ppn` ranks: half the ranks on each socket, equal blocks of its free cores.

    For 12 ranks this is ALCF's documented list (8 cores each, 1-8 ... 93-100)."""
    free = sum(len(cores) for cores in AURORA_SOCKET_CORES)
    if not 1 <= ppn <= free:
        raise UserError(f"--ppn {ppn}: an Aurora node has {free} cores for ranks (0 and 52 are reserved)")
    blocks = []
    for cores, count in zip(AURORA_SOCKET_CORES, ((ppn + 1) // 2, ppn // 2), strict=True):
        width = len(cores) // count if count else 0
        for i in range(count):
            first, last = cores[i * width], cores[i * width + width - 1]
            blocks.append(str(first) if first == last else f"{first}-{last}")
    return "list:" + ":".join(blocks)


def mpi_flavour() -> str:
    """'openmpi', or 'mpich' for the `--ppn` family (MPICH, Cray PALS, Intel MPI), from HPC_MNIST_MPI or mpiexec."""
    if os.environ.get("HPC_MNIST_MPI"):
        return os.environ["HPC_MNIST_MPI"]
    try:
        out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "mpich"
    return "openmpi" if "open mpi" in (out.stdout + out.stderr).lower() or "openrte" in out.stdout.lower() \
        else "mpich"


def launch_line(name: str, nodes: int, ppn: int, cpu_bind: str | None, hosts: list[str],
                command: list[str], pinned: bool = False) -> list[str]:
    """The line that starts `command` with `ppn` ranks on each of the first `nodes` hosts, the way `name` wants;
    `pinned`: those very hosts (srun --nodelist; mpiexec's host file names them anyway), not any `nodes` of the
    allocation (good hosts only, spares left out)."""
    n = str(nodes * ppn)
    if pinned and SYSTEMS[name].scheduler == "slurm":
        return _srun_on(launch_line(name, nodes, ppn, cpu_bind, hosts, command), hosts[:nodes])
    if name in ("polaris", "aurora", "pbs"):
        if name == "pbs" and mpi_flavour() == "openmpi":  # Open MPI has no --ppn
            line = ["mpiexec", "-n", n, "--map-by", f"ppr:{ppn}:node"]
        else:
            line = ["mpiexec", "-n", n, "--ppn", str(ppn)]
        if name == "polaris":
            line += ["--depth", "8", "--cpu-bind", cpu_bind or "depth"]
        elif name == "aurora":
            line += ["--cpu-bind", cpu_bind or aurora_cpu_bind(ppn)]
        elif cpu_bind:
            line += ["--cpu-bind", cpu_bind]
        line += ["--hostfile", _hostfile(hosts, nodes)]
        if name == "polaris":  # Cray MPICH does not bind GPUs; the helper sets CUDA_VISIBLE_DEVICES per rank
            line.append(str(resources.site_folder() / "gpu_affinity_polaris.sh"))
        return line + command
    if name == "perlmutter":  # all 4 GPUs visible to every task; CPUs shared out as NERSC's 2 x floor(64 / ppn)
        if ppn > PERLMUTTER_CORES:
            raise UserError(f"--ppn {ppn}: a Perlmutter GPU node has {PERLMUTTER_CORES} cores")
        line = ["srun", "-N", str(nodes), "-n", n, "--ntasks-per-node", str(ppn), "--gpus-per-node",
                str(min(ppn, PERLMUTTER_GPUS)), "--cpus-per-task", str(2 * (PERLMUTTER_CORES // ppn)),
                "--cpu-bind", cpu_bind or "cores"]
        return line + command
    if name == "frontier":  # each task sees one GCD as device 0; 7 cores (one L3 region) per GCD it stands for
        if ppn > FRONTIER_GCDS:
            raise UserError(f"--ppn {ppn}: a Frontier node has {FRONTIER_GCDS} GCDs (one per task)")
        line = ["srun", "-N", str(nodes), "-n", n, "--ntasks-per-node", str(ppn), "-c", str(7 * (FRONTIER_GCDS // ppn)),
                "--gpus-per-task", "1", "--gpu-bind", "closest", "--network=disable_rdzv_get"]
        return line + (["--cpu-bind", cpu_bind] if cpu_bind else []) + command
    if name == "slurm":
        line = ["srun", "-N", str(nodes), "-n", n, "--ntasks-per-node", str(ppn)]
        return line + (["--cpu-bind", cpu_bind] if cpu_bind else []) + command
    # A workstation: torchrun runs the Python program itself.
    program = command[1:] if Path(command[0]).name.startswith("python") else ["--no-python", *command]
    return [_torchrun(), "--standalone", f"--nproc_per_node={ppn}", *program]


def _srun_on(line: list[str], hosts: list[str]) -> list[str]:
    """An srun line pinned to `hosts`."""
    at = line.index("-N") + 2
    return [*line[:at], "--nodelist", ",".join(hosts), *line[at:]]


def _torchrun() -> str:
    """torchrun from PATH, else the one installed beside this Python (an unactivated venv)."""
    beside = Path(sys.executable).parent / "torchrun"
    return "torchrun" if shutil.which("torchrun") or not beside.exists() else str(beside)


def site_file(name: str) -> Path:
    """launch/<name>.sh: the system's modules and network variables (a generic system may have none)."""
    return resources.site_folder() / f"{name}.sh"


def site_preview(name: str) -> tuple[list[str], dict[str, str]]:
    """The module commands launch/<system>.sh would run, and what it adds or changes in the environment.

    The file is sourced with HPC_MNIST_DRY_RUN set: it then prints its module commands (to fd 3) instead of
    running them, so this works on a laptop as well as on a login node."""
    path = site_file(name)
    if not path.exists() or os.environ.get("HPC_MNIST_SITE") == name:
        return [], {}
    result = subprocess.run(["bash", "-c", 'source "$1" 3>&2 >/dev/null 2>&1; env -0', "bash", str(path)],
                            capture_output=True, check=True, env={**os.environ, "HPC_MNIST_DRY_RUN": "1"})
    after = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
    skip = ("SHLVL", "_", "PWD", "OLDPWD", "HPC_MNIST_DRY_RUN")
    # a variable the file sets to empty from unset (Frontier's LD_LIBRARY_PATH without Cray's modules) is left out:
    # pasted as `export X=''` it would clear what the user's own shell has there
    changed = {k: v for k, v in after.items() if os.environ.get(k) != v and k not in skip and (v or k in os.environ)}
    return result.stderr.decode().splitlines(), changed


def default_ranks_per_node(name: str) -> int:
    """One rank per GPU: the GPUs here (a workstation), Slurm's count on the node, else the system's."""
    if name == "local":
        import torch

        return max(1, torch.cuda.device_count())
    if name == "slurm" and os.environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    return SYSTEMS[name].ranks_per_node

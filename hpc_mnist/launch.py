"""Start COMMAND with one rank per GPU on every allocated node, the way each system wants it.

    python -m hpc_mnist.launch [options] -- python -m hpc_mnist.train --config configs/cnn.yaml

Detects the scheduler (PBS, Slurm, or none) and the system (Polaris, Aurora, Perlmutter, Frontier, or
generic), loads the site settings from `launch/<system>.sh` (modules, network variables), then replaces
itself with the launch line, so the scheduler's signals reach the launcher directly. `--dry-run` prints
the line and the environment changes and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpc_mnist.errors import UserError

LAUNCH_DIR = Path(os.environ.get("HPC_MNIST_LAUNCH_DIR", Path(__file__).resolve().parents[1] / "launch"))
AURORA_CPU_BIND = "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"


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


def allocated_hosts(system: System) -> list[str]:
    if system.scheduler == "pbs":
        nodefile = os.environ.get("PBS_NODEFILE")
        if not nodefile or not Path(nodefile).exists():
            raise UserError("a PBS system but PBS_NODEFILE is not set or missing: run inside a PBS job (qsub)")
        return list(dict.fromkeys(line.strip() for line in Path(nodefile).read_text().splitlines() if line.strip()))
    if system.scheduler == "slurm":
        if "SLURM_JOB_ID" not in os.environ:
            raise UserError("a Slurm system but no SLURM_JOB_ID: run inside an allocation (sbatch or salloc)")
        count = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)
        return [f"node{i}" for i in range(count)]  # srun -N picks the hosts itself
    return [socket.gethostname()]


def _hostfile(hosts: list[str], nodes: int) -> str:
    """PBS_NODEFILE itself, or a file naming its first `nodes` hosts (scaling runs on part of a job)."""
    if nodes == len(hosts):
        return os.environ["PBS_NODEFILE"]
    with tempfile.NamedTemporaryFile("w", prefix="hostfile-", suffix=".txt", delete=False) as f:
        f.write("\n".join(hosts[:nodes]) + "\n")
        return f.name


def launch_line(name: str, nodes: int, ppn: int, cpu_bind: str | None, hosts: list[str],
                command: list[str]) -> list[str]:
    n = str(nodes * ppn)
    if name in ("polaris", "aurora", "pbs"):
        line = ["mpiexec", "-n", n, "--ppn", str(ppn)]
        if name == "polaris":
            line += ["--depth", "8", "--cpu-bind", cpu_bind or "depth"]
        elif name == "aurora":
            line += ["--cpu-bind", cpu_bind or AURORA_CPU_BIND]
        elif cpu_bind:
            line += ["--cpu-bind", cpu_bind]
        line += ["--hostfile", _hostfile(hosts, nodes)]
        if name == "polaris":  # Cray MPICH does not bind GPUs; the helper sets CUDA_VISIBLE_DEVICES per rank
            line.append(str(LAUNCH_DIR / "gpu_affinity_polaris.sh"))
        return line + command
    if name == "perlmutter":
        line = ["srun", "-N", str(nodes), "-n", n, "--ntasks-per-node", str(ppn), "--gpus-per-node", "4",
                "--cpus-per-task", "32", "--cpu-bind", cpu_bind or "cores"]
        return line + command
    if name == "frontier":  # each task sees one GCD as device 0
        line = ["srun", "-N", str(nodes), "-n", n, "-c", "7", "--gpus-per-task", "1", "--gpu-bind", "closest"]
        return line + (["--cpu-bind", cpu_bind] if cpu_bind else []) + command
    if name == "slurm":
        line = ["srun", "-N", str(nodes), "-n", n, "--ntasks-per-node", str(ppn)]
        return line + (["--cpu-bind", cpu_bind] if cpu_bind else []) + command
    # A workstation: torchrun runs the Python program itself.
    program = command[1:] if Path(command[0]).name.startswith("python") else ["--no-python", *command]
    return [_torchrun(), "--standalone", f"--nproc_per_node={ppn}", *program]


def _torchrun() -> str:
    """torchrun from PATH, else the one installed beside this Python (an unactivated venv)."""
    beside = Path(sys.executable).parent / "torchrun"
    return "torchrun" if shutil.which("torchrun") or not beside.exists() else str(beside)


def site_file(name: str) -> Path:
    return LAUNCH_DIR / f"{name}.sh"


def site_environment(name: str) -> dict[str, str]:
    """What sourcing launch/<system>.sh adds or changes in the environment."""
    path = site_file(name)
    if not path.exists() or os.environ.get("HPC_MNIST_SITE") == name:
        return {}
    out = subprocess.run(["bash", "-c", 'source "$1" >/dev/null 2>&1; env -0', "bash", str(path)],
                         capture_output=True, check=True).stdout.decode()
    after = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in after.items() if os.environ.get(k) != v and k not in ("SHLVL", "_", "PWD", "OLDPWD")}


def default_ranks_per_node(name: str) -> int:
    if name == "local":
        import torch

        return max(1, torch.cuda.device_count())
    if name == "slurm" and os.environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    return SYSTEMS[name].ranks_per_node


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpc_mnist.launch", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [options] -- COMMAND...")
    p.add_argument("--system", choices=list(SYSTEMS), help="override detection")
    p.add_argument("--nodes", type=int, help="nodes to use (default: all allocated)")
    p.add_argument("--ppn", type=int, help="ranks per node (default: GPUs per node)")
    p.add_argument("--cpu-bind", help="CPU binding passed to mpiexec/srun (default: the system's)")
    p.add_argument("--dry-run", action="store_true", help="print the launch line and environment, run nothing")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program to start on every rank")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no COMMAND given; put it after --, e.g. -- python -m hpc_mnist.train")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        name = args.system or detect_system()
        if name not in SYSTEMS:
            raise UserError(f"unknown system {name!r} (HPC_MNIST_SYSTEM); choose one of {', '.join(SYSTEMS)}")
        hosts = allocated_hosts(SYSTEMS[name])
        nodes = args.nodes or len(hosts)
        if not 1 <= nodes <= len(hosts):
            raise UserError(f"--nodes {nodes} but the job has {len(hosts)} node(s)")
        ppn = args.ppn or default_ranks_per_node(name)
        if ppn < 1:
            raise UserError(f"--ppn must be at least 1 (got {ppn})")
        line = launch_line(name, nodes, ppn, args.cpu_bind, hosts, args.command)
    except UserError as e:
        print(f"hpc_mnist.launch: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.dry_run:
        print(f"# system {name}, {nodes} node(s) x {ppn} rank(s); site settings {site_file(name)}")
        for key, value in sorted(site_environment(name).items()):
            print(f"export {key}={shlex.quote(value)}")
        print(shlex.join(line))
        return 0
    sys.stdout.flush()
    if site_file(name).exists() and os.environ.get("HPC_MNIST_SITE") != name:
        line = ["bash", "-c", 'source "$0" && exec "$@"', str(site_file(name)), *line]
    try:
        os.execvp(line[0], line)
    except FileNotFoundError:
        print(f"hpc_mnist.launch: error: {line[0]} not found on PATH: load the site's MPI or PyTorch module "
              f"(see {site_file(name)})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

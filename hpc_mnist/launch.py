"""Start COMMAND with one rank per GPU on every allocated node, the way each system wants it.

    python -m hpc_mnist.launch [options] -- python -m hpc_mnist.train --config configs/cnn.yaml

Detects the scheduler (PBS, Slurm, or none) and the system (Polaris, Aurora, Perlmutter, Frontier, or
generic), loads the site settings from `launch/<system>.sh` (modules, network variables), then replaces
itself with the launch line, so the scheduler's signals reach the launcher directly. `--dry-run` prints
the module loads, the environment changes and the line, and runs nothing; outside a job (on a login node or a
laptop, before submitting) it shows the line for placeholder hosts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from hpc_mnist.errors import ArgumentParser, UserError, report
from hpc_mnist.runtime import systems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist launch", description=__doc__.split("\n\n")[0],
                       usage="%(prog)s [options] -- COMMAND...")
    p.add_argument("--system", choices=list(systems.SYSTEMS), help="override detection")
    p.add_argument("--nodes", type=int, help="nodes to use (default: all allocated)")
    p.add_argument("--ppn", type=int, help="ranks per node (default: GPUs per node)")
    p.add_argument("--hosts", type=lambda text: [h for h in text.split(",") if h], metavar="H1,H2,...",
                   help="launch on these hosts of the job, in this order (with --nodes: the first NODES of them); "
                   "default: the job's, as the scheduler lists them. The job scripts pass the good hosts, bad ones "
                   "and spares left out")
    p.add_argument("--cpu-bind", help="CPU binding passed to mpiexec/srun (default: the system's)")
    p.add_argument("--dry-run", action="store_true", help="print the launch line and environment, run nothing")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program to start on every rank")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command and args.dry_run:
        args.command = ["python", "-m", "hpc_mnist.train"]
    if not args.command:
        p.error("no COMMAND given; put it after --, e.g. -- python -m hpc_mnist.train")
    for name in ("nodes", "ppn"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        name = args.system or systems.detect_system()
        if name not in systems.SYSTEMS:
            raise UserError(f"unknown system {name!r} (HPC_MNIST_SYSTEM); choose one of "
                            f"{', '.join(systems.SYSTEMS)}")
        preview = args.dry_run and not systems.in_allocation(systems.SYSTEMS[name])
        if preview:  # before submitting: the line a job of --nodes nodes would run
            hosts = [f"<node{i}>" for i in range(args.nodes or 1)]
        else:
            hosts = systems.allocated_hosts(systems.SYSTEMS[name])
        if args.hosts:
            hosts = systems.chosen_hosts(systems.SYSTEMS[name], hosts, args.hosts, preview)
        nodes = args.nodes or len(hosts)
        if not 1 <= nodes <= len(hosts):
            raise UserError(f"--nodes {nodes} but the job has {len(hosts)} node(s)"
                            + (" named in --hosts" if args.hosts else ""))
        ppn = args.ppn or systems.default_ranks_per_node(name)
        line = systems.launch_line(name, nodes, ppn, args.cpu_bind, hosts, args.command, pinned=bool(args.hosts))
    except UserError as e:
        return report(e)
    settings = systems.site_file(name)
    if args.dry_run:
        site = f"site settings {settings}" if settings.exists() else "no site settings"
        where = "; outside a job: placeholder hosts" if preview else ""
        print(f"# system {name}, {nodes} node(s) x {ppn} rank(s); {site}{where}")
        modules, changed = systems.site_preview(name)
        for command in modules:
            print(command)
        for key, value in sorted(changed.items()):
            print(f"export {key}={shlex.quote(value)}")
        print(shlex.join(line))
        return 0
    sys.stdout.flush()
    os.environ[systems.NODES_VAR] = str(nodes)  # the doctor's "every node of the job runs ranks" check
    if settings.exists() and os.environ.get("HPC_MNIST_SITE") != name:
        line = ["bash", "-c", 'source "$0" && exec "$@"', str(settings), *line]
    try:
        os.execvp(line[0], line)
    except FileNotFoundError:
        return report(UserError(f"{line[0]} not found on PATH: load the site's MPI or PyTorch module "
                                f"(see {settings})"))


if __name__ == "__main__":
    sys.exit(main())

"""Running a sweep: the allocation's hosts, one thread count for every point, each point through
`python -m hpc_mnist.launch` in its own run directory (recorded in sweep.json), then, with --predict, the
all-reduce benchmark at the two smallest sizes with more than one rank, which the report's model is fitted on
(with the 1-rank point) to predict the others."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import cpus, systems
from hpc_mnist.scaling.plan import Point, plan, resolve
from hpc_mnist.scaling.report import report_paths


def check_nodes(args: argparse.Namespace) -> list[str] | None:
    """With --nodes: the allocation's hosts (PBS) or None (Slurm picks hosts), after checking the sizes fit."""
    if not args.nodes:
        return None
    name = args.system or systems.detect_system()
    system = systems.SYSTEMS.get(name)
    if system is None:
        raise UserError(f"unknown system {name!r}; choose one of {', '.join(systems.SYSTEMS)}")
    if system.scheduler == "local":
        raise UserError(f"--nodes {','.join(map(str, args.nodes))} needs a batch allocation, and this shell is "
                        "not inside a batch job (PBS or Slurm): use --ranks 1,2 on a workstation, or run inside "
                        "qsub/sbatch")
    hosts = systems.allocated_hosts(system)
    if max(args.nodes) > len(hosts):
        raise UserError(f"--nodes {','.join(map(str, args.nodes))} asks for {max(args.nodes)} nodes but the job "
                        f"has {len(hosts)}")
    return hosts if system.scheduler == "pbs" else None


def threads_per_rank(args: argparse.Namespace, points: list[Point]) -> tuple[int, str]:
    """One thread count for every point, so that the points differ in ranks alone: --threads, else the user's
    OMP_NUM_THREADS, else this node's cores shared among the most ranks any point puts on a node. (Left to each
    point, a 1-rank point took both cores of a 2-core machine and a 2-rank point one each: 'speedup 21.25'.)"""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give 1 or more CPU threads per rank")
        return args.threads, "--threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "your OMP_NUM_THREADS"
    cores = cpus.usable_cores()
    per_node = max(args.ppn if args.nodes else p.ranks for p in points)
    return max(1, cores // per_node), f"{cores} core(s) here / {per_node} rank(s) per node at the largest point"


def _point_env(point: Point, hosts: list[str] | None, folder: Path, threads: int) -> dict[str, str]:
    """The point's environment: the sweep's threads per rank; on part of a PBS job, a node file naming the
    point's first hosts, so the launcher writes no temporary hostfile of its own (those were left in /tmp)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if hosts is None or point.nodes == len(hosts):
        return env
    nodefile = folder / f"hostfile-n{point.nodes}.txt"
    nodefile.write_text("\n".join(hosts[:point.nodes]) + "\n")
    return {**env, "PBS_NODEFILE": str(nodefile)}


def run_sweep(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir or f"runs/scaling-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    hosts = check_nodes(args)
    points = plan(args, sweep_dir)
    sweep = resolve(args)
    threads, threads_why = threads_per_rank(args, points)
    sizes = ", ".join(dict.fromkeys(str(p.nodes if args.nodes else p.ranks) for p in points))
    print(f"# {args.mode} scaling at {sizes} {'node(s)' if args.nodes else 'rank(s)'}: " + "; ".join(sweep.notes))
    print("# the sweep sets: " + ", ".join(sweep.why) + f", log.dir={sweep_dir}, log.name=<mode>-n<nodes>-r<ranks>"
          "-<repeat> (words after -- win over all but the last two)", flush=True)
    print(f"# threads per rank at every point: {threads} ({threads_why})", flush=True)
    if args.dry_run:
        failed = 0
        with tempfile.TemporaryDirectory(prefix="hpc_mnist-dry-") as folder:
            for p in points:
                cut = p.command.index("--")
                dry = subprocess.run([*p.command[:cut], "--dry-run", *p.command[cut:]], capture_output=True,
                                     text=True, env=_point_env(p, hosts, Path(folder), threads))
                print(dry.stdout.strip().splitlines()[-1] if dry.returncode == 0 else dry.stderr.strip(),
                      file=sys.stdout if dry.returncode == 0 else sys.stderr)
                failed += dry.returncode != 0
        return 1 if failed else 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = sweep_dir / "sweep.json"
    meta = {"mode": args.mode, "batch": sweep.batch, "epochs": sweep.epochs, "target": args.target,
            "threads_per_rank": threads}
    for p in points:
        print(f"[{p.ranks} rank(s) on {p.nodes} node(s), repeat {p.repeat}] {p.run_dir}", flush=True)
        with open(Path(p.run_dir + ".log"), "w") as log:
            p.exit_code = subprocess.run(p.command, stdout=log, stderr=subprocess.STDOUT,
                                         env=_point_env(p, hosts, sweep_dir, threads)).returncode
        if p.exit_code:
            print(f"  failed with exit code {p.exit_code}: see {p.run_dir}.log", flush=True)
        manifest.write_text(json.dumps({**meta, "points": [asdict(q) for q in points]}, indent=2) + "\n")
    comm = measure_network(points, sweep_dir, hosts, threads) if args.predict else []
    return report_paths([sweep_dir], args.target, sweep_dir, comm_json=comm or None, fit_optional=True)


def measure_network(points: list[Point], sweep_dir: Path, hosts: list[str] | None, threads: int) -> list[Path]:
    """The all-reduce benchmark (hpc_mnist.comm) through the launch of the two smallest sizes with more than one
    rank, on the hosts the sweep ran on: the report's model is fitted on them and the 1-rank point, and predicts
    the other sizes."""
    sizes = {p.ranks: p for p in points if p.ranks >= 2 and p.repeat == 1}
    if not sizes:
        print("# no prediction: no point of the sweep has two ranks or more, no all-reduce to measure", flush=True)
        return []
    written = []
    for ranks in sorted(sizes)[:2]:
        point = sizes[ranks]
        out = sweep_dir / f"comm-r{ranks}.json"
        command = [*point.command[:point.command.index("--") + 1], sys.executable, "-m", "hpc_mnist.comm",
                   "--json", str(out), "--max-bytes", str(16 * 2**20)]
        print(f"[all-reduce benchmark on {ranks} rank(s), {point.nodes} node(s)] {out}", flush=True)
        with open(sweep_dir / f"comm-r{ranks}.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  env=_point_env(point, hosts, sweep_dir, threads)).returncode
        if code or not out.exists():
            print(f"  failed with exit code {code}: see {sweep_dir / f'comm-r{ranks}.log'}; the report has no "
                  "predictions", flush=True)
            return []
        written.append(out)
    return written

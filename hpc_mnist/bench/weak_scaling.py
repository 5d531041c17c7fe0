"""Weak scaling of our loop on one machine: torchrun starts the benchmark's `--worker` at each rank count, every
rank measuring its own samples/s at a fixed per-rank batch."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from hpc_mnist.bench.throughput import DEFAULT_BATCH, run_config, throughput
from hpc_mnist.bench.trainer_loop import ProjectLoop
from hpc_mnist.runtime import dist


def worker(args: argparse.Namespace) -> None:
    """One rank of a weak-scaling measurement (started by weak_scaling); rank 0 prints a JSON line."""
    model = args.models[0]
    batch = (args.batch_sizes or [DEFAULT_BATCH[model]])[0]
    with tempfile.TemporaryDirectory() as scratch:
        cfg = run_config(model, args.precisions[0], batch, args)
        rt = dist.setup(cfg.dist, cfg.train.device)
        try:
            rate = throughput(ProjectLoop(cfg, rt, Path(scratch)), batch, args, rt.device)
            if rt.is_main:
                print(json.dumps({"ranks": rt.world_size, "threads": rt.threads, "per_rank": rate,
                                  "global": rate * rt.world_size}))
        finally:
            dist.shutdown()


def weak_scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Weak scaling at fixed per-rank batch: throughput(N) / (N x throughput(1)), args.threads per rank.

    Rank counts are measured in interleaved rounds and the medians compared, so that drift in a shared
    machine's speed falls on every rank count alike."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.ranks}
    for _round, n in ((r, n) for r in range(args.scaling_rounds) for n in args.ranks):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "hpc_mnist.bench", "--worker", "--models", args.models[-1], "--precisions",
               args.precisions[0], "--device", args.device, "--data-root", args.data_root,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        if args.batch_sizes:
            cmd += ["--batch-sizes", str(args.batch_sizes[0])]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        runs[n].append(json.loads(out.strip().splitlines()[-1]))
    rows = [{"ranks": n, "threads": found[0]["threads"], "rounds": len(found),
             "per_rank": statistics.median(r["per_rank"] for r in found),
             "global": statistics.median(r["global"] for r in found)} for n, found in runs.items()]
    base = next((r["global"] for r in rows if r["ranks"] == 1), None)
    for r in rows:
        r["efficiency"] = r["global"] / (r["ranks"] * base) if base else None
    return rows


def measure_weak_scaling(args: argparse.Namespace, console) -> list[dict[str, Any]]:
    """Weak scaling at --ranks, shown as a table."""
    rows = weak_scaling(args)
    table = Table(title=f"weak scaling, {args.models[-1]}, {args.threads} thread(s) per rank")
    for col in ("ranks", "samples/s per rank", "global samples/s", "efficiency"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["ranks"]), f"{r['per_rank']:,.0f}", f"{r['global']:,.0f}",
                      f"{r['efficiency']:.2f}" if r["efficiency"] else "-")
    console.print(table)
    return rows

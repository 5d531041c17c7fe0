"""Measure training speed: this trainer against the tutorials' loop, time to an accuracy, memory, scaling.

    python -m hpc_mnist.bench                                  # MLP (batch 128) and CNN (batch 512)
    python -m hpc_mnist.bench --data-root DIR --target 0.97    # real MNIST-layout data, time to 97%
    python -m hpc_mnist.bench --models cnn --ranks 1,2         # weak scaling at 1 thread per rank

Both paths train the same model with the same optimizer on the same files. Ours is the trainer's own
loop (resident uint8 data, chosen precision, channels_last); the reference is the tutorials' loop
(torchvision dataset with a per-sample ToTensor, a plain DataLoader, fp32). Throughput is the median of
repeats after warm-up, timed with CUDA events on GPUs and the wall clock on CPUs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from hpc_mnist import resources
from hpc_mnist.bench.throughput import DEFAULT_BATCH, measure_throughput, measure_time_to_target
from hpc_mnist.bench.time_to_99 import time_to_99
from hpc_mnist.bench.weak_scaling import measure_weak_scaling, worker
from hpc_mnist.core import config
from hpc_mnist.core.datasets import synthetic, write_idx_split
from hpc_mnist.errors import ArgumentParser, comma_list, one_line, writable_file
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.logger import make_console

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _prepare_data(args: argparse.Namespace, scratch: Path) -> str:
    """The real data root when given, else synthetic digits written in MNIST layout (so both paths read
    the same files through torchvision)."""
    if args.data_root:
        return args.data_root
    root = scratch / "synthetic"
    for split, n, seed in (("train", args.synthetic_train, 1), ("t10k", args.synthetic_test, 2)):
        write_idx_split(root, split, *synthetic(n, seed))
    return str(root)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist bench", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    counts = comma_list(int, positive=True)
    p.add_argument("--models", type=comma_list(), default=["mlp", "cnn"], help="comma list (default mlp,cnn)")
    p.add_argument("--config", default="", help="YAML for our path (default: configs/<model>.yaml)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both paths' model, optimizer and batch (repeatable)")
    p.add_argument("--precisions", type=comma_list(), default=["auto"], help="comma list of auto|fp32|bf16|fp16")
    p.add_argument("--batch-sizes", type=counts, default=None,
                   help="comma list (default: mlp/linear 128, cnn 512)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|xpu|mps")
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=counts, default=[], help="weak scaling at these rank counts, e.g. 1,2")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank for the scaling runs")
    p.add_argument("--scaling-rounds", type=int, default=3, help="interleaved rounds of the scaling runs")
    p.add_argument("--target", type=float, default=0.0, help="test accuracy for time-to-target (0: skip)")
    p.add_argument("--seeds", type=int, default=3, help="seeds for time-to-target")
    p.add_argument("--max-epochs", type=int, default=10, help="give up time-to-target after this many epochs")
    p.add_argument("--data-root", default="", help="MNIST-layout root with real digits (default: synthetic)")
    p.add_argument("--synthetic-train", type=int, default=20000)
    p.add_argument("--synthetic-test", type=int, default=2000)
    p.add_argument("--no-reference", action="store_true", help="skip the tutorial-loop reference")
    p.add_argument("--json", default="", help="write the figures here (default runs/bench-<time>.json)")
    p.add_argument("--time-to-99", action="store_true",
                   help="run only the time-to-99%% protocol on the bundled full MNIST: --protocol-config for "
                        "--seeds seeds, then pytorch/examples' recipe in the same run")
    p.add_argument("--protocol-config", default=str(resources.folder("configs") / "lean.yaml"),
                   help="preset for --time-to-99 (default configs/lean.yaml)")
    p.add_argument("--reference-seeds", type=int, default=1,
                   help="seeds of pytorch/examples' recipe for --time-to-99 (0: skip; about 4 min each here)")
    p.add_argument("--reference-epochs", type=int, default=4,
                   help="its epochs (4: the fewest after which it reached 99%% on this CPU)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, values, allowed in (("--models", args.models, DEFAULT_BATCH),
                                  ("--precisions", args.precisions, PRECISIONS)):
        if unknown := [v for v in values if v not in allowed]:
            p.error(f"{name} takes {', '.join(allowed)}, not {', '.join(unknown)}")
    if not args.models or not args.precisions:
        p.error("--models and --precisions need at least one value each")
    return args


@one_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    kind = "time-to-99" if args.time_to_99 else "bench"
    args.json = str(writable_file(args.json or f"runs/{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"))
    console = make_console()
    if args.time_to_99:
        return _main_time_to_99(args, console)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        args.data_root = _prepare_data(args, scratch)
        rt = dist.setup(config.DistConfig(init="none"), args.device)
        report = {**_machine(rt), "data": "real" if not args.data_root.startswith(str(scratch)) else "synthetic",
                  "throughput": measure_throughput(args, rt, scratch, console),
                  "time_to_target": measure_time_to_target(args, rt, scratch, console) if args.target else [],
                  "scaling": measure_weak_scaling(args, console) if args.ranks else []}
        dist.shutdown()

    return _write_report(report, args.json, console)


def _machine(rt: dist.Runtime) -> dict[str, Any]:
    """Where and when the figures were measured: the head of every report."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": str(torch.__version__), "device": str(rt.device), "threads": rt.threads}


def _write_report(report: dict[str, Any], path: str, console) -> int:
    """The figures as JSON, at --json or runs/<kind>-<date>-<time>.json (checked writable before measuring)."""
    out = Path(path)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"figures written to {out}")
    return 0


def _main_time_to_99(args: argparse.Namespace, console) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rt = dist.setup(config.DistConfig(init="none"), args.device)
        report = {**_machine(rt), "data": "bundled full MNIST", **time_to_99(args, rt, Path(tmp), console)}
        dist.shutdown()
    return _write_report(report, args.json, console)

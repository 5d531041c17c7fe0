"""The time-to-99% protocol: a preset trained to its end for every seed, then tested once, with the training
time of the loop alone (the data already loaded); pytorch/examples' recipe is run in the same way beside it."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from hpc_mnist.bench.reference import TutorialLoop
from hpc_mnist.bench.trainer_loop import ProjectLoop
from hpc_mnist.core import config, models
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import DeviceData, write_idx_split
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.devices import synchronize


def protocol_config(args: argparse.Namespace, seed: int) -> Config:
    """The preset under test on the bundled full MNIST (its own data.val_fraction decides the split)."""
    return config.build(args.protocol_config, [
        f"train.seed={seed}", f"train.device={args.device}", "data.name=mnist", "data.root=",
        "log.tensorboard=false", *args.override])


def run_protocol(name: str, make: Callable[[int], ProjectLoop | TutorialLoop], epochs: int, seeds: list[int],
                 console, each_epoch: bool = False) -> dict[str, Any]:
    """Fixed recipe, trained to its end for every seed, then one test evaluation. Training time is the
    wall time of the training loop with the data already loaded, up to the end of its last queued GPU work (a
    GPU runs behind the host: without waiting for it the clock would miss up to a thousand queued kernels); its
    CPU time (all threads) is recorded beside it, a figure that other processes on a shared machine disturb much
    less. `each_epoch` also records the test accuracy after every epoch, with the clock stopped (for
    information: not part of the protocol)."""
    rows = []
    for seed in seeds:
        path = make(seed)
        seconds, cpu_seconds, curve = 0.0, 0.0, []
        for epoch in range(1, epochs + 1):
            synchronize(path.device)  # what was queued before (the data's upload, an evaluation) is not counted
            began, cpu_began = time.perf_counter(), time.process_time()
            path.epoch(epoch)
            synchronize(path.device)
            seconds += time.perf_counter() - began
            cpu_seconds += time.process_time() - cpu_began
            if each_epoch and epoch < epochs:
                curve.append(path.test_accuracy())
        acc = path.test_accuracy()
        rows.append({"seed": seed, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "test_acc": acc,
                     "test_acc_by_epoch": curve + [acc]})
        console.print(f"  {name} seed {seed}: test accuracy {acc:.2%} after {epochs} epoch(s), training "
                      f"{seconds:.1f} s ({cpu_seconds:.1f} s of CPU time), load {os.getloadavg()[0]:.1f}")
        del path
    accs, secs = [r["test_acc"] for r in rows], [r["train_seconds"] for r in rows]
    return {"path": name, "epochs": epochs, "seeds": seeds, "runs": rows, "test_acc_mean": statistics.mean(accs),
            "test_acc_min": min(accs), "test_acc_max": max(accs),
            "test_acc_stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(secs), "train_seconds_max": max(secs),
            "train_cpu_seconds_mean": statistics.mean(r["train_cpu_seconds"] for r in rows)}


def time_to_99(args: argparse.Namespace, rt: dist.Runtime, scratch: Path, console) -> dict[str, Any]:
    """The time-to-99% protocol for --protocol-config and, in the same run, pytorch/examples' recipe."""
    cfg = protocol_config(args, 0)
    probe = models.build(cfg.model)
    report: dict[str, Any] = {
        "config": args.protocol_config, "overrides": args.override,
        "split": "all 60,000 training digits" if cfg.data.val_fraction == 0 else
                 f"{1 - cfg.data.val_fraction:.0%} of the training digits (data.val_fraction={cfg.data.val_fraction})",
        "model_parameters": models.parameter_count(probe),
        "model_mflop_per_sample": models.flops_per_sample(probe) / 1e6,
        "load_before": os.getloadavg()}
    seeds = list(range(args.seeds))
    report["ours"] = run_protocol("ours", lambda s: ProjectLoop(protocol_config(args, s), rt, scratch),
                                  cfg.train.epochs, seeds, console)
    if args.reference_seeds:
        full = DeviceData(config.DataConfig(val_fraction=0, shuffle=False), torch.device("cpu"))
        root = scratch / "examples"
        write_idx_split(root, "train", full.train.images, full.train.labels)
        write_idx_split(root, "t10k", full.test.images, full.test.labels)
        del full
        probe = models.build(config.ModelConfig(name="cnn"))
        report["reference"] = {
            "recipe": "pytorch/examples mnist: tutorial CNN, Adadelta lr 1.0, StepLR gamma 0.7, batch 64, "
                      "ToTensor+Normalize DataLoader, fp32, all 60,000 training digits",
            "model_mflop_per_sample": models.flops_per_sample(probe) / 1e6,
            **run_protocol("pytorch/examples", lambda s: TutorialLoop.pytorch_examples(root, s, rt.device),
                           args.reference_epochs, list(range(args.reference_seeds)), console, each_epoch=True)}
        report["ratio"] = report["reference"]["train_seconds_mean"] / report["ours"]["train_seconds_mean"]
    report["load_after"] = os.getloadavg()
    if rt.device.type == "cuda":
        report["peak_device_mb"] = torch.cuda.max_memory_allocated(rt.device) / 2**20
    table = Table(title=f"time to 99% test accuracy under the fixed protocol, {rt.device}, {rt.threads} thread(s)")
    for col in ("path", "epochs", "seeds", "test accuracy mean", "min - max", "training s (mean)", "CPU s (mean)",
                "speed-up"):
        table.add_column(col, justify="right")
    for key in ("ours", "reference"):
        if key in report:
            r = report[key]
            table.add_row(r["path"], str(r["epochs"]), str(len(r["seeds"])), f"{r['test_acc_mean']:.2%}",
                          f"{r['test_acc_min']:.2%} - {r['test_acc_max']:.2%}", f"{r['train_seconds_mean']:.1f}",
                          f"{r['train_cpu_seconds_mean']:.1f}",
                          f"{report['ratio']:.1f}x" if key == "ours" and "ratio" in report else "")
    console.print(table)
    return report



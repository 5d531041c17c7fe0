"""Training speed of the two loops: samples/s after warm-up, memory over an epoch, and the time to a test
accuracy; throughput is the median of repeats, timed with CUDA events on GPUs and the wall clock on CPUs."""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from hpc_mnist import resources
from hpc_mnist.bench.reference import TutorialLoop
from hpc_mnist.bench.trainer_loop import ProjectLoop
from hpc_mnist.core import config
from hpc_mnist.core.config import Config
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.devices import synchronize

DEFAULT_BATCH = {"linear": 128, "mlp": 128, "cnn": 512}


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds `fn` took: CUDA events on a GPU (the host may run ahead), else the wall clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        synchronize(device)
        return start.elapsed_time(end) / 1000
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_config(model: str, precision: str, batch: int, args: argparse.Namespace, seed: int = 0,
               schedule: bool = False) -> Config:
    """--config (default: the shipped config for `model`), pointed at the benchmark's data. Throughput runs
    leave out the schedule, whose length depends on epochs the benchmark never runs."""
    cfg = config.build(args.config or str(resources.folder("configs") / f"{model}.yaml"), [
        f"model.name={model}", f"train.precision={precision}", f"train.batch_size={batch}",
        f"train.device={args.device}", f"train.seed={seed}", "data.name=mnist", f"data.root={args.data_root}",
        "data.download=false", "log.tensorboard=false", *([] if schedule else ["optim.scheduler=none"]),
        *args.override])
    return cfg


def throughput(path: ProjectLoop | TutorialLoop, batch: int, args: argparse.Namespace, device: torch.device) -> float:
    """Median samples/s over repeats, after warm-up steps."""
    path.steps(args.warmup)()
    rates = [args.steps * batch / _timed(path.steps(args.steps), device) for _ in range(args.repeats)]
    return statistics.median(rates)


def time_to_target(make: Callable[[int], ProjectLoop | TutorialLoop], args: argparse.Namespace) -> dict[str, Any]:
    """Seconds from the first step to the end-of-epoch test evaluation that reaches args.target (data
    reading and start-up excluded), median over seeds; None where max epochs did not reach it."""
    times, accs = [], []
    for seed in range(args.seeds):
        path = make(seed)
        began, reached, acc = time.perf_counter(), None, 0.0
        for epoch in range(1, args.max_epochs + 1):
            path.epoch(epoch)
            acc = path.test_accuracy()
            if acc >= args.target:
                reached = time.perf_counter() - began
                break
        times.append(reached)
        accs.append(acc)
    done = [t for t in times if t is not None]
    return {"seconds_median": statistics.median(done) if len(done) == len(times) else None, "seconds": times,
            "accuracy_mean": statistics.mean(accs), "accuracy_spread": max(accs) - min(accs)}


def measure_throughput(args: argparse.Namespace, rt: dist.Runtime, scratch: Path, console) -> list[dict[str, Any]]:
    """Both loops' samples/s for every model, batch and precision, with our loop's data size and its memory growth
    over a whole epoch; shown as a table."""
    rows = []
    table = Table(title=f"training throughput, {rt.device}, {rt.threads} thread(s)")
    for col in ("model", "precision", "batch", "ours samples/s", "reference samples/s", "ours/reference",
                "dataset MB", "RSS growth over an epoch, MB"):
        table.add_column(col, justify="right")
    for model in args.models:
        for batch in args.batch_sizes or [DEFAULT_BATCH[model]]:
            for precision in args.precisions:
                cfg = run_config(model, precision, batch, args)
                ours = ProjectLoop(cfg, rt, scratch)
                if rt.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rate = throughput(ours, batch, args, rt.device)
                ours.epoch(1)  # the allocator settles on its buffers (the last batch is smaller)
                rss_before = _rss_mb()  # then a whole epoch must not grow memory: no data copies
                ours.epoch(2)
                row = {"model": model, "precision": ours.trainer.amp, "batch": batch, "ours": rate,
                       "dataset_mb": (ours.trainer.data.train.images.nbytes
                                      + ours.trainer.data.test.images.nbytes) / 2**20,
                       "rss_growth_mb": _rss_mb() - rss_before, "peak_rss_mb": _peak_rss_mb()}
                if rt.device.type == "cuda":
                    row["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
                del ours
                if not args.no_reference:
                    row["reference"] = throughput(TutorialLoop.with_config(cfg, rt.device), batch, args, rt.device)
                    row["ratio"] = rate / row["reference"]
                rows.append(row)
                measured = "reference" in row
                table.add_row(model, row["precision"], str(batch), f"{rate:,.0f}",
                              f"{row['reference']:,.0f}" if measured else "-",
                              f"{row['ratio']:.2f}x" if measured else "-", f"{row['dataset_mb']:.1f}",
                              f"{row['rss_growth_mb']:+.1f}")
    console.print(table)
    return rows


def measure_time_to_target(args: argparse.Namespace, rt: dist.Runtime, scratch: Path,
                           console) -> list[dict[str, Any]]:
    """Each loop's time to --target test accuracy for every model (its first batch size); shown as a table."""
    results = []
    table = Table(title=f"time to {args.target:.1%} test accuracy (median of {args.seeds} seeds)")
    for col in ("model", "path", "seconds", "accuracy mean", "spread"):
        table.add_column(col, justify="right")
    for model in args.models:
        batch = (args.batch_sizes or [DEFAULT_BATCH[model]])[0]
        paths = {"ours": lambda s, m=model, b=batch: ProjectLoop(
            run_config(m, args.precisions[0], b, args, s, schedule=True), rt, scratch)}
        if not args.no_reference:
            paths["reference"] = lambda s, m=model, b=batch: TutorialLoop.with_config(
                run_config(m, "fp32", b, args, s), rt.device)
        for name, make in paths.items():
            result = {"model": model, "path": name, "batch": batch, **time_to_target(make, args)}
            results.append(result)
            secs = result["seconds_median"]
            table.add_row(model, name, "not reached" if secs is None else f"{secs:.2f}",
                          f"{result['accuracy_mean']:.2%}", f"{result['accuracy_spread']:.2%}")
    console.print(table)
    return results

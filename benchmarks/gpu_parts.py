"""The measuring parts of benchmarks/gpu_check.py, each run there in a process of its own (a CUDA error ends only
its part), each writing its JSON after every figure (a part killed at its time limit keeps what it measured).

    python benchmarks/gpu_parts.py environment --device cuda --json FILE
    python benchmarks/gpu_parts.py throughput --device cuda --json FILE --model cnn --batch 256 \
        --variants fp32,bf16,bf16+cl --modes trainer,eager,graphs [--until UNIX_TIME] [--stop-after-error]

`throughput` measures samples/s of the trainer's loop (`trainer`: bench/trainer_loop.py) and of its bare step in
bench/captured.py's modes (eager, graphs, compile, compile+graphs), with bench/throughput.py's timing (median of
repeats after warm-up, CUDA events on a GPU), on the bundled MNIST, each with the peak GPU memory it reached and,
for the CNN, its fraction of the device's FLOP-bound limit (dense bf16 peak / FLOPs per sample).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {  # name: (train.precision, model.channels_last)
    "fp32": ("fp32", False), "bf16": ("bf16", False), "bf16+cl": ("bf16", True), "auto": ("auto", None)}


def write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:400] if text else ''}"


def environment(device: str) -> dict[str, Any]:
    """The machine, the software and the device: what every figure of the check was measured on."""
    import torch

    from hpc_mnist.core import precision
    from hpc_mnist.perf.peak import peak_bf16_tflops

    found: dict[str, Any] = {
        "python": platform.python_version(), "torch": str(torch.__version__), "cuda": torch.version.cuda,
        "host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "c_compiler": shutil.which("cc") or shutil.which("gcc"), "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        found["triton"] = triton.__version__
    except Exception as e:  # not installed, or broken: torch.compile's GPU path needs it
        found["triton"] = f"not importable ({first_line(e)})"
    if device != "cuda":
        found["device_name"] = found["cpu"]
        found["peak_bf16_tflops"] = None
        return found
    props = torch.cuda.get_device_properties(0)
    found.update(device_name=torch.cuda.get_device_name(0), capability=".".join(map(str, (props.major, props.minor))),
                 memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count,
                 devices_visible=torch.cuda.device_count(),
                 peak_bf16_tflops=peak_bf16_tflops(torch.cuda.get_device_name(0)))
    probes = {"cudnn": lambda: torch.backends.cudnn.version(),
              "nccl": lambda: ".".join(map(str, torch.cuda.nccl.version())),
              "bf16_tensor_cores": lambda: precision.cuda_has_native_bf16(torch.device("cuda", 0)),
              "nvidia_smi": lambda: subprocess.run(
                  ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                  capture_output=True, text=True, timeout=30).stdout.strip()}
    for key, probe in probes.items():  # each a side figure: one that fails says why, the rest are kept
        try:
            found[key] = probe()
        except Exception as e:
            found[key] = f"unknown ({first_line(e)})"
    return found


def throughput(args: argparse.Namespace, report: dict[str, Any], out: Path) -> None:
    """Every (variant, mode) row in turn, written as it is measured; rows left when --until passes are skipped."""
    import torch

    from hpc_mnist.bench.throughput import run_config
    from hpc_mnist.core import config, models
    from hpc_mnist.perf.peak import flop_bound_samples_per_s, peak_bf16_tflops
    from hpc_mnist.runtime import dist

    rt = dist.setup(config.DistConfig(init="none"), args.device)
    cuda = rt.device.type == "cuda"
    flop = models.flops_per_sample(models.build(run_config(args.model, "fp32", args.batch, args).model))
    tflops = peak_bf16_tflops(torch.cuda.get_device_name(0)) if cuda else None
    bound = flop_bound_samples_per_s(flop, tflops) if tflops else None
    report.update(model=args.model, batch=args.batch, device=str(rt.device), mflop_per_sample=flop / 1e6,
                  peak_bf16_tflops=tflops, flop_bound_samples_per_s=bound, rows=[])
    failed = ""
    with tempfile.TemporaryDirectory() as scratch:
        # mode by mode: a capture that fails can leave the CUDA context broken, for the rows after it alone
        for mode in args.modes:
            for variant in args.variants:
                amp, channels_last = VARIANTS[variant]
                row: dict[str, Any] = {"variant": variant, "mode": mode}
                report["rows"].append(row)
                if time.time() > args.until:
                    row["skipped"] = "the part's time limit came first"
                elif failed and args.stop_after_error:
                    row["skipped"] = f"an earlier row failed ({failed})"
                else:
                    measure(row, args, rt, Path(scratch), amp, channels_last, bound)
                    failed = failed or row.get("error", "")
                write(out, report)
    dist.shutdown()


def measure(row: dict[str, Any], args: argparse.Namespace, rt, scratch: Path, amp: str,
            channels_last: bool | None, bound: float | None) -> None:
    """One row: build the loop, time it, note its peak GPU memory; an exception becomes the row's error."""
    import torch

    from hpc_mnist.bench.captured import CapturedLoop
    from hpc_mnist.bench.throughput import run_config
    from hpc_mnist.bench.throughput import throughput as samples_per_s
    from hpc_mnist.bench.trainer_loop import ProjectLoop
    from hpc_mnist.errors import UserError

    cuda = rt.device.type == "cuda"
    began = time.perf_counter()
    args.override = [*args.extra, *([f"model.channels_last={str(channels_last).lower()}"]
                                    if channels_last is not None and args.model == "cnn" else [])]
    try:
        cfg = run_config(args.model, amp, args.batch, args)
        if row["mode"].startswith("compile"):
            torch._dynamo.reset()  # each row compiles afresh: no earlier row's cache, no recompile limit reached
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        loop = ProjectLoop(cfg, rt, scratch) if row["mode"] == "trainer" else CapturedLoop(cfg, rt, scratch,
                                                                                           row["mode"])
        rate = samples_per_s(loop, args.batch, args, rt.device)
        row.update(precision=loop.trainer.amp, channels_last=loop.trainer.channels_last, samples_per_s=rate)
        if bound:
            row["fraction_of_flop_bound"] = rate / bound
        if cuda:
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        del loop
    except UserError as e:  # a mode this device cannot run (CUDA graphs on a CPU): refused, not failed
        row["refused"] = str(e)
    except Exception as e:  # recorded; the next row goes on
        row["error"] = first_line(e)
        print(f"gpu_parts: {row['variant']} {row['mode']}: {row['error']}", file=sys.stderr, flush=True)
    row["seconds"] = time.perf_counter() - began
    gc.collect()  # the loop's reference cycles (its model, a graph's memory pool) go before the next row
    if cuda:
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from hpc_mnist.errors import ArgumentParser

    p = ArgumentParser(prog="benchmarks/gpu_parts.py", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["environment", "throughput"])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--model", choices=["mlp", "cnn"], default="cnn")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--variants", type=lambda s: s.split(","), default=["auto"])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["trainer", "eager", "graphs"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--until", type=float, default=float("inf"), help="start no row after this unix time")
    p.add_argument("--stop-after-error", action="store_true", help="skip the rows after one that failed")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help="config override (dry runs)")
    args = p.parse_args(argv)
    args.config, args.data_root, args.override = "", "", list(args.extra)  # shipped config, bundled MNIST
    return args


def run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"part": args.part}
    if args.part == "environment":
        report.update(environment(args.device))
        write(args.json, report)
    else:
        throughput(args, report, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, installed or not
    from hpc_mnist.errors import one_line

    return one_line(run)(argv)


if __name__ == "__main__":
    sys.exit(main())

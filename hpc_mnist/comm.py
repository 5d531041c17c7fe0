"""All-reduce benchmark: latency and bandwidth of the collective DDP runs every step, as nccl-tests reports them.

    torchrun --standalone --nproc_per_node=2 -m hpc_mnist.comm --json comm.json
    mpiexec -n 8 --ppn 4 ... python -m hpc_mnist.comm                 # any launcher the trainer accepts

Times a float32 all-reduce over a size sweep (4 B to 64 MiB, x2 steps) and at each model's gradient size
(its parameter count x 4 bytes, what DDP reduces per step). For each size: time per operation (the slowest
rank's mean over the timed iterations), algorithm bandwidth algbw = bytes / time and bus bandwidth
busbw = algbw x 2(n-1)/n (nccl-tests' definitions: busbw is comparable across rank counts, and approaches
the link bandwidth for large messages). Prints ALCF's published Polaris figures beside the table, and the
alpha-beta fit that `hpc_mnist.model` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from hpc_mnist.core.config import DistConfig, ModelConfig
from hpc_mnist.core.models import allreduce_bytes, build
from hpc_mnist.errors import ArgumentParser, UserError, comma_list, writable_file
from hpc_mnist.perf import step
from hpc_mnist.perf.allreduce import bus_factor
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.devices import synchronize

MODELS = ("linear", "mlp", "cnn")
# argonne-lcf/alcf-nccl-tests, NCCL 2.18 with ALCF's tuned environment (aws-ofi-nccl, FI_CXI_* settings):
# all_reduce_perf on Polaris, 2 nodes x 4 A100 (8 ranks).
POLARIS_REFERENCE = {
    "system": "ALCF Polaris, 2 nodes x 4 A100, NCCL 2.18 (argonne-lcf/alcf-nccl-tests, tuned environment)",
    "ranks": 8,
    "points": [{"bytes": 8, "time_us": 22.0, "note": "tiny messages"},
               {"bytes": 4 * 2**20, "time_us": 368.0, "note": "4 MB"}],
    "large_busbw_gbs": 36.0,
}


def sweep_sizes(smallest: int = 4, largest: int = 64 * 2**20) -> list[int]:
    sizes, size = [], smallest
    while size <= largest:
        sizes.append(size)
        size *= 2
    return sizes


def gradient_bytes() -> dict[str, int]:
    """Bytes DDP all-reduces per step for each shipped model (fp32 gradients, default hyper-parameters)."""
    return {name: allreduce_bytes(build(ModelConfig(name=name))) for name in MODELS}


def time_allreduce(nbytes: int, device: torch.device, ranks: int, budget_s: float, blocks: int = 5) -> float:
    """Seconds per all-reduce of `nbytes`: the median over `blocks` blocks of the slowest rank's mean per
    operation (a median, because the machines here are shared and a neighbour's burst inflates one block).
    Iterations are sized so that all blocks take about `budget_s`."""
    x = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)

    def block(iters: int) -> float:
        tdist.barrier()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            tdist.all_reduce(x)
        synchronize(device)
        mean = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64, device=device)
        tdist.all_reduce(mean, op=tdist.ReduceOp.MAX)  # every rank then agrees on the iteration count
        return float(mean)

    block(2)  # warm-up: connections, buffers
    iters = int(min(1000, max(3, budget_s / blocks / block(1))))
    return statistics.median(block(iters) for _ in range(blocks))


def row(nbytes: int, seconds: float, ranks: int, what: str) -> dict[str, Any]:
    algbw = nbytes / seconds / 1e9
    return {"what": what, "bytes": nbytes, "time_us": seconds * 1e6, "algbw_gbs": algbw,
            "busbw_gbs": algbw * bus_factor(ranks)}


def _step_times(model_name: str, batch: int, device: torch.device, rounds: int, budget_s: float) -> dict[str, float]:
    """A DDP training step, timed with its all-reduce (plain steps) and without it (`no_sync`), interleaved in
    rounds so that a shared machine's drifting load hits both alike; medians of the slowest rank's means."""
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel

    model = build(ModelConfig(name=model_name)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step(reduce: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if reduce else ddp.no_sync():
            F.cross_entropy(ddp(x), y).backward()
        opt.step()

    def timed(reduce: bool) -> float:
        tdist.barrier()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(reduce)
        synchronize(device)
        mean = torch.tensor([(time.perf_counter() - start) / steps], dtype=torch.float64, device=device)
        tdist.all_reduce(mean, op=tdist.ReduceOp.MAX)
        return float(mean)

    steps = 1
    for _ in range(3):  # warm-up; DDP rebuilds its buckets at the second step
        step(True)
    steps = int(min(20, max(2, budget_s / rounds / 2 / timed(True))))
    compute, full = [], []
    for _ in range(rounds):
        compute.append(timed(False))
        full.append(timed(True))
    return {"compute_s": statistics.median(compute), "step_s": statistics.median(full)}


def validate(models: list[str], batch: int, device: torch.device, ranks: int, net: step.Network,
             rounds: int = 5, budget_s: float = 10.0) -> list[dict[str, Any]]:
    """The scaling model's step time (measured compute + the fitted all-reduce) against the measured step."""
    out = []
    for name in models:
        measured = _step_times(name, batch, device, rounds, budget_s)
        model = build(ModelConfig(name=name))
        p = step.predict(step.Compute(measured["compute_s"], 0.0), net,
                                  allreduce_bytes(model), batch, ranks, step.ddp_buckets(model))
        out.append({"model": name, "batch": batch, **measured, "allreduce_s": p["latency_s"] + p["bandwidth_s"],
                    "predicted_step_s": p["step_s"], "predicted_overlap_step_s": p["step_overlap_s"],
                    "error": p["step_s"] / measured["step_s"] - 1,
                    "error_overlap": p["step_overlap_s"] / measured["step_s"] - 1})
    return out


def benchmark(args: argparse.Namespace) -> dict[str, Any] | None:
    rt = dist.setup(DistConfig(timeout=args.timeout), args.device)
    try:
        if rt.world_size < 2:
            raise UserError("the all-reduce benchmark needs 2 or more ranks: torchrun --standalone "
                            "--nproc_per_node=2 -m hpc_mnist.comm (or any launcher)")
        rows = [row(s, time_allreduce(s, rt.device, rt.world_size, args.budget), rt.world_size, "sweep")
                for s in sweep_sizes(args.min_bytes, args.max_bytes)]
        rows += [row(s, time_allreduce(s, rt.device, rt.world_size, args.budget), rt.world_size, f"{name} gradients")
                 for name, s in gradient_bytes().items()]
        net = step.fit([r for r in rows if r["what"] == "sweep"], rt.world_size)
        checks = validate(args.validate, args.batch, rt.device, rt.world_size, net) if args.validate else []
        hosts = dist.all_gather_object(socket.gethostname())
    finally:
        dist.shutdown()
    if not rt.is_main:
        return None
    return {"ranks": rt.world_size, "hosts": len(set(hosts)), "ranks_per_host": rt.local_world_size,
            "backend": rt.backend, "device": rt.device.type, "threads_per_rank": rt.threads,
            "torch": torch.__version__, "python": platform.python_version(), "rows": rows,
            "fit": step.network_dict(net), "validation": checks, "reference": POLARIS_REFERENCE,
            "command": shlex.join(["python", "-m", "hpc_mnist.comm", *args.argv])}


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.4g} {unit}"
    return f"{nbytes} B"


def show(report: dict[str, Any]) -> None:
    from rich.table import Table

    from hpc_mnist.runtime.logger import make_console

    console = make_console()
    ref = {p["bytes"]: p for p in report["reference"]["points"]}
    table = Table(title=f"all-reduce, {report['ranks']} ranks on {report['hosts']} host(s), {report['backend']} "
                  f"({report['device']})")
    for header in ("size", "what", "time us", "algbw GB/s", "busbw GB/s", "Polaris 8 ranks time us"):
        table.add_column(header, justify="left" if header == "what" else "right")
    for r in report["rows"]:
        near = ref.get(r["bytes"]) or (ref.get(8) if r["bytes"] <= 8 else None)
        table.add_row(_size(r["bytes"]), r["what"], f"{r['time_us']:,.1f}", f"{r['algbw_gbs']:.3f}",
                      f"{r['busbw_gbs']:.3f}", f"{near['time_us']:.0f}" if near else "")
    console.print(table)
    fit = report["fit"]
    console.print(f"alpha-beta fit: latency {fit['alpha_s'] * 1e6:.1f} us, bus bandwidth {fit['busbw_gbs']:.3f} GB/s "
                  f"(t = alpha + bytes x 2(n-1)/n / busbw; largest error on the sweep {fit['max_rel_error']:.0%})")
    if fit.get("busbw_is_lower_bound"):
        largest = max(r["bytes"] for r in report["rows"] if r["what"] == "sweep")
        console.print(f"[yellow]the sweep (up to {_size(largest)}) is latency-bound: its times do not grow with size, "
                      "so the bus bandwidth is a lower bound (the best any size showed); --max-bytes 4194304 or "
                      "more measures it[/]")
    if report.get("validation"):
        check = Table(title="scaling model against measured DDP steps (interleaved, medians)")
        for header in ("model", "batch/rank", "compute ms", "all-reduce ms (fit)", "predicted step ms",
                       "with overlap ms", "measured step ms", "error", "error with overlap"):
            check.add_column(header, justify="right")
        for v in report["validation"]:
            check.add_row(v["model"], str(v["batch"]), *(f"{v[k] * 1e3:.2f}" for k in (
                "compute_s", "allreduce_s", "predicted_step_s", "predicted_overlap_step_s", "step_s")),
                f"{v['error']:+.1%}", f"{v['error_overlap']:+.1%}")
        console.print(check)
    console.print(f"reference: {report['reference']['system']}: 22 us tiny, 368 us at 4 MB, "
                  f"~{report['reference']['large_busbw_gbs']:.0f} GB/s bus bandwidth for large messages")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m hpc_mnist.comm", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-bytes", type=int, default=4, help="smallest message (default: 4)")
    p.add_argument("--max-bytes", type=int, default=64 * 2**20, help="largest message (default: 64 MiB)")
    p.add_argument("--budget", type=float, default=0.2, help="seconds of timed iterations per size (default: 0.2)")
    p.add_argument("--device", default="auto", help="as train.device (default: auto)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a collective may wait (default: 60)")
    p.add_argument("--validate", type=comma_list(), default=[],
                   help="models (e.g. mlp,cnn) whose DDP step to time against the scaling model's prediction "
                   "(default: none)")
    p.add_argument("--batch", type=int, default=128, help="per-rank batch for --validate (default: 128)")
    p.add_argument("--json", type=Path, help="write the results as JSON (rank 0)")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if set(args.validate) - set(MODELS):
        p.error(f"--validate takes models from {', '.join(MODELS)}")
    if not 1 <= args.min_bytes <= args.max_bytes:
        p.error("need 1 <= --min-bytes <= --max-bytes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        json_out = writable_file(args.json) if args.json else None  # before measuring, not after
        report = benchmark(args)
    except UserError as e:
        dist.report_error(e)
        return e.exit_code
    if report is not None:
        show(report)
        if json_out:
            json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of per-rank step timing (log.timing): the timer's own work per step, and the trainer's steps with
timing on and off in interleaved rounds (one process, one thread, synthetic digits).

    OMP_NUM_THREADS=1 python benchmarks/timing_overhead.py [--model mlp] [--steps 150] [--rounds 20]
"""

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from hpc_mnist.core import config
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.timing import StepTimer
from hpc_mnist.training import trainer


def timer_cost_us(steps: int = 200_000) -> float:
    """Microseconds per training step that the marks themselves take (5 marks, a bucket mark, the epoch sum)."""
    timer = StepTimer(torch.device("cpu"))
    start = time.perf_counter()
    for i in range(steps):
        timer.start()
        timer.mark("data")
        timer.mark("forward")
        timer.bucket_ready()
        timer.mark("wait")
        timer.mark("optimizer")
        if i % 1000 == 999:
            timer.phase_seconds()
    return (time.perf_counter() - start) / steps * 1e6


def interleaved(model: str, steps: int, rounds: int) -> tuple[float, float, float]:
    """(median step seconds with timing on, off, and their relative difference) over interleaved rounds."""
    cfg = config.build(str(Path(__file__).parents[1] / "configs" / "smoke.yaml"), [
        f"model.name={model}", "data.synthetic_train=40000", "train.precision=fp32", "train.batch_size=128"])
    with TemporaryDirectory() as scratch:
        rt = dist.Runtime(0, 0, 1, 1, "none", torch.device("cpu"), None, torch.get_num_threads(), ("local",))
        t = trainer.Trainer(cfg, rt, Path(scratch))
        batches = t.order(1)[:steps]
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                t.monitor.timer.enabled = on
                start = time.perf_counter()
                t.train_on(batches)
                seconds[on].append((time.perf_counter() - start) / len(batches))
                t.monitor.timer.phase_seconds()
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    return on, off, (on - off) / off


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    cost = timer_cost_us()
    on, off, diff = interleaved(args.model, args.steps, args.rounds)
    print(f"timer cost: {cost:.2f} us per step = {cost / (off * 1e6):.3%} of a {args.model} step ({off * 1e3:.2f} ms)")
    print(f"{args.model} steps, {args.rounds} interleaved rounds: on {on * 1e3:.3f} ms, off {off * 1e3:.3f} ms, "
          f"difference {diff:+.2%}")


if __name__ == "__main__":
    main()

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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from hpc_mnist import resources
from hpc_mnist.core import config, models, optim
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import synthetic, write_idx_split
from hpc_mnist.errors import ArgumentParser, one_line, writable_file
from hpc_mnist.runtime import dist
from hpc_mnist.runtime.logger import make_console
from hpc_mnist.training.trainer import Trainer

DEFAULT_BATCH = {"linear": 128, "mlp": 128, "cnn": 512}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds `fn` took: CUDA events on a GPU (the host may run ahead), else the wall clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
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


class Ours:
    """The trainer's loop, one Trainer per (model, precision, batch)."""

    def __init__(self, cfg: Config, rt: dist.Runtime, scratch: Path):
        self.trainer = Trainer(cfg, rt, scratch)
        self.cfg = cfg
        self._epoch = 0

    def _batches(self) -> Iterator[torch.Tensor]:
        while True:
            self._epoch += 1
            self.trainer.sampler.set_epoch(self._epoch)
            yield from self.trainer.data.train_batches(self.trainer.sampler, self.cfg.train.batch_size)

    def steps(self, n: int) -> Callable[[], None]:
        it = self._batches()

        def go() -> None:
            self.trainer.train_on([next(it) for _ in range(n)])
        return go

    def epoch(self, epoch: int) -> None:
        self.trainer.train_on(self.trainer.order(epoch))

    def test_accuracy(self) -> float:
        t = self.trainer
        return t.evaluate(t.data.test)[1]


class Reference:
    """The tutorials' loop: torchvision MNIST with ToTensor, a DataLoader, fp32, no channels_last."""

    def __init__(self, cfg: Config, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import datasets
        from torchvision.transforms import ToTensor

        root = str(cfg.data.root)
        self.train_loader = DataLoader(datasets.MNIST(root, train=True, download=False, transform=ToTensor()),
                                       batch_size=cfg.train.batch_size, shuffle=True)
        self.test_loader = DataLoader(datasets.MNIST(root, train=False, download=False, transform=ToTensor()),
                                      batch_size=cfg.train.batch_size)
        torch.manual_seed(cfg.train.seed)
        self.model = models.build(cfg.model).to(device)
        self.optimizer = optim.build_optimizer(cfg.optim, self.model, cfg.optim.lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.device = device

    def _step(self, X: torch.Tensor, y: torch.Tensor) -> None:
        X, y = X.to(self.device), y.to(self.device)
        loss = self.loss_fn(self.model(X), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.train_loader

    def steps(self, n: int) -> Callable[[], None]:
        it = self._batches()

        def go() -> None:
            self.model.train()
            for _ in range(n):
                self._step(*next(it))
        return go

    def epoch(self, epoch: int) -> None:
        self.model.train()
        for X, y in self.train_loader:
            self._step(X, y)

    @torch.no_grad()
    def test_accuracy(self) -> float:
        self.model.eval()
        correct = total = 0
        for X, y in self.test_loader:
            correct += (self.model(X.to(self.device)).argmax(1) == y.to(self.device)).sum().item()
            total += len(y)
        return correct / total


def throughput(path: Ours | Reference, batch: int, args: argparse.Namespace, device: torch.device) -> float:
    """Median samples/s over repeats, after warm-up steps."""
    path.steps(args.warmup)()
    rates = [args.steps * batch / _timed(path.steps(args.steps), device) for _ in range(args.repeats)]
    return statistics.median(rates)


def time_to_target(make: Callable[[int], Ours | Reference], args: argparse.Namespace) -> dict[str, Any]:
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


class ExamplesRecipe:
    """pytorch/examples' mnist recipe, as our own loop: the tutorial CNN with log-softmax and NLL loss, Adadelta
    lr 1.0 with the learning rate x 0.7 after each epoch, batch 64, torchvision MNIST with a per-sample
    ToTensor + Normalize in a shuffling DataLoader, fp32 (the script most users would pick)."""

    def __init__(self, root: Path, seed: int, device: torch.device):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        torch.manual_seed(seed)
        self.train_loader = DataLoader(datasets.MNIST(str(root), train=True, download=False, transform=to_input),
                                       batch_size=64, shuffle=True)
        self.test_loader = DataLoader(datasets.MNIST(str(root), train=False, download=False, transform=to_input),
                                      batch_size=1000)
        self.model = models.build(config.ModelConfig(name="cnn", channels_last=False)).to(device)
        self.optimizer = torch.optim.Adadelta(self.model.parameters(), lr=1.0)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.7)
        self.device = device

    def epoch(self, epoch: int) -> None:
        self.model.train()
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.nll_loss(F.log_softmax(self.model(x), dim=1), y)
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    @torch.no_grad()
    def test_accuracy(self) -> float:
        self.model.eval()
        correct = 0
        for x, y in self.test_loader:
            correct += (self.model(x.to(self.device)).argmax(1) == y.to(self.device)).sum().item()
        return correct / len(self.test_loader.dataset)


def protocol_config(args: argparse.Namespace, seed: int) -> Config:
    """The preset under test on the bundled full MNIST (its own data.val_fraction decides the split)."""
    return config.build(args.protocol_config, [
        f"train.seed={seed}", f"train.device={args.device}", "data.name=mnist", "data.root=",
        "log.tensorboard=false", *args.override])


def run_protocol(name: str, make: Callable[[int], Ours | ExamplesRecipe], epochs: int, seeds: list[int],
                 console, each_epoch: bool = False) -> dict[str, Any]:
    """Fixed recipe, trained to its end for every seed, then one test evaluation. Training time is the
    wall time of the training loop with the data already loaded; its CPU time (all threads) is recorded
    beside it, a figure that other processes on a shared machine disturb much less. `each_epoch` also records the test
    accuracy after every epoch, with the clock stopped (for information: not part of the protocol)."""
    rows = []
    for seed in seeds:
        path = make(seed)
        seconds, cpu_seconds, curve = 0.0, 0.0, []
        for epoch in range(1, epochs + 1):
            began, cpu_began = time.perf_counter(), time.process_time()
            path.epoch(epoch)
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
    report["ours"] = run_protocol("ours", lambda s: Ours(protocol_config(args, s), rt, scratch), cfg.train.epochs,
                                  seeds, console)
    if args.reference_seeds:
        from hpc_mnist.core.datasets import DeviceData

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
            **run_protocol("pytorch/examples", lambda s: ExamplesRecipe(root, s, rt.device), args.reference_epochs,
                           list(range(args.reference_seeds)), console, each_epoch=True)}
        report["ratio"] = report["reference"]["train_seconds_mean"] / report["ours"]["train_seconds_mean"]
    report["load_after"] = os.getloadavg()
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


def _prepare_data(args: argparse.Namespace, scratch: Path) -> str:
    """The real data root when given, else synthetic digits written in MNIST layout (so both paths read
    the same files through torchvision)."""
    if args.data_root:
        return args.data_root
    root = scratch / "synthetic"
    for split, n, seed in (("train", args.synthetic_train, 1), ("t10k", args.synthetic_test, 2)):
        write_idx_split(root, split, *synthetic(n, seed))
    return str(root)


def worker(args: argparse.Namespace) -> None:
    """One rank of a weak-scaling measurement (started by `scaling`); rank 0 prints a JSON line."""
    model = args.models[0]
    batch = (args.batch_sizes or [DEFAULT_BATCH[model]])[0]
    with tempfile.TemporaryDirectory() as scratch:
        cfg = run_config(model, args.precisions[0], batch, args)
        rt = dist.setup(cfg.dist, cfg.train.device)
        try:
            rate = throughput(Ours(cfg, rt, Path(scratch)), batch, args, rt.device)
            if rt.is_main:
                print(json.dumps({"ranks": rt.world_size, "threads": rt.threads, "per_rank": rate,
                                  "global": rate * rt.world_size}))
        finally:
            dist.shutdown()


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
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


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(v) for v in text.split(",") if v]

    parse.__name__ = f"comma list of {kind.__name__}"  # argparse's message: invalid comma list of int value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist bench", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", type=_csv(str), default=["mlp", "cnn"], help="comma list (default mlp,cnn)")
    p.add_argument("--config", default="", help="YAML for our path (default: configs/<model>.yaml)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both paths' model, optimizer and batch (repeatable)")
    p.add_argument("--precisions", type=_csv(str), default=["auto"], help="comma list of auto|fp32|bf16|fp16")
    p.add_argument("--batch-sizes", type=_csv(int), default=None,
                   help="comma list (default: mlp/linear 128, cnn 512)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|xpu|mps")
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=_csv(int), default=[], help="weak scaling at these rank counts, e.g. 1,2")
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
    for name in ("batch_sizes", "ranks"):
        if any(v < 1 for v in getattr(args, name) or []):
            p.error(f"--{name.replace('_', '-')} must be positive")
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
        report: dict[str, Any] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": str(torch.__version__), "device": str(rt.device), "threads": rt.threads,
            "data": "real" if not args.data_root.startswith(str(scratch)) else "synthetic",
            "throughput": [], "time_to_target": [], "scaling": [],
        }
        table = Table(title=f"training throughput, {rt.device}, {rt.threads} thread(s)")
        for col in ("model", "precision", "batch", "ours samples/s", "reference samples/s", "ours/reference",
                    "dataset MB", "RSS growth over an epoch, MB"):
            table.add_column(col, justify="right")
        for model in args.models:
            for batch in args.batch_sizes or [DEFAULT_BATCH[model]]:
                for precision in args.precisions:
                    cfg = run_config(model, precision, batch, args)
                    ours = Ours(cfg, rt, scratch)
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
                        row["reference"] = throughput(Reference(cfg, rt.device), batch, args, rt.device)
                        row["ratio"] = rate / row["reference"]
                    report["throughput"].append(row)
                    measured = "reference" in row
                    table.add_row(model, row["precision"], str(batch), f"{rate:,.0f}",
                                  f"{row['reference']:,.0f}" if measured else "-",
                                  f"{row['ratio']:.2f}x" if measured else "-", f"{row['dataset_mb']:.1f}",
                                  f"{row['rss_growth_mb']:+.1f}")
        console.print(table)

        if args.target:
            table = Table(title=f"time to {args.target:.1%} test accuracy (median of {args.seeds} seeds)")
            for col in ("model", "path", "seconds", "accuracy mean", "spread"):
                table.add_column(col, justify="right")
            for model in args.models:
                batch = (args.batch_sizes or [DEFAULT_BATCH[model]])[0]
                paths = {"ours": lambda s, m=model, b=batch: Ours(
                    run_config(m, args.precisions[0], b, args, s, schedule=True), rt, scratch)}
                if not args.no_reference:
                    paths["reference"] = lambda s, m=model, b=batch: Reference(
                        run_config(m, "fp32", b, args, s), rt.device)
                for name, make in paths.items():
                    result = {"model": model, "path": name, "batch": batch, **time_to_target(make, args)}
                    report["time_to_target"].append(result)
                    secs = result["seconds_median"]
                    table.add_row(model, name, "not reached" if secs is None else f"{secs:.2f}",
                                  f"{result['accuracy_mean']:.2%}", f"{result['accuracy_spread']:.2%}")
            console.print(table)

        if args.ranks:
            report["scaling"] = scaling(args)
            table = Table(title=f"weak scaling, {args.models[-1]}, {args.threads} thread(s) per rank")
            for col in ("ranks", "samples/s per rank", "global samples/s", "efficiency"):
                table.add_column(col, justify="right")
            for r in report["scaling"]:
                table.add_row(str(r["ranks"]), f"{r['per_rank']:,.0f}", f"{r['global']:,.0f}",
                              f"{r['efficiency']:.2f}" if r["efficiency"] else "-")
            console.print(table)
        dist.shutdown()

    return _write_report(report, args.json, console)


def _write_report(report: dict[str, Any], path: str, console) -> int:
    """The figures as JSON, at --json or runs/<kind>-<date>-<time>.json (checked writable before measuring)."""
    out = Path(path)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"figures written to {out}")
    return 0


def _main_time_to_99(args: argparse.Namespace, console) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rt = dist.setup(config.DistConfig(init="none"), args.device)
        report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                  "processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "torch": str(torch.__version__), "device": str(rt.device), "threads": rt.threads,
                  "data": "bundled full MNIST", **time_to_99(args, rt, Path(tmp), console)}
        dist.shutdown()
    return _write_report(report, args.json, console)


if __name__ == "__main__":
    sys.exit(main())

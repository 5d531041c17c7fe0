"""The model, data, optimizer and schedule of one run, and the training step: plain, as in pytorch/examples.

Everything else a step reports (phase timing, the hang watchdog, the profiler, the tests' fault hook) goes
through one StepMonitor; when to stop is the StopAgreement's; the run's life around the epochs is the
RunController's (controller.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hpc_mnist.core import checkpoint, models, optim, precision
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import DeviceData, Subset, make_sampler, prepare
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import dist, hang, timing
from hpc_mnist.runtime.stopping import StopAgreement

EXIT_DIVERGED = 3


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    accel = getattr(torch, device.type) if device.type in ("cuda", "xpu") else None
    return {"cpu": torch.get_rng_state(), "device": accel.get_rng_state(device) if accel else None}


def _set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["device"] is not None and device.type in ("cuda", "xpu"):
        getattr(torch, device.type).set_rng_state(state["device"], device)


@dataclass
class Position:
    """Where training stands: whole epochs done, steps into the next epoch, and totals over all segments."""

    epochs_done: int = 0
    step: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0  # of earlier segments (process lives) of this run, up to their checkpoints
    train_samples: int = 0
    segments: int = 1
    partial: list[float] | None = None  # this rank's sums for the interrupted epoch


class StepMonitor:
    """What a step reports besides training: phase timing, the hang watchdog's heartbeat, the profiler's step
    and the tests' fault hooks (HPC_MNIST_TEST_STALL, HPC_MNIST_TEST_NAN)."""

    def __init__(self, timer: timing.StepTimer, watchdog: hang.Watchdog, rank: int):
        self.timer, self.watchdog, self.rank = timer, watchdog, rank
        self.profiler: torch.profiler.profile | None = None
        self.epoch = self.step = 0

    def begin(self, step: int) -> None:
        self.step = step
        self.watchdog.beat(self.epoch, step)
        hang.maybe_stall(self.rank, step)
        self.timer.start()

    def mark(self, phase: str) -> None:
        self.timer.mark(phase)

    def between_steps(self, phase: str, fault: str) -> None:
        """Work outside the steps (evaluation, checkpoints, gathering timings): a hang there is named too."""
        self.watchdog.doing(phase)
        hang.maybe_stall(self.rank, fault)

    def forward_done(self, loss: torch.Tensor) -> torch.Tensor:
        """The forward pass ended; the tests' non-finite fault (HPC_MNIST_TEST_NAN) replaces the loss."""
        self.timer.mark("forward")
        return hang.maybe_poison(self.rank, self.epoch, self.step, loss)

    def backward_done(self) -> None:
        """Backward compute ended at the last gradient bucket; the rest of the phase waited on peers."""
        self.watchdog.beat(self.epoch, self.step)  # DDP's all-reduce returned: alive again
        self.timer.mark("wait")

    def end(self) -> None:
        self.timer.mark("optimizer")
        if self.profiler is not None:
            self.profiler.step()


class Trainer:
    """One run's model, data, optimizer and schedule, built once; it trains and evaluates them."""

    def __init__(self, cfg: Config, rt: dist.Runtime, run_dir: Path):
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        dist.on_main(lambda: prepare(cfg.data))  # download on rank 0 while the others wait
        self.data = DeviceData(cfg.data, rt.device)
        self.sampler = make_sampler(self.data.train, rt.rank, rt.world_size, cfg.train.seed)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = models.build(cfg.model).to(rt.device)
        self.loss = models.loss_function(cfg.model)
        self.channels_last = models.uses_channels_last(cfg.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model = self.model
        self.monitor = StepMonitor(timing.StepTimer(rt.device, cfg.log.timing),
                                   hang.Watchdog(run_dir, rt.rank, after=cfg.dist.timeout / 2), rt.rank)
        if rt.world_size > 1:
            device_ids = None if rt.device.index is None else [rt.device.index]
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, gradient_as_bucket_view=True)
            self.ddp_model.register_comm_hook(None, timing.timed_allreduce_hook(self.monitor.timer,
                                                                                self.monitor.watchdog))
            self._settle_buckets()
        torch.manual_seed(cfg.train.seed + rt.rank)  # distinct dropout masks per rank

        self.amp = precision.resolve(cfg.train.precision, rt.device, cfg.model.name)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.lr = optim.learning_rate(cfg.optim, rt.world_size)
        self.optimizer = optim.build_optimizer(cfg.optim, self.model, self.lr)
        self.scheduler = optim.build_scheduler(cfg.optim, self.optimizer, self.lr, self.steps_per_epoch,
                                               cfg.train.epochs)
        self.scaler = precision.grad_scaler(self.amp, rt.device)

    def size_notes(self) -> list[str]:
        """What the start panel should say about a batch larger than a rank's share of the training set."""
        share = len(self.sampler)
        if self.cfg.train.batch_size <= share:
            return []
        return [f"train.batch_size={self.cfg.train.batch_size} is more than this rank's {share:,} training samples: "
                f"each epoch is one step of {share:,}"]

    def _settle_buckets(self) -> None:
        """One backward pass of zero gradients, so that every real step of every process life all-reduces
        with the same bucket layout. DDP rebuilds its buckets after the first step of each process, and with
        more than 2 ranks the layout decides the summation order: without this, a resumed run's first step
        would sum in another order than the uninterrupted run's and the weights would differ in the last bits.
        Eval mode and zero inputs leave dropout's RNG and batch-norm statistics untouched."""
        self.model.eval()
        x = torch.zeros(1, 1, 28, 28, device=self.rt.device)
        self.ddp_model(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x).sum().mul(0) \
            .backward()
        self.model.zero_grad(set_to_none=True)
        self.model.train()

    def train_epoch(self, epoch: int, pos: Position | None = None, agreement: StopAgreement | None = None,
                    update: Callable[[int, float, float], None] | None = None,
                    checkpoint: Callable[[int, torch.Tensor], None] | None = None,
                    ) -> tuple[int, str | None, torch.Tensor]:
        """One epoch, from pos.step on (a stopped epoch resumes there, with this rank's partial sums).

        Returns the last step done, why the ranks stopped there (None: the epoch ran to its end, or was not
        stopped) and this rank's sums of loss, correct predictions and samples."""
        pos = pos or Position()
        self.sampler.set_epoch(epoch)
        batches = self.data.train_batches(self.sampler, self.cfg.train.batch_size)
        sums = torch.tensor(pos.partial or [0.0, 0.0, 0.0], dtype=sum_dtype(self.rt.device), device=self.rt.device)
        step, stopping = self.train_steps(batches, sums, agreement, epoch=epoch, start_step=pos.step, update=update,
                                          checkpoint=checkpoint)
        return step, stopping, sums

    def train_steps(self, batches: list[torch.Tensor], sums: torch.Tensor, agreement: StopAgreement | None = None,
                    *, epoch: int = 1, start_step: int = 0,
                    update: Callable[[int, float, float], None] | None = None,
                    checkpoint: Callable[[int, torch.Tensor], None] | None = None) -> tuple[int, str | None]:
        """Train on batches[start_step:], adding this rank's loss sum, correct count and samples to `sums`;
        `checkpoint(step, sums)` where the ranks agreed a timed one is due. Returns (the last step done, why all
        ranks stopped there or None)."""
        agreement = agreement or StopAgreement()
        monitor = self.monitor
        monitor.epoch = epoch
        self.model.train()
        first_bad = torch.zeros((), dtype=torch.long, device=self.rt.device)  # first step with a non-finite loss
        lrs: dict[int, float] = {}
        seen, started, step = 0, time.perf_counter(), start_step
        for step in range(start_step + 1, len(batches) + 1):
            monitor.begin(step)
            x, y = self.batch(self.data.train, batches[step - 1])
            monitor.mark("data")
            lrs[step] = self.scheduler.get_last_lr()[0]
            with precision.autocast(self.amp, self.rt.device):
                logits = self.ddp_model(x)
                loss = self.loss(logits, y)
            loss = monitor.forward_done(loss)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # DDP all-reduces the gradients here
            monitor.backward_done()
            self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
            self.scaler.update()
            self.scheduler.step()
            monitor.end()

            loss = loss.detach()
            sums[0] += loss * len(y)
            sums[1] += (logits.detach().argmax(dim=1) == y).sum()
            sums[2] += len(y)
            seen += len(y)
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
            verdict = agreement.at(step, len(batches), first_bad, monitor.watchdog)
            if verdict is None:
                continue
            if verdict.bad_step:
                raise self.diverged(epoch, verdict.bad_step, verdict.bad_rank, lrs[verdict.bad_step])
            lrs.clear()
            if update:
                update(step, loss.item(), seen / (time.perf_counter() - started))
            if verdict.reason:
                return step, verdict.reason
            if verdict.checkpoint and checkpoint and step < len(batches):
                checkpoint(step, sums)
        return step, None

    def diverged(self, epoch: int, step: int, rank: int, lr: float) -> UserError:
        """Every rank stops at the same check; the line names where the loss first broke."""
        hosts = self.rt.hosts
        where = f" on rank {rank} ({hosts[rank]})" if self.rt.world_size > 1 and 0 <= rank < len(hosts) else ""
        return UserError(f"the loss became non-finite{where} in epoch {epoch} at step {step} (learning rate "
                         f"{lr:.3g}): lower optim.lr, or use train.precision=fp32 or bf16", EXIT_DIVERGED,
                         on_all_ranks=True, status={"reason": "non-finite loss", "rank": rank, "epoch": epoch,
                                                    "at_step": step})

    def batch(self, subset: Subset, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(subset, positions)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    @torch.no_grad()
    def evaluate(self, subset: Subset, keep_failures: int = 0) -> tuple[float, float, tuple[torch.Tensor, ...]]:
        """Global (loss, accuracy) over `subset`, each sample counted once across all ranks.

        Also returns (positions, predictions) of up to `keep_failures` of this rank's misclassified samples.
        """
        self.model.eval()
        self.monitor.between_steps("evaluating", "evaluate")
        positions = DeviceData.eval_positions(subset, *dist.rank_and_size())
        totals = torch.zeros(3, dtype=sum_dtype(self.rt.device), device=self.rt.device)  # loss, correct, count
        failures = []
        for chunk in positions.split(self.cfg.train.eval_batch_size):
            self.monitor.watchdog.doing("evaluating")
            x, y = self.batch(subset, chunk)
            with precision.autocast(self.amp, self.rt.device):
                logits = self.model(x).float()
            predicted = logits.argmax(dim=1)
            totals[0] += self.loss(logits, y, reduction="sum")
            totals[1] += (predicted == y).sum()
            totals[2] += len(y)
            if keep_failures:
                miss = predicted != y
                failures.append((chunk.to(miss.device)[miss][:keep_failures], predicted[miss][:keep_failures]))
        self.monitor.watchdog.in_collective()
        dist.all_reduce_sum(totals)
        loss, correct, count = totals.tolist()
        wrong = tuple(torch.cat(parts)[:keep_failures] for parts in zip(*failures, strict=True)) if failures else ()
        return loss / count, correct / count, wrong

    @contextlib.contextmanager
    def profiled(self):
        """log.profile: trace steps 5-9 of this epoch (after warm-up) for TensorBoard or Perfetto; on CUDA also
        NVTX ranges for Nsight Systems."""
        if not self.cfg.log.profile:
            yield
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.rt.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace = torch.profiler.tensorboard_trace_handler(str(self.run_dir / "profile"),
                                                         worker_name=f"rank{self.rt.rank}")
        nvtx = torch.autograd.profiler.emit_nvtx() if self.rt.device.type == "cuda" else contextlib.nullcontext()
        steps = torch.profiler.schedule(wait=2, warmup=2, active=5, repeat=1)
        with nvtx, torch.profiler.profile(activities=activities, on_trace_ready=trace, schedule=steps) as prof:
            self.monitor.profiler = prof
            try:
                yield
            finally:
                self.monitor.profiler = None

    def rank_times(self) -> dict[str, Any]:
        """This epoch's step timing across ranks (one small gather), with stragglers named; {} when off."""
        if not self.cfg.log.timing:
            return {}
        self.monitor.between_steps("gathering step times", "rank_times")
        self.monitor.watchdog.in_collective()
        per_rank = dist.all_gather_object(self.monitor.timer.phase_seconds())
        return timing.summarize(per_rank, list(self.rt.hosts), self.cfg.log.straggler_margin)

    def save_checkpoint(self, pos: Position, wall_time: float, sums: torch.Tensor | None = None) -> Path:
        """Rank 0 writes; every rank contributes its RNG state (and partial sums when mid-epoch)."""
        watchdog = self.monitor.watchdog
        self.monitor.between_steps("writing a checkpoint", "checkpoint")
        watchdog.in_collective()
        state = {
            "format": checkpoint.FORMAT, "epochs_done": pos.epochs_done, "step": pos.step,
            "train_time": pos.train_time, "wall_time": wall_time, "train_samples": pos.train_samples,
            "segments": pos.segments, "world_size": self.rt.world_size, "batch_size": self.cfg.train.batch_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": dist.all_gather_object(_rng_state(self.rt.device)),
            "partial": dist.all_gather_object(sums.tolist()) if sums is not None else None,
            "config": self.cfg.to_dict(),
            "versions": {"torch": str(torch.__version__), "torchvision": _version("torchvision")},
        }
        filename = checkpoint.name(pos.epochs_done, pos.step)

        def write() -> Path:  # the others wait in on_main's broadcast meanwhile
            watchdog.doing("writing a checkpoint")
            path = checkpoint.save(state, self.run_dir, filename, self.cfg.train.keep_checkpoints)
            watchdog.in_collective()
            return path

        return dist.on_main(write)

    def restore(self, path: Path) -> tuple[Position, list[str]]:
        """Load a checkpoint; continue with this command's settings from its position, and say what differs.

        The optimizer keeps its state (momenta) but takes this command's hyperparameters; the schedule is
        built for this command's epochs and layout and stepped to the checkpoint's position, so a changed
        number of epochs, schedule or learning rate continues from there, and an unchanged one is exact.
        """
        state = checkpoint.load(path)  # on every rank: run directories are on a shared file system
        self.model.load_state_dict(state["model"])
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, mine in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(mine)
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        pos = Position(state["epochs_done"], state["step"], state["train_time"], state.get("wall_time", 0.0),
                       state["train_samples"], state.get("segments", 1) + 1)
        notes = []
        old_world, old_batch = state["world_size"], state["batch_size"]
        if (old_world, old_batch) == (self.rt.world_size, self.cfg.train.batch_size):
            _set_rng_state(state["rng"][self.rt.rank], self.rt.device)
            pos.partial = state["partial"][self.rt.rank] if state["partial"] else None
        else:  # another layout: shards and steps per epoch differ, so continue from the epoch boundary
            torch.manual_seed(self.cfg.train.seed + self.rt.rank + 7919 * (pos.epochs_done + 1))
            notes.append(f"world size {old_world} -> {self.rt.world_size}, batch per rank {old_batch} -> "
                         f"{self.cfg.train.batch_size}: global batch {old_world * old_batch} -> "
                         f"{self.rt.world_size * self.cfg.train.batch_size}, lr {self.lr:g}"
                         + (f"; epoch {pos.epochs_done + 1} restarts from its first step" if pos.step else ""))
            pos.step = 0
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": replaying, not training
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(pos.epochs_done * self.steps_per_epoch + pos.step):
                self.scheduler.step()
        return pos, notes


def _version(package: str) -> str:
    """From the package's metadata: importing torchvision for its version cost every process 1.5 s of start-up
    (it imports torch._dynamo)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"

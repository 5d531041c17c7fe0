"""One run's model, data, optimizer and schedule, and the training step: plain, as in pytorch/examples.

Everything else a step reports (phase timing, the hang watchdog, the profiler, the tests' fault hooks) goes
through one StepMonitor (monitor.py); when to checkpoint and stop is the RunController's (controller.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from hpc_mnist.core import models, optim, precision
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import DeviceData, Subset, make_sampler, prepare
from hpc_mnist.errors import EXIT_DIVERGED, UserError
from hpc_mnist.runtime import dist, hang, timing
from hpc_mnist.training.meter import EpochMeter, sum_dtype
from hpc_mnist.training.monitor import StepMonitor


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
        self._last_output: torch.Tensor | None = None

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

    def order(self, epoch: int) -> list[torch.Tensor]:
        """This rank's batches of sample positions for the epoch: its shard, shuffled anew each epoch."""
        self.sampler.set_epoch(epoch)
        self.monitor.epoch = epoch
        return self.data.train_batches(self.sampler, self.cfg.train.batch_size)

    def batches(self, order: list[torch.Tensor], start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, x, y) for order[start:] (a stopped epoch resumes at its step), each step's clock started."""
        self.model.train()
        for step in range(start + 1, len(order) + 1):
            self.monitor.begin(step)
            x, y = self.batch(self.data.train, order[step - 1])
            self.monitor.mark("data")
            yield step, x, y

    def train_on(self, order: list[torch.Tensor]) -> EpochMeter:
        """The step over these batches with the epoch's figures and no checks between steps: what the
        benchmarks time (a run's loop is train.run's, with the RunController between steps)."""
        meter = EpochMeter(self.rt.device)
        for step, x, y in self.batches(order):
            meter.add(step, *self.step(x, y), y)
        return meter

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step, as in pytorch/examples; returns the (detached) loss and logits.

        The step's output stays referenced until the next step, as a loop's local variable does: freed at once,
        its graph's large buffers went back to the OS and were mapped again every step (glibc), and the CPU CNN
        step ran 9% slower (hpc-mnist bench --models cnn, 2026-12-06)."""
        with precision.autocast(self.amp, self.rt.device):
            logits = self.ddp_model(x)
            loss = self.loss(logits, y)
        loss = self.monitor.forward_done(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP all-reduces the gradients here
        self.monitor.backward_done()
        self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.monitor.end()
        self._last_output = logits  # kept until the next step (the docstring says why)
        return loss.detach(), logits.detach()

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

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The optimizer keeps its state (momenta) but takes this command's hyperparameters."""
        self.model.load_state_dict(state["model"])
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, mine in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(mine)
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

"""Train an MNIST classifier on one process or many (torchrun, mpiexec, srun), with metrics from rank 0.

    python -m hpc_mnist.train --config configs/cnn.yaml train.epochs=3
    torchrun --standalone --nproc_per_node=4 -m hpc_mnist.train --config configs/cnn.yaml

Exit codes: 0 completed; 2 a usage or input error (one line says which); 3 the loss became
non-finite; 75 stopped early by a signal or train.time_limit, with a checkpoint written (run the same
command again to continue); 128+N a second signal N ended the run at once.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpc_mnist import checkpoint, config, dist, models, optim, precision
from hpc_mnist.config import Config
from hpc_mnist.data import DeviceData, Subset, make_sampler, prepare
from hpc_mnist.errors import UserError
from hpc_mnist.logger import RunLogger, make_run_dir
from hpc_mnist.signals import EXIT_PREEMPTED, StopRequest

EXIT_DIVERGED = 3
CHECK_EVERY = 16  # steps between the one small all-reduce that agrees on stop requests and non-finite losses


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, subset: Subset, cfg: Config, amp: str,
             keep_failures: int = 0) -> tuple[float, float, tuple[torch.Tensor, ...]]:
    """Global (loss, accuracy) over `subset`, each sample counted once across all ranks.

    Also returns (positions, predictions) of up to `keep_failures` of this rank's misclassified samples.
    """
    model.eval()
    positions = DeviceData.eval_positions(subset, *dist.rank_and_size())
    totals = torch.zeros(3, dtype=sum_dtype(data.device), device=data.device)  # loss sum, correct, count
    failures = []
    channels_last = models.uses_channels_last(cfg.model)
    for chunk in positions.split(cfg.train.eval_batch_size):
        x, y = data.batch(subset, chunk)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(amp, data.device):
            logits = model(x).float()
        predicted = logits.argmax(dim=1)
        totals[0] += F.cross_entropy(logits, y, reduction="sum")
        totals[1] += (predicted == y).sum()
        totals[2] += len(y)
        if keep_failures:
            miss = predicted != y
            failures.append((chunk.to(miss.device)[miss][:keep_failures], predicted[miss][:keep_failures]))
    dist.all_reduce_sum(totals)
    loss, correct, count = totals.tolist()
    wrong = tuple(torch.cat(parts)[:keep_failures] for parts in zip(*failures, strict=True)) if failures else ()
    return loss / count, correct / count, wrong


def train_epoch(model: nn.Module, data: DeviceData, batches: list[torch.Tensor], cfg: Config, amp: str,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                scaler: torch.amp.GradScaler, *, epoch: int, start_step: int, sums: torch.Tensor,
                stop: StopRequest, update) -> int | None:
    """Train on batches[start_step:], adding this rank's loss sum, correct count and samples to `sums`.

    Returns the step at which all ranks agreed to stop, or None once the epoch is complete.
    """
    model.train()
    channels_last = models.uses_channels_last(cfg.model)
    first_bad = torch.zeros((), dtype=torch.long, device=data.device)  # first step with a non-finite loss
    lrs: dict[int, float] = {}
    seen, started = 0, time.perf_counter()
    for step in range(start_step + 1, len(batches) + 1):
        x, y = data.batch(data.train, batches[step - 1])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lrs[step] = scheduler.get_last_lr()[0]
        with precision.autocast(amp, data.device):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skips the update when fp16 gradients overflowed
        scaler.update()
        scheduler.step()

        loss = loss.detach()
        sums[0] += loss * len(y)
        sums[1] += (logits.detach().argmax(dim=1) == y).sum()
        sums[2] += len(y)
        seen += len(y)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        if step % CHECK_EVERY == 0 or step == len(batches):
            flags = torch.stack([first_bad, torch.tensor(stop.signum or 0, device=data.device)])
            bad, stop.agreed = dist.any_rank(flags).tolist()
            if bad:
                raise UserError(f"the loss became non-finite in epoch {epoch} at step {bad} (learning rate "
                                f"{lrs[bad]:.3g}): lower optim.lr, or use train.precision=fp32 or bf16",
                                EXIT_DIVERGED, on_all_ranks=True)
            lrs.clear()
            update(step, loss.item(), seen / (time.perf_counter() - started))
            if stop.agreed:
                return step
    return None


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    accel = getattr(torch, device.type) if device.type in ("cuda", "xpu") else None
    return {"cpu": torch.get_rng_state(), "device": accel.get_rng_state(device) if accel else None}


def _set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["device"] is not None and device.type in ("cuda", "xpu"):
        getattr(torch, device.type).set_rng_state(state["device"], device)


@dataclass
class Position:
    """Where training stands: whole epochs done, steps into the next epoch, and running totals."""

    epochs_done: int = 0
    step: int = 0
    train_time: float = 0.0
    train_samples: int = 0
    partial: list[float] | None = None  # this rank's sums for the interrupted epoch
    notes: list[str] = field(default_factory=list)


class Trainer:
    """The objects one run needs, built once; `run` below drives them."""

    def __init__(self, cfg: Config, rt: dist.Runtime, run_dir: Path):
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        dist.on_main(lambda: prepare(cfg.data))  # download on rank 0 while the others wait
        self.data = DeviceData(cfg.data, rt.device)
        self.sampler = make_sampler(self.data.train, rt.rank, rt.world_size, cfg.train.seed)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = models.build(cfg.model).to(rt.device)
        if models.uses_channels_last(cfg.model):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model = self.model
        if rt.world_size > 1:
            device_ids = None if rt.device.index is None else [rt.device.index]
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, gradient_as_bucket_view=True)
        torch.manual_seed(cfg.train.seed + rt.rank)  # distinct dropout masks per rank

        self.amp = precision.resolve(cfg.train.precision, rt.device, cfg.model.name)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.lr = optim.learning_rate(cfg.optim, rt.world_size)
        self.optimizer = optim.build_optimizer(cfg.optim, self.model, self.lr)
        self.scheduler = optim.build_scheduler(cfg.optim, self.optimizer, self.lr, self.steps_per_epoch,
                                               cfg.train.epochs)
        self.scaler = precision.grad_scaler(self.amp, rt.device)

    def save_checkpoint(self, pos: Position, sums: torch.Tensor | None = None) -> Path:
        """Rank 0 writes; every rank contributes its RNG state (and partial sums when mid-epoch)."""
        state = {
            "format": checkpoint.FORMAT, "epochs_done": pos.epochs_done, "step": pos.step,
            "train_time": pos.train_time, "train_samples": pos.train_samples,
            "world_size": self.rt.world_size, "batch_size": self.cfg.train.batch_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": dist.all_gather_object(_rng_state(self.rt.device)),
            "partial": dist.all_gather_object(sums.tolist()) if sums is not None else None,
            "config": self.cfg.to_dict(),
            "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
        }
        filename = checkpoint.name(pos.epochs_done, pos.step)
        return dist.on_main(lambda: checkpoint.save(state, self.run_dir, filename, self.cfg.train.keep_checkpoints))

    def restore(self, path: Path) -> Position:
        """Load a checkpoint into the model, optimizer, schedule, scaler and RNG; say what changed."""
        state = checkpoint.load(path)
        old, new = state["config"], self.cfg.to_dict()
        for section, keys in (("model", old["model"]), ("optim", {"name": old["optim"]["name"]})):
            changed = [f"{section}.{k}: {v!r} -> {new[section][k]!r}" for k, v in keys.items() if new[section][k] != v]
            if changed:
                raise UserError(f"checkpoint {path} does not fit this configuration ({'; '.join(changed)}): "
                                "start a new run directory (log.name=...) or set train.resume=never")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        pos = Position(state["epochs_done"], state["step"], state["train_time"], state["train_samples"])
        pos.notes.append(f"resuming from {path.name}: {pos.epochs_done} epoch(s) done"
                         + (f", step {pos.step} of epoch {pos.epochs_done + 1}" if pos.step else ""))
        old_world, old_batch = state["world_size"], state["batch_size"]
        if (old_world, old_batch) == (self.rt.world_size, self.cfg.train.batch_size):
            self.scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"][self.rt.rank], self.rt.device)
            pos.partial = state["partial"][self.rt.rank] if state["partial"] else None
            return pos
        # Another layout: shards and steps per epoch differ, so continue from the epoch boundary.
        self.scheduler.last_epoch = pos.epochs_done * self.steps_per_epoch
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        torch.manual_seed(self.cfg.train.seed + self.rt.rank + 7919 * (pos.epochs_done + 1))
        pos.notes.append(f"world size {old_world} -> {self.rt.world_size}, batch per rank {old_batch} -> "
                         f"{self.cfg.train.batch_size}: global batch {old_world * old_batch} -> "
                         f"{self.rt.world_size * self.cfg.train.batch_size}"
                         + (f"; epoch {pos.epochs_done + 1} restarts from its first step" if pos.step else ""))
        pos.step = 0
        return pos


@dataclass
class Result:
    summary: dict[str, Any]  # as written to summary.json
    model: nn.Module  # the trained model, unwrapped from DDP
    exit_code: int = 0


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = str(value) if isinstance(value, list) else value
    return flat


def run(cfg: Config) -> Result:
    """Train (resuming if a checkpoint says so) and evaluate; callable from a notebook or a script."""
    started = time.perf_counter()
    rt = dist.setup(cfg.dist, cfg.train.device)
    run_dir = dist.on_main(lambda: make_run_dir(cfg))
    resume_from, warnings = dist.on_main(lambda: checkpoint.find(cfg.train.resume, run_dir))
    t = Trainer(cfg, rt, run_dir)
    pos = t.restore(resume_from) if resume_from else Position()
    log = RunLogger(cfg.log, run_dir, enabled=rt.is_main, epochs_done=pos.epochs_done)
    log.start({
        "run directory": run_dir,
        "ranks": f"{rt.world_size} on {rt.num_nodes} node(s), launcher {rt.launcher}",
        "device": f"{rt.device} ({rt.threads} CPU thread(s) per rank)",
        "backend / precision": f"{rt.backend or 'none'} / {t.amp}",
        "model": f"{cfg.model.name}, {models.parameter_count(t.model):,} parameters",
        "data": f"{cfg.data.name}: {len(t.data.train):,} train / {len(t.data.val):,} val / {len(t.data.test):,} test",
        "batch": f"{cfg.train.batch_size} per rank, {cfg.train.batch_size * rt.world_size} global, "
                 f"{t.steps_per_epoch} steps/epoch",
        "optimizer": f"{cfg.optim.name} lr {t.lr:g}, schedule {cfg.optim.scheduler}",
    }, notes=warnings + pos.notes)

    summary = {"model": cfg.model.name, "dataset": cfg.data.name, "world_size": rt.world_size,
               "num_nodes": rt.num_nodes, "launcher": rt.launcher, "device": str(rt.device), "backend": rt.backend,
               "precision": t.amp, "threads_per_rank": rt.threads, "batch_per_rank": cfg.train.batch_size,
               "global_batch": cfg.train.batch_size * rt.world_size, "run_dir": str(run_dir)}
    val_loss = val_acc = float("nan")
    longest_epoch = 0.0
    with StopRequest() as stop:
        for epoch in range(pos.epochs_done + 1, cfg.train.epochs + 1):
            t.sampler.set_epoch(epoch)
            epoch_start = time.perf_counter()
            batches = t.data.train_batches(t.sampler, cfg.train.batch_size)
            sums = torch.tensor(pos.partial or [0.0, 0.0, 0.0], dtype=sum_dtype(rt.device), device=rt.device)
            earlier = int(sums[2].item())  # samples this rank did before an interruption
            lr_now = t.scheduler.get_last_lr()[0]
            with log.progress(epoch, cfg.train.epochs, len(batches)) as update:
                stopped_at = train_epoch(t.ddp_model, t.data, batches, cfg, t.amp, t.optimizer, t.scheduler,
                                         t.scaler, epoch=epoch, start_step=pos.step, sums=sums, stop=stop,
                                         update=update)
            seconds = time.perf_counter() - epoch_start
            pos.train_time += seconds
            if stopped_at is not None:
                pos.step = stopped_at
                path = t.save_checkpoint(pos, sums)
                return _stopped(log, summary, pos, path, stop.reason(), t.model)

            loss_sum, correct, samples = dist.all_reduce_sum(sums).tolist()
            new_samples = samples - earlier * rt.world_size
            pos = Position(epoch, 0, pos.train_time, pos.train_samples + int(new_samples))
            val_loss, val_acc, _ = evaluate(t.model, t.data, t.data.val, cfg, t.amp)
            every = cfg.train.checkpoint_every
            checkpointed = bool(every and epoch % every == 0) or epoch == cfg.train.epochs
            if checkpointed:
                path = t.save_checkpoint(pos)
            longest_epoch = max(longest_epoch, time.perf_counter() - epoch_start)
            log.epoch({"epoch": epoch, "train_loss": loss_sum / samples, "train_acc": correct / samples,
                       "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now,
                       "epoch_time_s": time.perf_counter() - epoch_start, "train_time_s": seconds,
                       "samples_per_s": new_samples / seconds})
            limit = cfg.train.time_limit  # the same on every rank, so all take part in the vote or none
            out_of_time = time.perf_counter() - started + 1.1 * longest_epoch > limit
            if limit and epoch < cfg.train.epochs and dist.any_rank(
                    torch.tensor([int(out_of_time)], device=rt.device)).item():
                if not checkpointed:
                    path = t.save_checkpoint(pos)
                return _stopped(log, summary, pos, path, "time limit", t.model)

    if math.isnan(val_acc):  # resumed after the last epoch: nothing trained in this process
        val_loss, val_acc, _ = evaluate(t.model, t.data, t.data.val, cfg, t.amp)
    test_loss, test_acc, wrong = evaluate(t.model, t.data, t.data.test, cfg, t.amp, keep_failures=cfg.log.failures)
    dist.on_main(lambda: torch.save(t.model.state_dict(), run_dir / "model.pt"))
    summary.update({
        "status": "completed", "epochs": cfg.train.epochs, "val_loss": val_loss, "val_acc": val_acc,
        "test_loss": test_loss, "test_acc": test_acc, "wall_time_s": time.perf_counter() - started,
        "train_time_s": pos.train_time, "samples_per_s": pos.train_samples / pos.train_time if pos.train_time else 0.0,
    })
    failures = None
    if wrong:
        rows = t.data.test.index[wrong[0].to(t.data.test.index.device)]
        failures = (t.data.test.images[rows], wrong[1], t.data.test.labels[rows])
    log.finish(summary, _flat_hparams(cfg), failures)
    return Result(summary, t.model)


def _stopped(log: RunLogger, summary: dict[str, Any], pos: Position, path: Path, reason: str,
             model: nn.Module) -> Result:
    summary.update({"status": "preempted", "reason": reason, "epochs_done": pos.epochs_done,
                    "step": pos.step, "checkpoint": str(path), "train_time_s": pos.train_time})
    log.stopped(summary)
    return Result(summary, model, EXIT_PREEMPTED)


def main(argv: list[str] | None = None) -> int:
    args = config.parser("python -m hpc_mnist.train", __doc__.split("\n\n")[0], __doc__.split("\n\n")[-1]) \
        .parse_args(argv)
    try:
        try:
            cfg = config.build(args.config, args.overrides)
        except UserError as e:
            e.on_all_ranks = True  # every rank read the same input: say it once
            raise
        return run(cfg).exit_code
    except UserError as e:
        dist.report_error(e)
        return e.exit_code
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""Train an MNIST classifier on one process or many (torchrun), with metrics from rank 0.

    python -m hpc_mnist.train --config configs/cnn.yaml train.epochs=3
    torchrun --standalone --nproc_per_node=4 -m hpc_mnist.train --config configs/cnn.yaml
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpc_mnist import config, dist, models, optim, precision
from hpc_mnist.config import Config
from hpc_mnist.data import DeviceData, Subset, make_sampler, prepare
from hpc_mnist.errors import UserError
from hpc_mnist.logger import RunLogger, make_run_dir


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, subset: Subset, cfg: Config, amp: str,
             keep_failures: int = 0) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor]]:
    """Global (loss, accuracy) over `subset`, each sample counted once across all ranks.

    Also returns (positions, predictions) of up to `keep_failures` of this rank's misclassified samples.
    """
    model.eval()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if torch.distributed.is_initialized() else (0, 1)
    positions = DeviceData.eval_positions(subset, rank, world)
    totals = torch.zeros(3, dtype=torch.float64, device=data.device)  # loss sum, correct, count
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
                scaler: torch.amp.GradScaler, update) -> tuple[float, float, int]:
    """One pass over this rank's batches; returns global (mean loss, accuracy, samples)."""
    model.train()
    channels_last = models.uses_channels_last(cfg.model)
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    report_every = max(1, len(batches) // 50)
    for step, positions in enumerate(batches, start=1):
        x, y = data.batch(data.train, positions)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(amp, data.device):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        if step % report_every == 0 or step == len(batches):
            update(step, loss.item(), seen / (time.perf_counter() - start))
    totals = dist.all_reduce_sum(torch.stack([loss_sum.double(), correct.double(),
                                              torch.tensor(seen, dtype=torch.float64, device=data.device)]))
    loss_total, correct_total, samples = totals.tolist()
    return loss_total / samples, correct_total / samples, int(samples)


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = str(value) if isinstance(value, list) else value
    return flat


@dataclass
class Result:
    summary: dict[str, Any]  # as written to summary.json
    model: nn.Module  # the trained model, unwrapped from DDP


def run(cfg: Config) -> Result:
    """Train and evaluate (callable from a notebook or a script as well as from `main`)."""
    started = time.perf_counter()
    rt = dist.setup(cfg.dist, cfg.train.device)
    run_dir = dist.on_main(lambda: make_run_dir(cfg))
    log = RunLogger(cfg.log, run_dir, enabled=rt.is_main)

    dist.on_main(lambda: prepare(cfg.data))  # download on rank 0 while the others wait
    data = DeviceData(cfg.data, rt.device)
    sampler = make_sampler(data.train, rt.rank, rt.world_size, cfg.train.seed)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = models.build(cfg.model).to(rt.device)
    if models.uses_channels_last(cfg.model):
        model = model.to(memory_format=torch.channels_last)
    ddp_model = model
    if rt.world_size > 1:
        device_ids = None if rt.device.index is None else [rt.device.index]
        ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    torch.manual_seed(cfg.train.seed + rt.rank)  # distinct dropout masks per rank

    amp = precision.resolve(cfg.train.precision, rt.device, cfg.model.name)
    steps_per_epoch = math.ceil(len(sampler) / cfg.train.batch_size)
    lr = optim.learning_rate(cfg.optim, rt.world_size)
    optimizer = optim.build_optimizer(cfg.optim, model, lr)
    scheduler = optim.build_scheduler(cfg.optim, optimizer, lr, steps_per_epoch, cfg.train.epochs)
    scaler = precision.grad_scaler(amp, rt.device)

    log.start({
        "run directory": run_dir,
        "ranks": f"{rt.world_size} on {rt.num_nodes} node(s), launcher {rt.launcher}",
        "device": f"{rt.device} ({rt.threads} CPU thread(s) per rank)",
        "backend / precision": f"{rt.backend or 'none'} / {amp}",
        "model": f"{cfg.model.name}, {models.parameter_count(model):,} parameters",
        "data": f"{cfg.data.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test",
        "batch": f"{cfg.train.batch_size} per rank, {cfg.train.batch_size * rt.world_size} global, "
                 f"{steps_per_epoch} steps/epoch",
        "optimizer": f"{cfg.optim.name} lr {lr:g}, schedule {cfg.optim.scheduler}",
    })

    train_time, train_samples = 0.0, 0
    val_loss = val_acc = float("nan")
    for epoch in range(1, cfg.train.epochs + 1):
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        batches = data.train_batches(sampler, cfg.train.batch_size)
        with log.progress(epoch, cfg.train.epochs, len(batches)) as update:
            lr_now = scheduler.get_last_lr()[0]
            train_loss, train_acc, samples = train_epoch(ddp_model, data, batches, cfg, amp, optimizer,
                                                         scheduler, scaler, update)
        seconds = time.perf_counter() - epoch_start
        train_time, train_samples = train_time + seconds, train_samples + samples
        val_loss, val_acc, _ = evaluate(model, data, data.val, cfg, amp)
        log.epoch({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": lr_now, "epoch_time_s": time.perf_counter() - epoch_start,
                   "train_time_s": seconds, "samples_per_s": samples / seconds})

    test_loss, test_acc, wrong = evaluate(model, data, data.test, cfg, amp, keep_failures=cfg.log.failures)
    dist.on_main(lambda: torch.save(model.state_dict(), run_dir / "model.pt"))
    summary = {
        "status": "completed", "epochs": cfg.train.epochs, "model": cfg.model.name, "dataset": cfg.data.name,
        "world_size": rt.world_size, "num_nodes": rt.num_nodes, "launcher": rt.launcher, "device": str(rt.device),
        "backend": rt.backend, "precision": amp, "threads_per_rank": rt.threads,
        "batch_per_rank": cfg.train.batch_size, "global_batch": cfg.train.batch_size * rt.world_size,
        "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
        "wall_time_s": time.perf_counter() - started, "train_time_s": train_time,
        "samples_per_s": train_samples / train_time, "run_dir": str(run_dir),
    }
    failures = None
    if wrong:
        rows = data.test.index[wrong[0].to(data.test.index.device)]
        failures = (data.test.images[rows], wrong[1], data.test.labels[rows])
    log.finish(summary, _flat_hparams(cfg), failures)
    return Result(summary, model)


def main(argv: list[str] | None = None) -> int:
    args = config.parser("python -m hpc_mnist.train", __doc__.split("\n\n")[0]).parse_args(argv)
    try:
        try:
            cfg = config.build(args.config, args.overrides)
        except UserError as e:
            e.on_all_ranks = True  # every rank read the same input: say it once
            raise
        run(cfg)
        return 0
    except UserError as e:
        dist.report_error(e)
        return e.exit_code
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())

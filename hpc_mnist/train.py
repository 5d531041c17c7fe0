"""Train an MNIST classifier on one process or many (torchrun, mpiexec, srun), with metrics from rank 0.

    python -m hpc_mnist.train --config configs/cnn.yaml train.epochs=3
    torchrun --standalone --nproc_per_node=4 -m hpc_mnist.train --config configs/cnn.yaml

Run the same command again to continue a stopped run. Exit codes: 0 completed (or finished already);
2 a usage or input error (one line says which); 3 the loss became non-finite; 4 a collective timed out (a rank
hung; its stack is in the run directory); 75 stopped early with a
checkpoint (a signal or the deadline; status.json in the run directory says which); 130 a second
Ctrl-C stopped it at once. torchrun reports any of these but 0 as 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpc_mnist import checkpoint, config, deadline, dist, hang, models, optim, precision, rundir, timing
from hpc_mnist.config import Config
from hpc_mnist.data import DeviceData, Subset, check_root, make_sampler, prepare
from hpc_mnist.errors import UserError
from hpc_mnist.logger import RunLogger
from hpc_mnist.signals import EXIT_STOPPED, StopRequest

EXIT_DIVERGED = 3
CHECK_EVERY = 16  # steps between the one small all-reduce that agrees on stops and non-finite losses

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


class Trainer:
    """One run's model, data, optimizer and schedule, built once; it trains and evaluates them."""

    def __init__(self, cfg: Config, rt: dist.Runtime, run_dir: Path):
        self.cfg, self.rt, self.run_dir = cfg, rt, run_dir
        dist.on_main(lambda: prepare(cfg.data))  # download on rank 0 while the others wait
        self.data = DeviceData(cfg.data, rt.device)
        self.sampler = make_sampler(self.data.train, rt.rank, rt.world_size, cfg.train.seed)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = models.build(cfg.model).to(rt.device)
        self.channels_last = models.uses_channels_last(cfg.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model = self.model
        self.timer = timing.StepTimer(rt.device, cfg.log.timing)
        self.watchdog = hang.Watchdog(run_dir, rt.rank, after=cfg.dist.timeout / 2)
        self.profiler: torch.profiler.profile | None = None
        if rt.world_size > 1:
            device_ids = None if rt.device.index is None else [rt.device.index]
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, gradient_as_bucket_view=True)
            self.ddp_model.register_comm_hook(None, timing.timed_allreduce_hook(self.timer, self.watchdog))
            self._settle_buckets()
        torch.manual_seed(cfg.train.seed + rt.rank)  # distinct dropout masks per rank

        self.amp = precision.resolve(cfg.train.precision, rt.device, cfg.model.name)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.lr = optim.learning_rate(cfg.optim, rt.world_size)
        self.optimizer = optim.build_optimizer(cfg.optim, self.model, self.lr)
        self.scheduler = optim.build_scheduler(cfg.optim, self.optimizer, self.lr, self.steps_per_epoch,
                                               cfg.train.epochs)
        self.scaler = precision.grad_scaler(self.amp, rt.device)

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

    def train_steps(self, batches: list[torch.Tensor], sums: torch.Tensor, *, stop: StopRequest | None = None,
                    stop_at: deadline.Deadline | None = None, epoch: int = 1, start_step: int = 0,
                    update=None) -> tuple[int, str | None]:
        """Train on batches[start_step:], adding this rank's loss sum, correct count and samples to `sums`.

        Every CHECK_EVERY steps the ranks agree on stop requests (a signal to any rank, the deadline) and on
        non-finite losses. Returns (the last step done, why all ranks stopped there or None).
        """
        self.model.train()
        first_bad = torch.zeros((), dtype=torch.long, device=self.rt.device)  # first step with a non-finite loss
        lrs: dict[int, float] = {}
        seen, started = 0, time.perf_counter()
        step = start_step
        timer, watchdog = self.timer, self.watchdog
        for step in range(start_step + 1, len(batches) + 1):
            watchdog.beat(epoch, step)
            hang.maybe_stall(self.rt.rank, step)
            timer.start()
            x, y = self.data.batch(self.data.train, batches[step - 1])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            timer.mark("data")
            lrs[step] = self.scheduler.get_last_lr()[0]
            with precision.autocast(self.amp, self.rt.device):
                logits = self.ddp_model(x)
                loss = F.cross_entropy(logits, y)
            timer.mark("forward")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # DDP all-reduces the gradients here
            watchdog.beat(epoch, step)
            timer.mark("wait")  # backward compute ended at the last gradient bucket; the rest waited on peers
            self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
            self.scaler.update()
            self.scheduler.step()
            timer.mark("optimizer")
            if self.profiler is not None:
                self.profiler.step()

            loss = loss.detach()
            sums[0] += loss * len(y)
            sums[1] += (logits.detach().argmax(dim=1) == y).sum()
            sums[2] += len(y)
            seen += len(y)
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
            if step % CHECK_EVERY == 0 or step == len(batches):
                watchdog.in_collective()
                signum = (stop.signum or 0) if stop else 0
                out_of_time = int(stop_at.reached()) if stop_at else 0
                flags = torch.stack([first_bad, torch.tensor(signum, device=self.rt.device),
                                     torch.tensor(out_of_time, device=self.rt.device)])
                bad, agreed_signal, agreed_deadline = dist.any_rank(flags).tolist()
                if bad:
                    raise UserError(f"the loss became non-finite in epoch {epoch} at step {bad} (learning rate "
                                    f"{lrs[bad]:.3g}): lower optim.lr, or use train.precision=fp32 or bf16",
                                    EXIT_DIVERGED, on_all_ranks=True)
                lrs.clear()
                if update:
                    update(step, loss.item(), seen / (time.perf_counter() - started))
                if agreed_signal and stop:
                    stop.agreed = agreed_signal
                    return step, "signal"
                if agreed_deadline:
                    return step, "deadline"
        return step, None

    @torch.no_grad()
    def evaluate(self, subset: Subset, keep_failures: int = 0) -> tuple[float, float, tuple[torch.Tensor, ...]]:
        """Global (loss, accuracy) over `subset`, each sample counted once across all ranks.

        Also returns (positions, predictions) of up to `keep_failures` of this rank's misclassified samples.
        """
        self.model.eval()
        positions = DeviceData.eval_positions(subset, *dist.rank_and_size())
        totals = torch.zeros(3, dtype=sum_dtype(self.rt.device), device=self.rt.device)  # loss, correct, count
        failures = []
        for chunk in positions.split(self.cfg.train.eval_batch_size):
            self.watchdog.beat(0, 0)
            x, y = self.data.batch(subset, chunk)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(self.amp, self.rt.device):
                logits = self.model(x).float()
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
            self.profiler = prof
            try:
                yield
            finally:
                self.profiler = None

    def rank_times(self) -> dict[str, Any]:
        """This epoch's step timing across ranks (one small gather), with stragglers named; {} when off."""
        if not self.cfg.log.timing:
            return {}
        per_rank = dist.all_gather_object(self.timer.phase_seconds())
        return timing.summarize(per_rank, list(self.rt.hosts), self.cfg.log.straggler_margin)

    def save_checkpoint(self, pos: Position, wall_time: float, sums: torch.Tensor | None = None) -> Path:
        """Rank 0 writes; every rank contributes its RNG state (and partial sums when mid-epoch)."""
        state = {
            "format": checkpoint.FORMAT, "epochs_done": pos.epochs_done, "step": pos.step,
            "train_time": pos.train_time, "wall_time": wall_time, "train_samples": pos.train_samples,
            "segments": pos.segments, "world_size": self.rt.world_size, "batch_size": self.cfg.train.batch_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": dist.all_gather_object(_rng_state(self.rt.device)),
            "partial": dist.all_gather_object(sums.tolist()) if sums is not None else None,
            "config": self.cfg.to_dict(),
            "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
        }
        filename = checkpoint.name(pos.epochs_done, pos.step)
        return dist.on_main(lambda: checkpoint.save(state, self.run_dir, filename, self.cfg.train.keep_checkpoints))

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


def run(cfg: Config, config_file: str | None = None) -> Result:
    """Start, continue or report the run this configuration names; callable from a notebook or a script."""
    started, started_unix = time.perf_counter(), time.time()
    with StopRequest() as stop:  # from the start: a scheduler's signal during start-up still stops cleanly
        run_dir = rundir.path_for(cfg, config_file)
        if cfg.log.debug:
            dist.debug_environment(str(run_dir))
        rt = dist.setup(cfg.dist, cfg.train.device)
        dist.on_main(lambda: check_root(cfg.data))  # every setting checked before "nothing to do"
        plan = dist.on_main(lambda: rundir.plan(cfg, run_dir))
        if plan.action == "finished":
            return _finished(cfg, rt, run_dir, plan)
        stop_at = dist.on_main(lambda: deadline.resolve(cfg.train))
        t = Trainer(cfg, rt, run_dir)
        pos, notes = t.restore(plan.checkpoint) if plan.checkpoint else (Position(), [])
        dist.on_main(lambda: rundir.open_run(cfg, run_dir))  # only now: a failed start leaves nothing behind
        log = RunLogger(cfg.log, run_dir, enabled=rt.is_main, epochs_done=pos.epochs_done)
        log.start(plan.notes[0], {
            "run directory": run_dir,
            "ranks": f"{rt.world_size} on {rt.num_nodes} node(s), launcher {rt.launcher}",
            "device": f"{rt.device} ({rt.threads} CPU thread(s) per rank: {rt.threads_why})",
            "backend / precision": f"{rt.backend or 'none'} / {t.amp}",
            "model": f"{cfg.model.name}, {models.parameter_count(t.model):,} parameters",
            "data": f"{cfg.data.name}: {len(t.data.train):,} train / {len(t.data.val):,} val / "
                    f"{len(t.data.test):,} test" + (" (val = the test set)" if t.data.test_as_val else ""),
            "batch": f"{cfg.train.batch_size} per rank, {cfg.train.batch_size * rt.world_size} global, "
                     f"{t.steps_per_epoch} steps/epoch",
            "optimizer": f"{cfg.optim.name} lr {t.lr:g}, schedule {cfg.optim.scheduler}",
            "stop by": stop_at.describe(),
        }, notes=plan.notes[1:] + notes + rundir.name_notes(cfg, config_file) + _oversubscribed(rt))
        summary = {"model": cfg.model.name, "dataset": cfg.data.name, "world_size": rt.world_size,
                   "num_nodes": rt.num_nodes, "launcher": rt.launcher, "device": str(rt.device),
                   "backend": rt.backend, "precision": t.amp, "threads_per_rank": rt.threads,
                   "batch_per_rank": cfg.train.batch_size, "global_batch": cfg.train.batch_size * rt.world_size,
                   "run_dir": str(run_dir)}
        dist.on_main(lambda: rundir.write_status(run_dir, "running", epochs_done=pos.epochs_done, step=pos.step))
        try:
            with t.watchdog:
                return _train(t, log, pos, stop, stop_at, summary, started, started_unix)
        except RuntimeError as e:
            if not hang.is_timeout(e):
                raise
            error = UserError(f"a collective timed out after {cfg.dist.timeout:g} s (dist.timeout): "
                              f"{hang.who_is_behind(rt.world_size, list(rt.hosts))}; every rank's stacks are in "
                              f"{run_dir}/hang-rank*.txt", hang.EXIT_HUNG, on_all_ranks=True)
            if rt.is_main:
                rundir.write_status(run_dir, "failed", reason="error", exit_code=error.exit_code, error=str(error))
            raise error from None
        except BaseException as e:
            code = e.exit_code if isinstance(e, UserError) else 1
            if rt.is_main:
                rundir.write_status(run_dir, "failed", reason="error", exit_code=code, error=str(e)[:500])
            raise


def _train(t: Trainer, log: RunLogger, pos: Position, stop: StopRequest, stop_at: deadline.Deadline,
           summary: dict[str, Any], started: float, started_unix: float) -> Result:
    """The epochs: train, validate, checkpoint, log; stop with a checkpoint when the ranks agree to."""
    cfg, rt = t.cfg, t.rt
    wall = lambda: pos.wall_time + time.perf_counter() - started  # noqa: E731  this run's time over all segments
    val_loss = val_acc = float("nan")
    path: Path | None = None
    stragglers: dict[str, int] = {}  # 'rank R on HOST' -> epochs it was named in
    first_epoch = pos.epochs_done + 1
    for epoch in range(pos.epochs_done + 1, cfg.train.epochs + 1):
        t.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        batches = t.data.train_batches(t.sampler, cfg.train.batch_size)
        sums = torch.tensor(pos.partial or [0.0, 0.0, 0.0], dtype=sum_dtype(rt.device), device=rt.device)
        earlier = int(sums[2].item())  # samples this rank did before an interruption
        lr_now = t.scheduler.get_last_lr()[0]
        profiling = t.profiled() if epoch == first_epoch else contextlib.nullcontext()
        with profiling, log.progress(epoch, cfg.train.epochs, len(batches)) as update:
            step, stopping = t.train_steps(batches, sums, stop=stop, stop_at=stop_at, epoch=epoch,
                                           start_step=pos.step, update=update)
        seconds = time.perf_counter() - epoch_start
        pos.train_time += seconds
        if stopping and step < len(batches):
            pos.step, pos.partial = step, None
            return _stopped(t, log, summary, pos, t.save_checkpoint(pos, wall(), sums), stopping, stop)

        loss_sum, correct, samples = dist.all_reduce_sum(sums).tolist()
        new_samples = samples - earlier * rt.world_size
        pos.epochs_done, pos.step, pos.partial = epoch, 0, None
        pos.train_samples += int(new_samples)
        times = t.rank_times()
        val_loss, val_acc, _ = t.evaluate(t.data.val)
        every = cfg.train.checkpoint_every
        if (every and epoch % every == 0) or epoch == cfg.train.epochs or stopping:
            path = t.save_checkpoint(pos, wall())
        log.epoch({"epoch": epoch, "train_loss": loss_sum / samples, "train_acc": correct / samples,
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now,
                   "epoch_time_s": time.perf_counter() - epoch_start, "train_time_s": seconds,
                   "samples_per_s": new_samples / seconds, **times})
        for s in times.get("stragglers", []):
            stragglers[f"rank {s['rank']} on {s['host']}"] = stragglers.get(f"rank {s['rank']} on {s['host']}", 0) + 1
        if stopping and epoch < cfg.train.epochs:
            return _stopped(t, log, summary, pos, path, stopping, stop)

    if math.isnan(val_acc):  # continued after the last epoch (e.g. stopped in the final evaluation)
        val_loss, val_acc, _ = t.evaluate(t.data.val)
    test_loss, test_acc, wrong = t.evaluate(t.data.test, keep_failures=cfg.log.failures)
    dist.on_main(lambda: torch.save(t.model.state_dict(), t.run_dir / "model.pt"))
    summary.update({
        "status": "completed", "epochs": cfg.train.epochs, "val_loss": val_loss, "val_acc": val_acc,
        "test_loss": test_loss, "test_acc": test_acc, "wall_time_s": wall(), "train_time_s": pos.train_time,
        "segments": pos.segments, "stragglers": stragglers,
        "samples_per_s": pos.train_samples / pos.train_time if pos.train_time else 0.0,
    })
    failures = None
    if wrong:
        rows = t.data.test.index[wrong[0].to(t.data.test.index.device)]
        failures = (t.data.test.images[rows], wrong[1], t.data.test.labels[rows])
    log.finish(summary, _flat_hparams(cfg), failures)
    dist.on_main(lambda: rundir.write_status(t.run_dir, "completed", epochs_done=cfg.train.epochs, step=0,
                                             checkpoint=str(path) if path else None))
    return Result(summary, t.model)


def _stopped(t: Trainer, log: RunLogger, summary: dict[str, Any], pos: Position, path: Path, reason: str,
             stop: StopRequest) -> Result:
    signal = stop.name() if reason == "signal" else None
    summary.update({"status": "stopped", "reason": reason, "signal": signal, "epochs_done": pos.epochs_done,
                    "step": pos.step, "checkpoint": str(path), "train_time_s": pos.train_time,
                    "segments": pos.segments})
    log.stopped(summary)
    dist.on_main(lambda: rundir.write_status(t.run_dir, "stopped", reason=reason, signal=signal,
                                             exit_code=EXIT_STOPPED, epochs_done=pos.epochs_done, step=pos.step,
                                             checkpoint=str(path)))
    return Result(summary, t.model, EXIT_STOPPED)


def _oversubscribed(rt: dist.Runtime) -> list[str]:
    """A note when this node's ranks want more threads than it has cores (4 ranks on 2 cores ran 2.4x slower)."""
    cores = len(os.sched_getaffinity(0)) if rt.local_world_size == 1 else os.cpu_count() or 1
    wanted = rt.local_world_size * rt.threads
    if wanted <= cores:
        return []
    return [f"oversubscribed: {rt.local_world_size} rank(s) x {rt.threads} thread(s) on {cores} CPU core(s); "
            "each rank runs at a fraction of its speed (use fewer ranks per node)"]


def _finished(cfg: Config, rt: dist.Runtime, run_dir: Path, plan: rundir.Plan) -> Result:
    """The run this command names has trained all its epochs: say so and change nothing."""
    status = plan.status or {}
    if rt.is_main:
        print(f"hpc_mnist: run {run_dir} finished already ({cfg.train.epochs} epochs); nothing to do. Choose "
              "another log.name to train anew, or raise train.epochs to continue it.", flush=True)
        for note in plan.notes:
            print(f"note: {note}", flush=True)
    model = models.build(cfg.model)
    if (run_dir / "model.pt").exists():
        model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return Result({**status, "status": "finished already"}, model)


def main(argv: list[str] | None = None) -> int:
    args = config.parser("python -m hpc_mnist.train", __doc__.split("\n\n")[0], __doc__.split("\n\n")[-1]) \
        .parse_args(argv)
    try:
        try:
            cfg = config.build(args.config, args.overrides)
        except UserError as e:
            e.on_all_ranks = True  # every rank read the same input: say it once
            raise
        return run(cfg, args.config).exit_code
    except UserError as e:
        dist.report_error(e)
        return e.exit_code
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())

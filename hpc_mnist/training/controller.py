"""One run's life around the training step: where it stands, when it checkpoints and stops, what it writes.

The Trainer trains and evaluates; the RunController decides everything else. It opens the run directory and
the start panel, keeps `status.json` true (running, stopped, completed, failed), hands out each epoch's steps
and acts between them on what the ranks agreed (a timed checkpoint, a stop, a non-finite loss), writes the
epoch's row and checkpoint on its cadence, and the summary. A stop is carried out here alone: with its
checkpoint, `result` says stopped and the run's frame (`running`) ends. Rank 0 alone writes files; every rank
takes part in checkpoints (RNG states, partial sums).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpc_mnist.core import models
from hpc_mnist.errors import EXIT_HUNG, EXIT_STOPPED, UserError
from hpc_mnist.runtime import cpus, dist, hang, peers, quiet, rundir
from hpc_mnist.runtime import status as status_file
from hpc_mnist.runtime.logger import RunLogger
from hpc_mnist.runtime.stopping import StopAgreement
from hpc_mnist.training.checkpointer import Checkpointer
from hpc_mnist.training.meter import EpochMeter
from hpc_mnist.training.state import Position
from hpc_mnist.training.trainer import Trainer


@dataclass
class Result:
    summary: dict[str, Any]  # as written to summary.json
    model: nn.Module  # the trained model, unwrapped from DDP
    exit_code: int = 0


class _Stopped(Exception):
    """The ranks stopped with a checkpoint: ends the run's frame (RunController.running), which returns."""


class RunController:
    def __init__(self, trainer: Trainer, checkpointer: Checkpointer, pos: Position, agreement: StopAgreement,
                 started: float):
        self.trainer, self.cfg, self.rt, self.run_dir = trainer, trainer.cfg, trainer.rt, trainer.run_dir
        self.checkpointer, self.pos, self.agreement, self.started = checkpointer, pos, agreement, started
        self.first_epoch = pos.epochs_done + 1
        self.val_loss = self.val_acc = float("nan")
        self.checkpoint: Path | None = None
        self.stragglers: dict[str, int] = {}  # 'rank R on HOST' -> epochs it was named in
        self.log: RunLogger  # opened with the run directory (running)
        self.meter: EpochMeter  # this epoch's figures (steps)
        self.stopping: str | None = None  # why the ranks agreed to stop, at this epoch's last check
        self.result: Result | None = None  # how the run ended: set by finish() or a stop
        self._epoch_start = self._epoch_seconds = self._epoch_lr = 0.0
        self._stepped = False  # whether this launch has made a step (status.json's first_step_at)

    # --- the run's frame ---

    @contextlib.contextmanager
    def running(self, notes: list[str]) -> Iterator[RunController]:
        """Open the run directory and the start panel, mark the run running; on the way out of a failure,
        say which rank a timed-out collective waited for and record `failed` in status.json."""
        cfg, rt, trainer = self.cfg, self.rt, self.trainer
        dist.on_main(lambda: rundir.open_run(cfg, self.run_dir, rt.hosts, rt.pids))  # a failed start leaves nothing
        self.log = RunLogger(cfg.log, self.run_dir, enabled=rt.is_main, epochs_done=self.pos.epochs_done)
        self.log.start(notes[0], {
            "run directory": self.run_dir,
            "ranks": f"{rt.world_size} on {rt.num_nodes} node(s), launcher {rt.launcher}",
            "device": f"{rt.device} ({rt.threads} CPU thread(s) per rank: {rt.threads_why})",
            "backend / precision": f"{rt.backend or 'none'} / {trainer.amp}",
            "model": f"{cfg.model.name}, {models.parameter_count(trainer.model):,} parameters",
            "data": f"{cfg.data.name}: {len(trainer.data.train):,} train / {len(trainer.data.val):,} val / "
                    f"{len(trainer.data.test):,} test" + (" (val = the test set)" if trainer.data.test_as_val else ""),
            "batch": f"{cfg.train.batch_size} per rank, {cfg.train.batch_size * rt.world_size} global, "
                     f"{trainer.steps_per_epoch} steps/epoch",
            "optimizer": f"{cfg.optim.name} lr {trainer.lr:g}, schedule {cfg.optim.scheduler}",
            "stop by": self.agreement.deadline.describe() if self.agreement.deadline else "none",
        }, notes=notes[1:] + _oversubscribed(rt))
        self._status("running")
        try:
            with trainer.monitor.watchdog, self._quiet_watch():
                yield self
        except _Stopped:
            pass  # self.result says stopped; the caller returns it
        except RuntimeError as e:
            if peers.is_lost(e) and rt.world_size > 1:
                newest = self.checkpointer.newest()
                error = peers.lost_error(rt, e, self._where(newest),
                                         lambda: status_file.read(self.run_dir / status_file.NAME))
                # A job script requeues after a lost rank (a host that died) only if this segment saved a
                # checkpoint: a rank that dies again at the same place (out of memory) must not loop.
                error.status["requeue"] = self.checkpoint is not None
                self._failed(error, writer=rt.is_main or not error.on_all_ranks, newest=newest)
                raise error from None
            if not hang.is_timeout(e):
                self._failed(e)
                raise
            error = UserError(f"a collective timed out after {cfg.dist.timeout:g} s (dist.timeout): "
                              f"{hang.who_is_behind(rt.world_size, list(rt.hosts))}; every rank's stacks are in "
                              f"{self.run_dir}/hang-rank*.txt", EXIT_HUNG, on_all_ranks=True)
            self._failed(error)
            raise error from None
        except BaseException as e:
            self._failed(e)
            raise
        finally:
            if rt.is_main:
                rundir.close_run(self.run_dir)

    def _quiet_watch(self) -> contextlib.AbstractContextManager:
        """The watch for quiet ranks (quiet.py), where there are peers to watch."""
        rt, after, watchdog = self.rt, self.cfg.dist.quiet_after, self.trainer.monitor.watchdog
        if rt.world_size == 1 or after == 0 or dist.store() is None:
            return contextlib.nullcontext()
        # Stuck ranks only where collectives block inside the call (gloo): NCCL's return at once, and a rank that
        # waits for a stuck peer would block at its next synchronization, as stuck as the peer to the watch.
        stuck = (lambda: watchdog.stuck(quiet.STUCK_FLOOR * after)) if rt.backend == "gloo" else (lambda: None)
        return quiet.QuietWatch(rt.rank, rt.world_size, after, watchdog.describe, self._went_quiet, EXIT_HUNG,
                                holder=quiet.store_rank(), exit=lambda code: dist.end_job(rt.launcher, code),
                                stuck=stuck)

    def _went_quiet(self, verdict: quiet.Verdict) -> None:
        """In the watch's thread, before it ends this process: this rank's stacks; the reporter's one line and
        status.json (failed, rank quiet, who and where, the newest checkpoint, requeue after progress)."""
        rt, stacks = self.rt, f"{self.run_dir}/hang-rank*.txt"
        self.trainer.monitor.watchdog.dump(f"the job ends: {verdict.why}")
        if verdict.reporter == -1:  # cut off from the store: the other side, if any, counts and records
            dist.report_error(UserError(f"{verdict.why}; this rank's stacks are in {stacks}", EXIT_HUNG))
            return
        if verdict.reporter != rt.rank:
            return
        newest = self.checkpointer.newest()
        named = "; ".join(f"rank {r} (pid {rt.pids[r]}) on {rt.hosts[r]} is quiet"
                          + (f" ({verdict.where[r]})" if r in verdict.where else "") for r in verdict.ranks)
        hosts = sorted({rt.hosts[r] for r in verdict.ranks})
        error = UserError(f"{named}: {verdict.why}. Rank {rt.rank} stopped {self._where(newest)}; the stacks of "
                          f"every rank that could still write them are in {stacks}", EXIT_HUNG,
                          status={"reason": "rank quiet", "quiet_ranks": list(verdict.ranks), "quiet_hosts": hosts,
                                  "bad_hosts": hosts, "where": {str(r): w for r, w in verdict.where.items()},
                                  "requeue": self.checkpoint is not None})
        self._failed(error, writer=True, newest=newest)
        dist.report_error(error)

    def epochs(self) -> range:
        return range(self.pos.epochs_done + 1, self.cfg.train.epochs + 1)

    # --- one epoch ---

    def steps(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """This epoch's steps (step, x, y) from where the run stands; between them, what the ranks agreed at
        their check: a timed checkpoint, a stop (after its checkpoint the run ends) or a non-finite loss (the run
        fails). The epoch's clock and progress line, and the profiler on this segment's first epoch."""
        trainer = self.trainer
        self.meter, self.stopping, step = EpochMeter(self.rt.device, self.pos.partial), None, self.pos.step
        self._epoch_start, self._epoch_lr = time.perf_counter(), trainer.scheduler.get_last_lr()[0]
        profiling = trainer.profiled() if epoch == self.first_epoch else contextlib.nullcontext()
        with profiling, self.log.progress(epoch, self.cfg.train.epochs, trainer.steps_per_epoch) as progress:
            for step, x, y in trainer.batches(trainer.order(epoch), start=self.pos.step):
                self.meter.learning_rate(step, trainer.scheduler.get_last_lr()[0])
                yield step, x, y
                if not self._stepped:  # this launch's first step is done: when a relaunch trains again
                    self._stepped = True
                    self._status("running", first_step_at=round(time.time(), 3))
                if self._check(epoch, step, progress):
                    break
        self._epoch_seconds = time.perf_counter() - self._epoch_start
        self.pos.train_time += self._epoch_seconds
        if self.stopping and step < trainer.steps_per_epoch:  # inside the epoch: checkpoint there, partial sums too
            self.pos.step, self.pos.partial = step, None
            self._stop(self.stopping, self.checkpointer.save(self.pos, self.wall(), self.meter.sums))

    def _check(self, epoch: int, step: int, progress: Callable[[int, float, float], None]) -> bool:
        """At the ranks' checks (stopping.py): fail on a non-finite loss, report progress, checkpoint when a timed
        one is due; True when the ranks agreed to stop here."""
        trainer, meter = self.trainer, self.meter
        verdict = self.agreement.at(step, trainer.steps_per_epoch, meter.first_bad, trainer.monitor.watchdog)
        if verdict is None:
            return False
        if verdict.bad_step:
            raise trainer.diverged(epoch, verdict.bad_step, verdict.bad_rank, meter.lrs[verdict.bad_step])
        meter.checked()
        progress(step, meter.loss.item(), meter.rate())
        if verdict.reason:
            self.stopping = verdict.reason
            return True
        if verdict.checkpoint and step < trainer.steps_per_epoch:  # train.checkpoint_minutes, agreed by the ranks
            at = dataclasses.replace(self.pos, step=step, partial=None,
                                     train_time=self.pos.train_time + time.perf_counter() - self._epoch_start)
            self._saved(self.checkpointer.save(at, self.wall(), meter.sums), at)
        return False

    def end_epoch(self, epoch: int) -> None:
        """A whole epoch done: its timings across ranks, validation, global figures, the checkpoint when due,
        its row in the log; then the stop the ranks agreed at its last step, if any."""
        trainer = self.trainer
        times = trainer.rank_times()
        self.val_loss, self.val_acc, _ = trainer.evaluate(trainer.data.val)
        loss_sum, correct, samples = dist.all_reduce_sum(self.meter.sums).tolist()
        new_samples = samples - self.meter.earlier * self.rt.world_size
        self.pos.epochs_done, self.pos.step, self.pos.partial = epoch, 0, None
        self.pos.train_samples += int(new_samples)
        if self.checkpointer.due(epoch, self.stopping):
            self._saved(self.checkpointer.save(self.pos, self.wall()), self.pos)
        seconds = self._epoch_seconds
        self.log.epoch({"epoch": epoch, "train_loss": loss_sum / samples, "train_acc": correct / samples,
                        "val_loss": self.val_loss, "val_acc": self.val_acc, "lr": self._epoch_lr,
                        "epoch_time_s": time.perf_counter() - self._epoch_start, "train_time_s": seconds,
                        "samples_per_s": new_samples / seconds, **times})
        for s in times.get("stragglers", []):
            name = f"rank {s['rank']} on {s['host']}"
            self.stragglers[name] = self.stragglers.get(name, 0) + 1
        if self.stopping and epoch < self.cfg.train.epochs:
            self._stop(self.stopping)

    # --- the end ---

    def _stop(self, reason: str, checkpoint: Path | None = None) -> None:
        """Stopped with a checkpoint (a signal, the deadline): exit 75; the same command continues."""
        checkpoint = checkpoint or self.checkpoint
        signal = self.agreement.stop.name() if reason == "signal" and self.agreement.stop else None
        summary = self._summary("stopped", reason=reason, signal=signal, epochs_done=self.pos.epochs_done,
                                step=self.pos.step, checkpoint=str(checkpoint))
        self.log.stopped(summary)
        self._status("stopped", reason=reason, signal=signal, exit_code=EXIT_STOPPED, checkpoint=str(checkpoint))
        self.result = Result(summary, self.trainer.model, EXIT_STOPPED)
        raise _Stopped

    def finish(self) -> None:
        """All epochs done: the final test evaluation, the model's weights, the summary."""
        trainer, cfg = self.trainer, self.cfg
        if math.isnan(self.val_acc):  # continued after the last epoch (e.g. stopped in the final evaluation)
            self.val_loss, self.val_acc, _ = trainer.evaluate(trainer.data.val)
        test_loss, test_acc, wrong = trainer.evaluate(trainer.data.test, keep_failures=cfg.log.failures)
        dist.on_main(lambda: torch.save(trainer.model.state_dict(), self.run_dir / "model.pt"))
        summary = self._summary("completed", epochs=cfg.train.epochs, val_loss=self.val_loss, val_acc=self.val_acc,
                                test_loss=test_loss, test_acc=test_acc, wall_time_s=self.wall(),
                                stragglers=self.stragglers, samples_per_s=self.pos.train_samples / self.pos.train_time
                                if self.pos.train_time else 0.0)
        failures = None
        if wrong:
            rows = trainer.data.test.index[wrong[0].to(trainer.data.test.index.device)]
            failures = (trainer.data.test.images[rows], wrong[1], trainer.data.test.labels[rows])
        self.log.finish(summary, {k: str(v) if isinstance(v, list) else v for k, v in cfg.flat().items()},
                        failures)
        self._status("completed", checkpoint=str(self.checkpoint) if self.checkpoint else None)
        self.result = Result(summary, trainer.model)

    # --- what the run writes ---

    def wall(self) -> float:
        """This run's time over all its segments, up to now."""
        return self.pos.wall_time + time.perf_counter() - self.started

    def _summary(self, status: str, **facts: Any) -> dict[str, Any]:
        cfg, rt, data = self.cfg, self.rt, self.trainer.data
        split = {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "val_is_test": data.test_as_val}  # data.val_fraction=0 validates on the test set
        return {"model": cfg.model.name, "dataset": cfg.data.name, "split": split, "world_size": rt.world_size,
                "num_nodes": rt.num_nodes, "launcher": rt.launcher, "device": str(rt.device), "backend": rt.backend,
                "precision": self.trainer.amp, "threads_per_rank": rt.threads, "batch_per_rank": cfg.train.batch_size,
                "global_batch": cfg.train.batch_size * rt.world_size, "run_dir": str(self.run_dir),
                "status": status, **facts, "train_time_s": self.pos.train_time, "segments": self.pos.segments}

    def _saved(self, path: Path, at: Position) -> None:
        """The newest sound checkpoint: status.json says so while the run goes on (a crash leaves it true)."""
        self.checkpoint = path
        self.agreement.saved()
        dist.on_main(lambda: rundir.write_status(self.run_dir, "running", epochs_done=at.epochs_done, step=at.step,
                                                 checkpoint=str(path)))

    def _status(self, state: str, **facts: Any) -> None:
        """status.json, the one record a job script reads to decide what comes next (rank 0 writes it)."""
        where = {"epochs_done": self.pos.epochs_done, "step": self.pos.step}
        self.trainer.monitor.watchdog.doing("writing status.json")  # a file system's stall: never a stuck rank
        dist.on_main(lambda: rundir.write_status(self.run_dir, state, **where, **facts))

    def _where(self, newest: Path | None) -> str:
        """Where this rank stopped and what is kept, for a failure's line."""
        kept = (f"the newest checkpoint, {newest.name}, is kept: the same command continues from it" if newest
                else "no checkpoint had been written")
        return f"in epoch {self.trainer.monitor.epoch} at step {self.trainer.monitor.step}; {kept}"

    def _failed(self, error: BaseException, writer: bool | None = None, newest: Path | None = None) -> None:
        """Without a collective: the other ranks may be gone. Rank 0 writes, or the rank that reports a lost one."""
        if self.rt.is_main if writer is None else writer:
            code = error.exit_code if isinstance(error, UserError) else 1
            facts = {"reason": "error", **(error.status if isinstance(error, UserError) else {})}
            newest = newest or self.checkpointer.newest()
            rundir.write_status(self.run_dir, "failed", **facts, exit_code=code, error=str(error)[:500],
                                epochs_done=self.pos.epochs_done, step=self.pos.step,
                                checkpoint=str(newest) if newest else None)


def _oversubscribed(rt: dist.Runtime) -> list[str]:
    """A note when this node's ranks want more threads than it has cores (4 ranks on 2 cores ran 2.4x slower)."""
    cores = cpus.usable_cores() if rt.local_world_size == 1 else os.cpu_count() or 1
    wanted = rt.local_world_size * rt.threads
    if wanted <= cores:
        return []
    return [f"oversubscribed: {rt.local_world_size} rank(s) x {rt.threads} thread(s) on {cores} CPU core(s); "
            "each rank runs at a fraction of its speed (use fewer ranks per node)"]

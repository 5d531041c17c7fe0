"""Checkpoints of a run: when an epoch's end is due one, what one holds, and continuing from one.

A checkpoint holds the model, optimizer and scaler (the Trainer's state_dict), the Position, every rank's RNG
state and, mid-epoch, every rank's partial sums: with the same layout a resumed run continues bit for bit as
an uninterrupted one. Rank 0 writes (core/checkpoint.py: atomically); every rank takes part in gathering.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import torch

from hpc_mnist.core import checkpoint
from hpc_mnist.runtime import dist
from hpc_mnist.training.state import Position, rng_state, set_rng_state
from hpc_mnist.training.trainer import Trainer


class Checkpointer:
    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg, self.rt = trainer, trainer.cfg, trainer.rt
        self.monitor = trainer.monitor

    def due(self, epoch: int, stopping: str | None) -> bool:
        """Whether this epoch's end is checkpointed: every train.checkpoint_every epochs, the last, or a stop."""
        every = self.cfg.train.checkpoint_every
        return bool((every and epoch % every == 0) or epoch == self.cfg.train.epochs or stopping)

    def save(self, pos: Position, wall_time: float, sums: torch.Tensor | None = None) -> Path:
        """Rank 0 writes; every rank contributes its RNG state (and partial sums when mid-epoch)."""
        watchdog = self.monitor.watchdog
        self.monitor.between_steps("writing a checkpoint", "checkpoint")
        watchdog.in_collective()
        trainer = self.trainer
        state = {
            "format": checkpoint.FORMAT, **pos.state_dict(), "wall_time": wall_time,
            "world_size": self.rt.world_size, "batch_size": self.cfg.train.batch_size, **trainer.state_dict(),
            "rng": dist.all_gather_object(rng_state(self.rt.device)),
            "partial": dist.all_gather_object(sums.tolist()) if sums is not None else None,
            "config": self.cfg.to_dict(),
            "versions": {"torch": str(torch.__version__), "torchvision": _version("torchvision")},
        }
        filename = checkpoint.name(pos.epochs_done, pos.step)

        def write() -> Path:  # the others wait in on_main's broadcast meanwhile
            watchdog.doing("writing a checkpoint")
            path = checkpoint.save(state, trainer.run_dir, filename, self.cfg.train.keep_checkpoints)
            watchdog.in_collective()
            return path

        return dist.on_main(write)

    def restore(self, path: Path) -> tuple[Position, list[str]]:
        """Load a checkpoint; continue with this command's settings from its position, and say what differs.

        The schedule is built for this command's epochs and layout and stepped to the checkpoint's position,
        so a changed number of epochs, schedule or learning rate continues from there, and an unchanged one is
        exact. Another layout (world size, batch) continues from the epoch boundary, with fresh RNG streams.
        """
        trainer, rt, train = self.trainer, self.rt, self.cfg.train
        state = checkpoint.load(path)  # on every rank: run directories are on a shared file system
        trainer.load_state_dict(state)
        pos = Position()
        pos.load_state_dict(state)
        notes = []
        old_world, old_batch = state["world_size"], state["batch_size"]
        if (old_world, old_batch) == (rt.world_size, train.batch_size):
            set_rng_state(state["rng"][rt.rank], rt.device)
            pos.partial = state["partial"][rt.rank] if state["partial"] else None
        else:  # another layout: shards and steps per epoch differ, so continue from the epoch boundary
            torch.manual_seed(train.seed + rt.rank + 7919 * (pos.epochs_done + 1))
            notes.append(f"world size {old_world} -> {rt.world_size}, batch per rank {old_batch} -> "
                         f"{train.batch_size}: global batch {old_world * old_batch} -> "
                         f"{rt.world_size * train.batch_size}, lr {trainer.lr:g}"
                         + (f"; epoch {pos.epochs_done + 1} restarts from its first step" if pos.step else ""))
            pos.step = 0
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": replaying, not training
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(pos.epochs_done * trainer.steps_per_epoch + pos.step):
                trainer.scheduler.step()
        return pos, notes

    def newest(self) -> Path | None:
        """The newest checkpoint in the run directory, from any segment (written atomically: it is sound)."""
        saved = checkpoint.existing(self.trainer.run_dir)
        return saved[-1] if saved else None


def _version(package: str) -> str:
    """From the package's metadata: importing torchvision for its version cost every process 1.5 s of start-up
    (it imports torch._dynamo)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"

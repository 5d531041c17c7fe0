"""Where training stands (Position) and every rank's random-number state: what a checkpoint restores besides
the model and optimizer, so that a resumed run continues exactly as an uninterrupted one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's position fields (every rank's partial sums travel apart, gathered)."""
        return {"epochs_done": self.epochs_done, "step": self.step, "train_time": self.train_time,
                "wall_time": self.wall_time, "train_samples": self.train_samples, "segments": self.segments}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint: this process life is one segment more than the one that wrote it."""
        self.epochs_done, self.step, self.train_time = state["epochs_done"], state["step"], state["train_time"]
        self.wall_time, self.train_samples = state.get("wall_time", 0.0), state["train_samples"]
        self.segments = state.get("segments", 1) + 1


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    accel = getattr(torch, device.type) if device.type in ("cuda", "xpu") else None
    return {"cpu": torch.get_rng_state(), "device": accel.get_rng_state(device) if accel else None}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["device"] is not None and device.type in ("cuda", "xpu"):
        getattr(torch, device.type).set_rng_state(state["device"], device)

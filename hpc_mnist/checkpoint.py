"""Checkpoint files: written atomically, loaded with weights-only unpickling, the newest sound one found.

Names sort in training order: `checkpoint-<epochs done>-<steps into the next epoch>.pt`, so a
mid-epoch (preemption) checkpoint sorts after the epoch boundary before it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from hpc_mnist.errors import UserError

PATTERN = "checkpoint-*.pt"
FORMAT = 1


def name(epochs_done: int, step: int) -> str:
    return f"checkpoint-{epochs_done:04d}-{step:06d}.pt"


def existing(run_dir: Path) -> list[Path]:
    """Checkpoints in the run directory, oldest first."""
    return sorted(run_dir.glob(PATTERN))


def save(state: dict[str, Any], run_dir: Path, filename: str, keep: int) -> Path:
    """Write via a temporary file, fsync, rename: a crash or full disk never leaves a partial checkpoint
    under a name that resume would pick. Then keep only the newest `keep`."""
    final, tmp = run_dir / filename, run_dir / f".{filename}.tmp"
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise first: torch.save turns a failed file write into an opaque error
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        previous = existing(run_dir)
        kept = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"could not write checkpoint {final}: {e.strerror or e}; {kept}") from None
    for old in existing(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict[str, Any]:
    """Weights-only unpickling: a checkpoint can hold tensors and plain data, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist (train.resume)") from None
    except Exception as e:  # truncated zip, bad pickle, a global that weights-only loading refuses: unusable
        first = str(e).splitlines()[0] if str(e) else ""
        detail = f"{type(e).__name__}: {first}" if 0 < len(first) <= 100 else type(e).__name__
        raise UserError(f"checkpoint {path} is unreadable ({detail})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not an hpc_mnist checkpoint (format {FORMAT})")
    return state


def find(resume: str, run_dir: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from (None: start fresh) and warnings about unusable newer ones."""
    if resume == "never":
        return None, []
    if resume != "auto":
        load(Path(resume))  # a named checkpoint must be usable: fail loudly rather than start over
        return Path(resume), []
    warnings = []
    for path in reversed(existing(run_dir)):
        try:
            load(path)
            return path, warnings
        except UserError as e:
            warnings.append(f"{e}; using an older checkpoint")
    return None, warnings

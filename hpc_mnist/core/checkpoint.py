"""Checkpoint files: written atomically, loaded with weights-only unpickling, the newest sound one found.

A name holds the training position, `checkpoint-<epochs done>-<steps into the next epoch>.pt`, and files
are ordered by that position (never by time or by name), so a mid-epoch (stop) checkpoint comes after the
epoch boundary before it. A run directory holds one run's checkpoints (see rundir.py).
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from hpc_mnist.errors import UserError

PATTERN = "checkpoint-*.pt"
FORMAT = 1


def name(epochs_done: int, step: int) -> str:
    return f"checkpoint-{epochs_done:04d}-{step:06d}.pt"


def position(path: Path) -> tuple[int, int]:
    """(epochs done, steps into the next epoch) from a checkpoint's name."""
    match = re.fullmatch(r"checkpoint-(\d+)-(\d+)\.pt", path.name)
    return (int(match[1]), int(match[2])) if match else (-1, -1)


def existing(run_dir: Path) -> list[Path]:
    """Checkpoints in the run directory, earliest training position first."""
    return sorted((p for p in run_dir.glob(PATTERN) if position(p) >= (0, 0)), key=position)


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
        raise UserError(f"{write_failure(e, run_dir, filename)}; {kept}") from None
    for old in existing(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def write_failure(error: OSError, folder: Path, filename: str) -> str:
    """What a failed write says: a full disk or quota by name (the commonest cause on shared file systems)."""
    if error.errno == errno.ENOSPC:
        return f"no space left on {folder} while writing {filename}"
    if error.errno == errno.EDQUOT:
        return f"disk quota exceeded on {folder} while writing {filename}"
    return f"could not write {folder / filename}: {error.strerror or error}"


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


def newest_sound(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The latest checkpoint that loads (path and contents), and what was wrong with any later ones."""
    problems = []
    for path in reversed(existing(run_dir)):
        try:
            return path, load(path), problems
        except UserError as e:
            problems.append(str(e))
    return None, None, problems

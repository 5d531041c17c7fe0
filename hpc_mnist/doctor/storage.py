"""The run directory's storage, as each rank finds it: whether this host can write there, how much room its
file system has, and which file system it is; and how large one checkpoint of this model with its optimizer
state is. Each rank leaves a probe file there until rank 0 has looked for it: a folder that rank 0 cannot see
another host's probe in is node-local (a multi-host run would scatter its files and lose its checkpoints).

Nothing is created that a failed start would leave behind: the run directory is probed where it exists, else
its nearest existing parent (where it will be made).
"""

from __future__ import annotations

import io
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hpc_mnist.core import checkpoint, models
from hpc_mnist.core.config import Config
from hpc_mnist.core.optim import build_optimizer

PROBE = ".hpc_mnist-doctor-{host}-{pid}.tmp"
PER_RANK = 8 * 1024  # each rank's RNG state and running sums in a checkpoint (about 5 KiB on CPU)
OVERHEAD = 16 * 1024  # the configuration, versions and position (about 3 KiB)


@dataclass
class Storage:
    """What one rank found about the run directory."""

    run_dir: str
    probed: str  # the folder written: the run directory, or its nearest existing parent
    writable: bool
    error: str = ""
    free_bytes: int = 0
    checkpoint_bytes: int = 0  # the checkpoints already there (they are replaced, not added to)
    fs_type: str = ""
    mount: str = ""
    probe: str = ""  # this rank's probe file, kept until rank 0 has looked for it


def _mount(path: Path) -> tuple[str, str]:
    """(file system type, mount point) of `path`, from /proc/self/mountinfo (the longest mount point above it)."""
    best = ("", "")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        try:
            point, fs_type = fields[4].replace("\\040", " "), fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (fs_type, point)
    return best


def probe(run_dir: Path) -> Storage:
    """Write this rank's probe file into the run directory (or where it will be made) and measure the room."""
    folder = run_dir.resolve()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    fs_type, mount = _mount(folder)
    found = Storage(str(run_dir), str(folder), writable=False, fs_type=fs_type, mount=mount)
    try:
        stat = os.statvfs(folder)
        found.free_bytes = stat.f_bavail * stat.f_frsize
        found.checkpoint_bytes = sum(p.stat().st_size for p in checkpoint.existing(run_dir)) if run_dir.is_dir() \
            else 0
        path = folder / PROBE.format(host=socket.gethostname(), pid=os.getpid())
        with open(path, "wb") as f:
            f.write(b"hpc_mnist doctor: can this host write here?\n")
            f.flush()
            os.fsync(f.fileno())
        found.writable, found.probe = True, str(path)
    except OSError as e:
        found.error = e.strerror or str(e)
    return found


def remove(found: dict[str, Any] | None) -> None:
    if found and found.get("probe"):
        Path(found["probe"]).unlink(missing_ok=True)


def visible(found: dict[str, Any] | None) -> bool:
    """Whether this host sees the probe file another rank wrote (it wrote one: writable)."""
    return bool(found and found.get("probe")) and os.path.exists(found["probe"])


def checkpoint_size(cfg: Config, world_size: int) -> int:
    """Bytes of one checkpoint: the model and its optimizer state as saved (the state made by one step of zero
    gradients), and each rank's RNG state."""
    model = models.build(cfg.model)
    optimizer = build_optimizer(cfg.optim, model, cfg.optim.lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return buffer.tell() + PER_RANK * world_size + OVERHEAD


def as_dict(found: Storage) -> dict[str, Any]:
    return asdict(found)

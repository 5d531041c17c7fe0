"""Run outputs, written by rank 0 only: the rich console, TensorBoard, metrics.jsonl, summary.json.

A logger built with `enabled=False` (every other rank) accepts the same calls and does nothing, so the
training loop never asks which rank it is on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hpc_mnist.core import checkpoint
from hpc_mnist.core.config import LogConfig
from hpc_mnist.runtime import stopfile

EPOCH_COLUMNS = [  # (key, header, width, format spec)
    ("epoch", "epoch", 5, "d"), ("train_loss", "train loss", 10, ".4f"), ("train_acc", "train acc", 9, ".2%"),
    ("val_loss", "val loss", 8, ".4f"), ("val_acc", "val acc", 7, ".2%"), ("lr", "lr", 9, ".2e"),
    ("epoch_time_s", "time s", 7, ".2f"), ("samples_per_s", "samples/s", 10, ",.0f"),
]


class ReaderGone:
    """A standard stream that outlives its reader (a pipe to `head`, a dropped ssh session): the first write that
    finds it gone points the descriptor at /dev/null, so this and every later write, and the interpreter's last
    flush, succeed and the run goes on writing its files and status.json as ever."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._or_null(lambda: self._stream.write(text))

    def flush(self) -> None:
        self._or_null(self._stream.flush)

    def _or_null(self, action):
        try:
            return action()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            return action()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def survive_a_gone_reader() -> None:
    """Standard output and error that a closed pipe or terminal cannot end the process through (trainer only)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderGone):
            setattr(sys, name, ReaderGone(stream))


def make_console() -> Console:
    """A rich console; in job logs (not a terminal) wide enough never to wrap or truncate paths."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def failure_grid(images: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor, columns: int = 6) -> torch.Tensor:
    """Misclassified digits in a grid, each captioned 'predicted (true)' like the tutorial's show_failures.

    Returns a uint8 [3, H, W] image for TensorBoard.
    """
    from PIL import Image, ImageDraw

    scale, caption = 2, 14
    tile_w, tile_h = 28 * scale, 28 * scale + caption
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("L", (columns * tile_w, rows * tile_h), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (img, p, t) in enumerate(zip(images, predicted.tolist(), true.tolist(), strict=True)):
        x0, y0 = (i % columns) * tile_w, (i // columns) * tile_h
        digit = Image.fromarray(img.cpu().numpy()).resize((tile_w, tile_w), Image.NEAREST)
        canvas.paste(digit, (x0, y0))
        draw.text((x0 + 4, y0 + tile_w + 1), f"{p} ({t})", fill=0)
    grid = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(canvas.height, canvas.width)
    return grid.expand(3, -1, -1).contiguous()


def _epoch_of(line: str) -> int | None:
    """A metrics.jsonl row's epoch; None for a line a crash cut short."""
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


class RunLogger:
    def __init__(self, cfg: LogConfig, run_dir: Path, enabled: bool, epochs_done: int = 0):
        """`epochs_done` > 0 when resuming: later epochs' rows and curves from the interrupted run are dropped,
        so metrics.jsonl and TensorBoard hold each epoch exactly once."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = None
        if not enabled:
            return
        self.console = make_console()
        self.interactive = cfg.console == "rich" or (cfg.console == "auto" and self.console.is_terminal)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line in metrics.read_text().splitlines()
                    if (epoch := _epoch_of(line)) is not None and epoch <= epochs_done]
            metrics.write_text("".join(line + "\n" for line in kept))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=epochs_done + 1 if epochs_done else None)
        self._header_printed = False
        self._failed_writes: set[str] = set()

    def start(self, headline: str, facts: dict[str, Any], notes: list[str] = ()) -> None:
        """The first line says what this command does with its run (starts, continues: from where, what
        changed); then the facts of the run."""
        if not self.enabled:
            return
        self.console.print(f"hpc_mnist: {headline}", soft_wrap=True)
        grid = Table.grid(padding=(0, 2))
        for key, value in facts.items():
            grid.add_row(f"[bold]{key}[/]", str(value))
        self.console.print(Panel(grid, title="hpc_mnist", expand=False))
        for note in notes:
            self.console.print(f"[yellow]note:[/] {note}", soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, epoch: int, epochs: int, steps: int) -> Iterator[Callable[[int, float, float], None]]:
        """A live bar for one epoch on a terminal; yields update(step, loss, samples_per_s)."""
        if not (self.enabled and self.interactive):
            yield lambda step, loss, rate: None
            return
        bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:,.0f} samples/s"),
                       TimeRemainingColumn(), console=self.console, transient=True)
        task = bar.add_task("train", total=steps, loss=float("nan"), rate=0.0)
        with bar:
            yield lambda step, loss, rate: bar.update(task, completed=step, loss=loss, rate=rate)

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self._header_printed:
            self.console.print("  ".join(f"{head:>{width}}" for _, head, width, _ in EPOCH_COLUMNS), style="bold")
            self._header_printed = True
        self.console.print("  ".join(f"{row[key]:>{width}{spec}}" for key, _, width, spec in EPOCH_COLUMNS))
        for s in row.get("stragglers", []):
            self.console.print(f"[yellow]straggler:[/] rank {s['rank']} on {s['host']}: own work {s['own_s']:.2f} s "
                               f"in epoch {row['epoch']}, the other ranks' median {s['others_median_s']:.2f} s",
                               soft_wrap=True)
        self._append_row(row)
        if self.writer:
            step = row["epoch"]
            try:
                for tag, key in [("loss/train", "train_loss"), ("loss/val", "val_loss"),
                                 ("accuracy/train", "train_acc"), ("accuracy/val", "val_acc"), ("lr", "lr"),
                                 ("throughput/samples_per_s", "samples_per_s"), ("time/epoch_s", "epoch_time_s")]:
                    self.writer.add_scalar(tag, row[key], step)
                for key in [k for k in row if k.endswith("_s_median") or k in ("own_s_max", "wait_s_max")]:
                    self.writer.add_scalar(f"timing/{key}", row[key], step)
                self.writer.flush()
            except OSError as e:
                self._could_not("TensorBoard events", e)

    def _append_row(self, row: dict[str, Any]) -> None:
        """One line of metrics.jsonl, whole or not at all: a full disk costs the row (said once), not the run,
        and never leaves half a line for a resume to trip over."""
        path = self.run_dir / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
            self._could_not("metrics.jsonl", e)

    def _could_not(self, what: str, error: OSError) -> None:
        """Said once per kind of output; training goes on (the checkpoint is what must not fail)."""
        if what in self._failed_writes:
            return
        self._failed_writes.add(what)
        self.console.print(f"[yellow]warning:[/] {checkpoint.write_failure(error, self.run_dir, what)}: training "
                           "goes on without it", soft_wrap=True)

    def stopped(self, summary: dict[str, Any]) -> None:
        """Stopped early with a checkpoint: say where, and how to continue."""
        if not self.enabled:
            return
        summary = {**summary, "reason": stopfile.reason(summary.get("reason"), self.run_dir)}  # hpc-mnist stop
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        why = summary["signal"] or summary["reason"]
        self.console.print(f"[yellow]stopped[/] ({why}) after {summary['epochs_done']} epoch(s) and "
                           f"{summary['step']} step(s): checkpoint {summary['checkpoint']}; run the same command again "
                           "to continue", soft_wrap=True)
        if self.writer:
            self.writer.close()

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any],
               failures: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> None:
        if not self.enabled:
            return
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        table = Table(title="summary", show_header=False)
        for key in ["status", "test_acc", "test_loss", "val_acc", "epochs", "wall_time_s", "train_time_s",
                    "samples_per_s"]:
            value = summary[key]
            if key.endswith("_acc"):
                text = f"{value:.2%}"
            elif isinstance(value, float):
                text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
            else:
                text = str(value)
            table.add_row(key, text)
        table.add_row("run directory", str(self.run_dir))
        self.console.print(table)
        if self.writer:
            step = summary["epochs"]
            self.writer.add_scalar("loss/test", summary["test_loss"], step)
            self.writer.add_scalar("accuracy/test", summary["test_acc"], step)
            if failures is not None and len(failures[0]):
                self.writer.add_image("test/misclassified", failure_grid(*failures), step)
            metrics = {f"hparam/{k}": summary[k] for k in ("test_acc", "test_loss", "val_acc", "samples_per_s")}
            self.writer.add_hparams(hparams, metrics, run_name=".")
            self.writer.close()

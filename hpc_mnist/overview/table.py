"""The runs as one rich table (one row per run) or as JSON for scripts."""

from __future__ import annotations

import dataclasses
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hpc_mnist.runtime.runinfo import RunInfo

WIDE = 220  # columns for output that is not a terminal
STYLES = {"running": "green", "completed": "blue", "stopped": "yellow", "failed": "red", "unreadable": "red"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _percent(value: float | None) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else ""


def _where(run: RunInfo) -> str:
    if run.epochs_done is None:
        return ""
    total = f"/{run.epochs}" if run.epochs else ""
    return f"{run.epochs_done}{total}" + (f" +{run.step} steps" if run.step else "")


def _jobs(run: RunInfo) -> str:
    if not run.jobs:
        return ""
    shown = [f"{j} {run.job_states[j]}" if j in run.job_states else j for j in run.jobs[-2:]]
    more = f"(+{len(run.jobs) - 2}) " if len(run.jobs) > 2 else ""
    return f"{run.scheduler} {more}{', '.join(shown)}"


def _checkpoint(run: RunInfo) -> str:
    if not run.checkpoint:
        return ""
    age = duration(run.checkpoint_age_s)
    return run.checkpoint.removeprefix("checkpoint-").removesuffix(".pt") + (f", {age} ago" if age else "")


def _why(run: RunInfo) -> str:
    return "; ".join([run.reason, *run.problems] if run.reason else run.problems)


def table(runs: list[RunInfo]) -> Table:
    t = Table(title=None, show_lines=False, header_style="bold", expand=False)
    keep = {"run": max([len(r.name) for r in runs] + [3]), "state": 10, "why": 24}  # never squeezed to nothing
    for name in ("run", "state", "why", "job", "epochs", "val acc", "test acc", "checkpoint", "seg", "trained",
                 "to finish", "bad hosts"):
        t.add_column(name, overflow="fold", no_wrap=name not in ("why", "bad hosts"), min_width=keep.get(name))
    for run in runs:
        t.add_row(run.name, Text(run.state, style=STYLES.get(run.state, "")), _why(run), _jobs(run), _where(run),
                  _percent(run.val_acc), _percent(run.test_acc), _checkpoint(run),
                  "" if run.segments is None else str(run.segments), duration(run.train_time_s),
                  duration(run.eta_s), ", ".join(run.bad_hosts))
    if not runs:
        t.caption = "no runs here"
    return t


def console() -> Console:
    """A terminal's width; a pipe or a log file gets rows that do not fold (rich would assume 80 columns)."""
    plain = Console()
    return plain if plain.is_terminal else Console(width=WIDE)


def as_json(runs: list[RunInfo]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in runs], indent=2)

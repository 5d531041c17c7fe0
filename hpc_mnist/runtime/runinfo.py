"""A run directory as a login node sees it, read without torch, locks or writes (safe on a parallel file
system while the run writes it): its state as true now, why it ended, where it is, its accuracy, checkpoints,
time and the hosts named bad. Every file may be missing (an older version, a run that just started),
half-written or unreadable: each such file is named in `problems`, never raised. For `hpc-mnist status` and
`hpc-mnist stop`."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import jobstate, stopfile
from hpc_mnist.runtime import status as status_file

CHECKPOINT = re.compile(r"checkpoint-(\d+)-(\d+)\.pt")
BAD_HOSTS = "bad-hosts.json"  # {"hosts": {"<hostname>": {"why": ..., "when": ..., "job": ...}}}
MARKS = (status_file.NAME, "config.yaml", "metrics.jsonl", "summary.json")  # what makes a folder a run's
RECENT_EPOCHS = 3  # the time to finish is estimated from this many of the latest epochs


@dataclass
class RunInfo:
    """One run, as `hpc-mnist status` shows it (one row) and `--json` prints it."""

    name: str
    path: str
    state: str = "unknown"  # running | stopped | failed | completed | unknown (no status.json) | unreadable
    reason: str = ""  # the one line: why it ended, or what could not be read
    scheduler: str = ""
    jobs: list[str] = field(default_factory=list)
    job_states: dict[str, str] = field(default_factory=dict)  # what the scheduler says now, where it answered
    epochs_done: int | None = None
    step: int | None = None
    epochs: int | None = None  # train.epochs of the segment that ran last
    val_acc: float | None = None
    test_acc: float | None = None
    checkpoint: str = ""  # the newest checkpoint's file name
    checkpoint_age_s: float | None = None
    segments: int | None = None
    train_time_s: float | None = None  # whole epochs logged, over every segment
    eta_s: float | None = None  # to the last epoch, at the pace of the latest epochs
    bad_hosts: list[str] = field(default_factory=list)
    host: str = ""  # where the status's writer (rank 0) ran
    pid: int | None = None
    stop_file: str = ""  # the file the ranks watch ("": a version that named none)
    stop_requested: bool = False  # a user's stop request waits in it
    problems: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.state == "running"


def is_run(path: Path) -> bool:
    """Whether `path` holds a run (any of its records, or a checkpoint)."""
    try:
        return any((path / mark).exists() for mark in MARKS) or any(CHECKPOINT.fullmatch(n) for n in os.listdir(path))
    except OSError:
        return False


def _json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.append(f"cannot read {path.name}: {e.strerror or e}")
    except ValueError:
        problems.append(f"{path.name} is not JSON (half-written?)")
    return None


def _epochs_total(path: Path, problems: list[str]) -> int | None:
    """train.epochs from config.yaml, by its one line (no YAML parser: quick, and no schema to age)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        problems.append(f"cannot read {path.name}: {e.strerror or e}")
        return None
    section = ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.split(":")[0]
        elif section == "train" and (m := re.fullmatch(r"\s+epochs:\s*(\d+)\s*", line)):
            return int(m[1])
    return None


def _metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl's epoch rows, each epoch once; a torn last line (a writer mid-line) is skipped and named."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        problems.append(f"cannot read {path.name}: {e.strerror or e}")
        return []
    rows: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            rows[int(row["epoch"])] = row
        except (ValueError, KeyError, TypeError):
            if line.strip():
                problems.append(f"{path.name} line {number} is not an epoch row")
    return [rows[e] for e in sorted(rows)]


def _newest_checkpoint(path: Path) -> tuple[str, float | None]:
    names = [n for n in os.listdir(path) if CHECKPOINT.fullmatch(n)]
    if not names:
        return "", None
    newest = max(names, key=lambda n: tuple(map(int, CHECKPOINT.fullmatch(n).groups())))
    try:
        return newest, time.time() - (path / newest).stat().st_mtime
    except OSError:  # removed by the run (train.keep_checkpoints) since the listing
        return newest, None


def _bad_hosts(path: Path, problems: list[str]) -> list[str]:
    found = _json(path / BAD_HOSTS, problems)
    if found is None:
        return []
    hosts = found.get("hosts") if isinstance(found, dict) else None
    if not isinstance(hosts, dict):
        problems.append(f"{BAD_HOSTS} holds no hosts object")
        return []
    return sorted(map(str, hosts))


def _process_gone(status: dict[str, Any]) -> str:
    """Why a status that says running is no longer true, from this host: its writer's pid has ended ('' while
    it lives, or where this host cannot tell: another host's process)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "X"
    return "" if state not in ("Z", "X") else f"pid {pid} on {status['host']} has ended"


def read(path: str | os.PathLike) -> RunInfo:
    """The run in `path`, as its files say (the scheduler is asked later, for every run at once: settle)."""
    path = Path(path)
    run = RunInfo(name=path.name, path=str(path))
    problems = run.problems
    try:
        run.checkpoint, run.checkpoint_age_s = _newest_checkpoint(path)
    except OSError as e:
        run.state, run.reason = "unreadable", f"cannot read the run directory: {e.strerror or e}"
        return run
    try:
        status = status_file.read(path / status_file.NAME)
    except UserError as e:
        status = None
        run.state, run.reason = "unreadable", str(e)
    if status is not None:
        _from_status(run, status)
    elif run.state == "unknown":
        run.reason = "no status.json (a run that is starting, or one written by an older version)"
    rows = _metrics(path / "metrics.jsonl", problems)
    summary = _json(path / "summary.json", problems)
    summary = summary if isinstance(summary, dict) else {}
    run.epochs = _epochs_total(path / "config.yaml", problems) or summary.get("epochs")
    if rows:
        run.val_acc = rows[-1].get("val_acc")
        run.train_time_s = sum(float(r.get("epoch_time_s") or 0) for r in rows)
        run.epochs_done = max(run.epochs_done or 0, int(rows[-1]["epoch"]))
    run.test_acc = summary.get("test_acc")
    if isinstance(summary.get("segments"), int):
        run.segments = summary["segments"] + (1 if run.running else 0)  # written when a segment ends
    if run.epochs and rows and run.state != "completed":
        recent = [float(r.get("epoch_time_s") or 0) for r in rows[-RECENT_EPOCHS:]]
        run.eta_s = max(run.epochs - (run.epochs_done or 0), 0) * sum(recent) / len(recent)
    run.bad_hosts = _bad_hosts(path, problems)
    return run


def _from_status(run: RunInfo, status: dict[str, Any]) -> None:
    run.state = str(status.get("state") or "unknown")
    run.host, run.pid = str(status.get("host") or ""), status.get("pid")
    run.scheduler = str(status.get("scheduler") or "")
    run.jobs = [str(j) for j in status.get("jobs") or [] if j] if isinstance(status.get("jobs"), list) else []
    for key in ("epochs_done", "step"):
        if isinstance(status.get(key), int):
            setattr(run, key, status[key])
    run.stop_file = str(status.get("stop_file") or "")
    run.stop_requested = stopfile.by_user(run.stop_file)
    if run.running and (gone := _process_gone(status)):
        _gone(run, gone)
    else:
        run.reason = _why(status, run)


def _why(status: dict[str, Any], run: RunInfo) -> str:
    reason, error = status.get("reason"), str(status.get("error") or "").splitlines()
    if run.running:
        return "stop requested: stops at its next check" if run.stop_requested else ""
    if reason == "signal":
        return f"signal {status.get('signal') or ''}".strip() + ("" if status.get("requeue") else "; not requeued")
    if reason == "deadline":
        return "time limit" + ("; its job continues it" if status.get("requeue") else "")
    if reason == status_file.USER_STOP:
        return "stopped by hpc-mnist stop"
    line = str(reason or "")
    if error:
        line = f"{line}: {error[0]}" if line and line != "error" else error[0]
    return line[:200]


def _gone(run: RunInfo, why: str) -> None:
    run.state, run.reason = "failed", f"gone: status.json says running, but {why}"


def settle(runs: list[RunInfo], timeout: float = jobstate.TIMEOUT) -> None:
    """Ask each scheduler once about every run's jobs; a run whose status says running while none of its jobs
    may still run (ended, cancelled) is gone. Without an answer, the files' word stands."""
    for scheduler in {r.scheduler for r in runs if r.scheduler and r.jobs}:
        mine = [r for r in runs if r.scheduler == scheduler]
        states = jobstate.query(scheduler, sorted({j for r in mine for j in r.jobs}), timeout)
        for run in mine:
            run.job_states = {j: states[j] for j in run.jobs if j in states}
            last = run.jobs[-1]
            if run.running and last in states and not jobstate.active(states[last]):
                _gone(run, f"job {last} is {states[last]}")


def find(paths: list[str]) -> list[RunInfo]:
    """The runs named: each path a run directory, or a folder of them (log.dir, `runs` by default)."""
    found = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise UserError(f"{given} is not a directory: name a run directory or a folder of runs (log.dir)")
        if is_run(path):
            found.append(read(path))
            continue
        try:
            children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        except OSError as e:
            found.append(RunInfo(path.name, str(path), "unreadable", f"cannot list: {e.strerror or e}"))
            continue
        for child in children:
            if child.is_dir() and (is_run(child) or not os.access(child, os.R_OK | os.X_OK)):
                found.append(read(child))
    return found

"""The run directory: what names a run, what a directory holds, and what a rerun does with it.

1. A run is named by `log.name`; else by the batch job id (a requeued job finds its run again); else by
   the config file's name ("default" without one), with a short digest of the settings the command line
   changes that change the result (not epochs, paths or bookkeeping). So the same command, run again, meets
   the same run, and another command meets its own.
2. A directory holds one run: config.yaml (what ran last), one lineage of checkpoints ordered by
   training position, metrics.jsonl, TensorBoard files, summary.json and status.json (why it ended).
3. Meeting its run, a command continues it (`train.resume=auto`): changed settings apply from the
   checkpoint on and are named on the first line; a change that would make it another run (model,
   data, optimizer, seed) is refused in one line. A finished run is reported, not trained again.
4. `train.resume=never` or a checkpoint path never mixes two runs: refused where a run exists.
5. Nothing is written before the run has started: a failed start leaves no directory behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_mnist.core import checkpoint, config
from hpc_mnist.core.config import Config
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import peers, stopfile
from hpc_mnist.runtime import status as status_file
from hpc_mnist.runtime.jobid import job_name
from hpc_mnist.runtime.status import STATUS_FILE_VAR

# Settings that may change between segments of one run without making it another run.
FREE_SECTIONS = ("train", "optim")
FREE_KEYS = {"data.root", "data.download", "data.resident"}
REFUSED_KEYS = {"optim.name", "train.seed"}
# Bookkeeping that may differ between segments on purpose (limits and deadlines are per job): not reported.
SILENT_KEYS = {"train.resume", "train.time_limit", "train.deadline", "train.deadline_margin", "train.job_deadline",
               "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints", "train.eval_batch_size"}


def _bookkeeping(key: str) -> bool:
    """Logging, process-group and per-job settings: never part of what a run is."""
    return key.startswith(("log.", "dist.")) or key in SILENT_KEYS


def identity(cfg: Config, config_file: str | None) -> list[str]:
    """The settings this command changes from its config file (or the defaults) that change the result:
    'key=value' words. Epochs are not among them: raising train.epochs continues a run."""
    base = config.build(config_file).flat()
    return [f"{key}={value!r}" for key, value in sorted(cfg.flat().items())
            if value != base.get(key) and not _bookkeeping(key) and key != "train.epochs" and key not in FREE_KEYS]


def default_name(cfg: Config, config_file: str | None) -> str:
    name = Path(config_file).stem if config_file else "default"
    changes = identity(cfg, config_file)
    return job_name() or (f"{name}-{hashlib.sha1(' '.join(changes).encode()).hexdigest()[:6]}" if changes else name)


def name_notes(cfg: Config, config_file: str | None) -> list[str]:
    """Why a run directory has a digest in its name, for the start panel."""
    if cfg.log.name or job_name() or not (changes := identity(cfg, config_file)):
        return []
    return [f"run named for {config_file or 'the defaults'} with {', '.join(changes)} (the same command continues "
            "it; log.name=NAME names a run yourself)"]


def path_for(cfg: Config, config_file: str | None = None) -> Path:
    return Path(cfg.log.dir) / (cfg.log.name or default_name(cfg, config_file))


def compare(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(refused, changed): settings that differ, as 'key: old -> new', split by whether a run may change them."""
    old_flat, new_flat = config.flat(old), config.flat(new)
    refused, changed = [], []
    for key, value in new_flat.items():
        before = old_flat.get(key, value)
        if before == value or _bookkeeping(key):
            continue
        line = f"{key}: {before!r} -> {value!r}"
        free = key.split(".")[0] in FREE_SECTIONS or key in FREE_KEYS
        (refused if key in REFUSED_KEYS or not free else changed).append(line)
    return refused, changed


@dataclass
class Plan:
    """What this command does with its run directory."""

    action: str  # new | continue | finished
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # the run's last status (finished runs)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """status.json as it is true now: a `running` status whose processes are gone reads as `failed`
    (reason `gone`): a rank or its host died before anyone could record why."""
    try:
        status = status_file.read(run_dir / status_file.NAME)
    except UserError:
        return None
    if status is not None and status_file.running(status) and not _running(run_dir, status):
        status = status_file.mark_gone(status, error="the run's processes ended without recording why (its status "
                                       "said running): a rank or its host died, and the launcher ended the others "
                                       f"(its report names the process: {run_dir / 'ranks.json'} gives each rank's "
                                       "host and pid); the same command continues from the newest checkpoint")
    return status


def _running(run_dir: Path, status: dict[str, Any]) -> bool:
    """Whether a process still holds the run directory: its lock (held from open_run to close_run, released by
    the kernel when the process dies), or where locks do not work its pid; on another host, assume so."""
    if run_dir in _LOCKS:
        return True
    if status.get("host") != socket.gethostname():
        return True  # another host's process: neither its lock (local on some parallel file systems) nor pid tell
    held = _lock_held(run_dir)
    if held is not None:
        return held
    return not isinstance(status.get("pid"), int) or peers.process_exists(status["pid"])


def _lock_held(run_dir: Path) -> bool | None:
    """Whether another process holds the run directory's lock now; None where that cannot be told (no lock file,
    a file system without flock)."""
    try:
        fd = os.open(run_dir / ".lock", os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # nobody holds it (closing the descriptor releases it again)
    except BlockingIOError:
        return True
    except OSError:
        return None  # no flock on this file system
    finally:
        os.close(fd)


def plan(cfg: Config, run_dir: Path) -> Plan:
    """Decide, without writing anything, whether this command starts, continues or has finished its run."""
    if not run_dir.is_dir():
        if cfg.train.resume not in ("auto", "never"):
            checkpoint.load(Path(cfg.train.resume))  # a named checkpoint must be usable
            return Plan("new", Path(cfg.train.resume), [f"starting {run_dir} from {cfg.train.resume}"])
        return Plan("new", None, [f"starting a new run in {run_dir}"])
    if run_dir not in _LOCKS and _lock_held(run_dir):  # live, whatever it has written so far: no other advice
        raise _in_use(run_dir)
    saved = checkpoint.existing(run_dir)
    status = read_status(run_dir)
    if not saved and status is None:
        return Plan("new", None, [f"starting a new run in {run_dir}"])
    where = f"run directory {run_dir} already holds a run"
    if cfg.train.resume != "auto":
        raise UserError(f"{where}; train.resume={cfg.train.resume} would mix two runs there: choose another "
                        "log.name for a new run, or drop train.resume to continue this one")
    path, state, problems = checkpoint.newest_sound(run_dir)
    if path is None:
        found = "; ".join(problems) if problems else "no checkpoint"
        raise UserError(f"{where} but none of its checkpoints is usable ({found}): choose another log.name for "
                        "a new run, or remove the run directory")
    refused, changed = compare(state["config"], cfg.to_dict())
    if refused:
        raise UserError(f"{where} with other settings ({'; '.join(refused)}): choose another log.name for a new "
                        "run, or undo the change to continue this one")
    done = checkpoint.position(path)
    if done[0] > cfg.train.epochs:
        raise UserError(f"{where} with {done[0]} epochs done, more than train.epochs={cfg.train.epochs}: choose "
                        "another log.name for a new run")
    notes = [f"{p}; using an older checkpoint" for p in problems]
    if status and status.get("state") == "completed" and done == (cfg.train.epochs, 0):
        if changed:
            notes.append(f"changed settings ({'; '.join(changed)}) would apply only to further epochs: raise "
                         "train.epochs to continue with them")
        return Plan("finished", path, notes, status)
    if status and status.get("reason") == "gone":
        notes.append("its last process ended without recording why (status.json said running): a rank or its "
                     "host died")
    at = f"{done[0]} epoch(s) done" + (f", step {done[1]} of epoch {done[0] + 1}" if done[1] else "")
    notes.insert(0, f"continuing {run_dir} from {path.name} ({at})"
                 + (f"; changed: {'; '.join(changed)}" if changed else ""))
    return Plan("continue", path, notes)


_LOCKS: dict[Path, int] = {}  # run directory -> its lock file, held from open_run to close_run


def _in_use(run_dir: Path) -> UserError:
    return UserError(f"run directory {run_dir} is in use by another run; wait for it to end or choose another log.name")


def _lock(run_dir: Path) -> None:
    """One process tree per run directory at a time: two would interleave metrics and checkpoints."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(run_dir) from None
    except OSError:
        pass  # a file system without flock (some parallel file systems): run unlocked
    _LOCKS[run_dir] = fd


def open_run(cfg: Config, run_dir: Path, hosts: tuple[str, ...] = (), pids: tuple[int, ...] = ()) -> None:
    """Create (or reopen) and lock the run directory; record the configuration that runs now and where each
    rank runs (ranks.json: mpiexec's report of a dead process names a pid and a host, not a rank)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _lock(run_dir)
        for stale in run_dir.glob(".checkpoint-*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        (run_dir / stopfile.NAME).unlink(missing_ok=True)  # a stop asked of an earlier segment (hpc-mnist stop)
        config.save(cfg, run_dir / "config.yaml")
        status_file.write(run_dir / "ranks.json", {"hosts": list(hosts), "pids": list(pids)})
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir}: {e.strerror or e}; "
                        "set log.dir to a writable folder") from None


def close_run(run_dir: Path) -> None:
    """Release the run directory: the same command may continue it from this process (a notebook's second
    run()) or from another one."""
    fd = _LOCKS.pop(run_dir, None)
    if fd is not None:
        os.close(fd)


def _jobs(run_dir: Path) -> dict[str, Any]:
    """The scheduler and the ids of the batch jobs that carried the run so far (earlier ones from the last
    status.json), or nothing outside a batch job."""
    scheduler, job = status_file.this_job()
    if not job:
        return {}
    try:
        earlier = (status_file.read(run_dir / status_file.NAME) or {}).get("jobs")
    except UserError:
        earlier = None
    jobs = [str(j) for j in earlier if str(j) != job] if isinstance(earlier, list) else []
    return {"scheduler": scheduler, "jobs": [*jobs, job]}


def write_status(run_dir: Path, state: str, *, reason: str | None = None, signal: str | None = None,
                 exit_code: int = 0, **facts: Any) -> dict[str, Any]:
    """Why the run ended (or that it is running): completed | stopped | failed | running.

    `requeue` is true after a deadline stop, so job scripts requeue then and never after a cancel or a user's
    `hpc-mnist stop` (its stop file is read as the deadline: the reason becomes "user stop"); a failure may set it
    in `facts` (a rank lost after this segment saved a checkpoint: peers.py, controller.py). The stop file and
    the batch jobs that carried the run are recorded for `hpc-mnist status` and `stop` on a login node.
    """
    stop_file = stopfile.path_for(run_dir)
    reason = stopfile.reason(reason, run_dir) if state == "stopped" else reason
    status = {"state": state, "reason": reason, "signal": signal, "requeue": status_file.requeue(state, reason),
              "exit_code": exit_code, "run_dir": str(run_dir), **facts, "stop_file": stop_file, **_jobs(run_dir),
              "host": socket.gethostname(), "pid": os.getpid(), "time": round(time.time(), 3)}
    status_file.write(run_dir / status_file.NAME, status)
    copy = os.environ.get(STATUS_FILE_VAR)
    if copy:
        try:
            status_file.write(copy, status)
        except OSError:
            pass  # the run directory's copy is the record; the job script then finds no status file
    return status

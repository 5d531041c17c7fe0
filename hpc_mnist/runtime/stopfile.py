"""The stop file: a file whose existence asks the ranks to stop at their next check with a checkpoint, read as
the deadline (deadline.py). Job scripts name it ($HPC_MNIST_STOP_FILE, under runs/.jobs) and touch it on the
scheduler's time-limit warning; a run outside a job uses `<run_dir>/stop`. status.json names it
(`stop_file`), so that `hpc-mnist stop` finds it from any host that sees the run directory.

What is in the file says who asked: empty (a job script's `touch`) is the time limit, and the run's job continues
it; a user's request (`hpc-mnist stop`) holds a JSON object with "by": "user", and the run then ends as after a
scancel: status.json says `reason` "user stop", `requeue` false. Standard library only (a login node reads it).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from pathlib import Path

from hpc_mnist.runtime.status import USER_STOP

VAR = "HPC_MNIST_STOP_FILE"
NAME = "stop"  # in the run directory, where no job script names another


def path_for(run_dir: str | os.PathLike) -> str:
    """The stop file this process watches for the run in `run_dir`: the job's, else the run directory's."""
    return os.environ.get(VAR) or os.path.abspath(os.path.join(run_dir, NAME))


def request(path: str | os.PathLike) -> None:
    """A user's stop request, written whole (a rank that sees the name sees the content)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"by": "user", "user": getpass.getuser(), "host": socket.gethostname(),
                               "time": round(time.time(), 3)}) + "\n")
    os.replace(tmp, path)


def reason(reason: str | None, run_dir: str | os.PathLike) -> str | None:
    """Why a run stopped, as its records say it: a deadline stop that a user's request caused is "user stop"
    (status.json, summary.json and the console agree; the job then ends, not requeued)."""
    return USER_STOP if reason == "deadline" and by_user(path_for(run_dir)) else reason


def by_user(path: str | os.PathLike | None) -> bool:
    """Whether `path` holds a user's stop request (not the time limit's empty file, not nothing)."""
    try:
        request = json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return False
    return isinstance(request, dict) and request.get("by") == "user"

"""The package's commands as real processes, started as a user would: from the repository, in an environment
without any launcher's or scheduler's variables."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "PMI", "PALS_", "MPI_LOCAL", "OMPI_", "SLURM_", "PBS_")


def clean_env(*more_prefixes: str, **values: str) -> dict[str, str]:
    """This environment without launcher or scheduler variables (and `more_prefixes`), plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((*LAUNCH_VARS, *more_prefixes))}
    env.update(values)
    return env


def free_port() -> int:
    """A port the OS has just handed out: fixed ports collided when tests ran side by side."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: list[str], *, launcher: list[str] | None = None, program: list[str] | None = None,
              env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer (or `program`) in fresh processes under `launcher`, as a user would."""
    cmd = (launcher or [sys.executable]) + (program or ["-m", "hpc_mnist.train"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**(env or {})),
                          cwd=REPO)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def popen(args: list[str], launcher: list[str]) -> subprocess.Popen:
    """The trainer under `launcher`, in a session of its own (a test can signal the whole group)."""
    return subprocess.Popen([*launcher, "-m", "hpc_mnist.train", *args], cwd=REPO, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def worker_pids(agent_pid: int) -> dict[int, int]:
    """torchrun's worker processes by rank, read from their environments."""
    found = {}
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(child)
    return found


LABEL = re.compile(r"\[rank \d+ \S+\] ")  # what a rank other than 0 prints starts so (runtime/labels.py)


def error_lines(err: str) -> list[str]:
    """hpc_mnist's own error lines in what a process wrote to stderr (a launcher's report left out), without the
    label of a rank other than 0."""
    lines = (LABEL.sub("", line, count=1) if LABEL.match(line) else line for line in err.splitlines())
    return [line for line in lines if line.startswith("hpc_mnist: error")]

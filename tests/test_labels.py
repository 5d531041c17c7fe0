"""Output of ranks other than 0 labelled line by line with rank and host (runtime/labels.py): Python and C-level
prints, warnings, a line without its end, and the faulthandler stack of a rank that crashes; rank 0 as it was.
Real processes: one that calls label_output as a given rank, and the trainer under torchrun and MPICH's mpiexec
with its rank 1 killed by SIGSEGV mid-run (its stack reaches the launcher's output labelled)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from helpers.commands import ENDLESS_CNN, MPIEXEC, torchrun
from helpers.processes import REPO, clean_env, popen
from helpers.runs import wait_for_rows

HOST = socket.gethostname()
# What a rank prints by every route: Python, a warning, C's printf, a line finished later; then, asked to, a crash.
PROGRAM = r"""
import ctypes, faulthandler, sys, warnings
from hpc_mnist.runtime import labels
labels.label_output(int(sys.argv[1]))
print("python line one\npython line two")
warnings.warn("a warning")
libc = ctypes.CDLL(None)
libc.printf(b"c level line\n")
libc.fflush(None)
sys.stderr.write("half a line, ")
sys.stderr.flush()
sys.stderr.write("then its end\n")
if sys.argv[2:] == ["crash"]:
    faulthandler.enable()
    ctypes.string_at(0)
"""


def run(rank: int, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, str(rank), *more], capture_output=True, text=True,
                          cwd=REPO, env=clean_env(), timeout=60)


def test_every_line_of_a_rank_other_than_0_is_labelled_python_c_warnings_and_a_crash_stack():
    done = run(3, "crash")
    assert done.returncode == -signal.SIGSEGV
    label = f"[rank 3 {HOST}] "
    assert done.stdout.splitlines() == [f"{label}python line one", f"{label}python line two", f"{label}c level line"]
    err = done.stderr.splitlines()
    assert all(line.startswith(label) for line in err), done.stderr
    assert f"{label}half a line, then its end" in err and any("UserWarning: a warning" in line for line in err)
    assert f"{label}Fatal Python error: Segmentation fault" in err  # written as the process died
    assert any(line.startswith(f'{label}  File "<string>", line ') and line.endswith("in <module>") for line in err)


def test_rank_0_prints_as_it_did():
    done = run(0)
    assert done.returncode == 0
    assert done.stdout == "python line one\npython line two\nc level line\n"
    assert "half a line, then its end\n" in done.stderr and "[rank" not in done.stderr


def crash_rank_1(launcher: list[str], tmp_path) -> tuple[str, str]:
    """The trainer under `launcher`, 2 ranks; once it trains, rank 1 gets SIGSEGV (with faulthandler on, as
    PYTHONFAULTHANDLER=1 sets it at start-up): the launcher's stdout and stderr."""
    proc = popen([*ENDLESS_CNN, "dist.timeout=30", f"log.dir={tmp_path}", "log.name=r"], launcher)
    try:
        wait_for_rows(tmp_path / "r", 1, proc)
        pids = json.loads((tmp_path / "r" / "ranks.json").read_text())["pids"]
        os.kill(pids[1], signal.SIGSEGV)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


LAUNCHERS = {"torchrun": torchrun(2), "mpiexec": [MPIEXEC or "mpiexec", "-n", "2", sys.executable]}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torchrun", "mpiexec"])
def test_a_crashing_rank_1s_stack_reaches_the_launchers_output_labelled_and_rank_0s_console_is_unchanged(
        name, tmp_path, monkeypatch):
    if name == "mpiexec" and not MPIEXEC:
        pytest.skip("no mpiexec (pip install mpich)")
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")
    out, err = crash_rank_1(LAUNCHERS[name], tmp_path)
    label = f"[rank 1 {HOST}] "
    assert f"{label}Fatal Python error: Segmentation fault" in err.splitlines(), err[-3000:]
    stack = [line for line in err.splitlines() if line.startswith(f"{label}  File ")]
    assert stack and any("hpc_mnist" in line for line in stack), err[-3000:]
    assert "[rank 0" not in out + err  # rank 0 prints as it did: its table rows, unlabelled
    assert any(line.split()[:1] == ["1"] for line in out.splitlines()), out[-2000:]  # epoch 1's row

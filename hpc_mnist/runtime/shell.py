"""Asking a scheduler's client (squeue, scontrol, qstat, qsub): its output, or one line that names the command
and what it said. Standard library only: job scripts' helpers import it before any torch."""

from __future__ import annotations

import subprocess

from hpc_mnist.errors import UserError


def output(cmd: list[str], timeout: float) -> str:
    """The command's standard output; a UserError naming it when it cannot run, times out or fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"{cmd[0]} failed: {e}") from None
    if done.returncode != 0:
        raise UserError(f"{cmd[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout

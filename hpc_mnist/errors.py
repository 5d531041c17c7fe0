"""The one exception type for mistakes a user can make (bad config, missing data, wrong launcher), and the
one way every tool reports them: a single `hpc_mnist: error: ...` line and a non-zero exit.

The entry points catch it, print its message as a single line (once, from rank 0, when every rank
has the same error), and exit with `exit_code`. Anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Every exit code of the package, in one place (the train command's docstring says what each means to a user).
EXIT_USAGE = 2  # a usage or input error: one line says which
EXIT_DIVERGED = 3  # the loss became non-finite
EXIT_HUNG = 4  # a rank went quiet, or a collective timed out: a rank hung; every rank's stacks are in the run directory
EXIT_RANK_LOST = 5  # a rank died; the newest checkpoint is kept
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early with a checkpoint written; run the same command again to continue
EXIT_ABORTED = 128 + signal.SIGINT  # a second Ctrl-C: stop now, as a shell would report it


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *, on_all_ranks: bool = False,
                 status: dict | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.on_all_ranks = on_all_ranks
        self.status = status or {}  # facts for status.json when the run fails of it (reason, rank, ...)


def report(error: UserError) -> int:
    """Print the error as the one line every tool uses (one process; ranks go through dist.report_error)."""
    print(f"hpc_mnist: error: {error}", file=sys.stderr, flush=True)
    return error.exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are the project's one line (`PROG: what`, and where --help is), exit 2, rather
    than argparse's usage block and `PROG: error:`."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"hpc_mnist: error: {self.prog}: {message} (see {self.prog} --help)\n")


def comma_list(kind: Callable[[str], Any] = str, *, positive: bool = False) -> Callable[[str], list[Any]]:
    """An argparse `type=` for `a,b,c`: the items as `kind` (empty ones skipped), so that every tool's list
    options read and fail alike. `positive` (counts): at least one item, each at least 1."""

    def parse(text: str) -> list[Any]:
        values = [kind(v) for v in text.split(",") if v]  # ValueError: argparse's 'invalid comma list of int value'
        if positive and (not values or min(values) < 1):
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        return values

    parse.__name__ = f"comma list of {kind.__name__}"
    return parse


def one_line(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A tool's main whose every user mistake ends as one line: a UserError it did not catch itself, or a
    file system error on a path the user gave (an input that is not there, an output that cannot be written)."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as e:
            return report(e)
        except OSError as e:
            if e.filename is None:
                raise
            return report(UserError(f"{e.filename}: {e.strerror or e}"))

    return wrapped


def writable_file(path: str | os.PathLike) -> Path:
    """`path` as an output file that can be written (its folder created), checked before any work is done, so
    that figures are never measured and then lost to a mistyped path; one line when it cannot be."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "a"):
            pass
        if not existed:
            out.unlink()
    except OSError as e:
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else e.strerror or e
        raise UserError(f"cannot write {out}: {why}") from None
    return out

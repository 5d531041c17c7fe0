"""The one exception type for mistakes a user can make (bad config, missing data, wrong launcher).

The entry points catch it, print its message as a single line (once, from rank 0, when every rank
has the same error), and exit with `exit_code`. Anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2


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

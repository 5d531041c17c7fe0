"""hpc-mnist status [RUNS_DIR|RUN_DIR ...]: one row per run (state, why it ended, its jobs, progress, accuracy,
newest checkpoint, time, an estimate of the time to finish, hosts named bad). Reads files only: no locks, no
writes, no torch, so it is safe and quick on a login node while the runs write to the same file system.

    hpc-mnist status                 # every run under runs/ (log.dir)
    hpc-mnist status runs/cnn ~/old  # a run directory, a folder of runs, ...
    hpc-mnist status --watch         # refresh in place every 5 s (Ctrl-C ends it)
    hpc-mnist status --json          # for scripts
"""

from __future__ import annotations

import os
import sys
import time

from hpc_mnist.errors import ArgumentParser, one_line
from hpc_mnist.overview.table import as_json, console, table
from hpc_mnist.runtime import runinfo

PROG = "hpc-mnist status"


def gather(paths: list[str], scheduler_timeout: float) -> list[runinfo.RunInfo]:
    runs = runinfo.find(paths)
    runinfo.settle(runs, scheduler_timeout)
    return runs


def watch(paths: list[str], every: float, scheduler_timeout: float) -> int:
    from rich.live import Live

    with Live(table(gather(paths, scheduler_timeout)), console=console(), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(every)
                live.update(table(gather(paths, scheduler_timeout)), refresh=True)
        except KeyboardInterrupt:
            return 0


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", default=["runs"], metavar="RUNS_DIR|RUN_DIR",
                   help="run directories or folders of them (default: runs)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--watch", action="store_true", help="refresh the table in place")
    out.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.add_argument("--every", type=float, default=5.0, metavar="S", help="seconds between refreshes (--watch; 5)")
    p.add_argument("--scheduler-timeout", type=float, default=3.0, metavar="S",
                   help="seconds to wait for squeue, sacct or qstat (3); without an answer the files' word stands")
    args = p.parse_args(argv)
    if args.every <= 0:
        p.error("--every must be more than 0 seconds")
    if args.watch:
        return watch(args.paths, args.every, args.scheduler_timeout)
    runs = gather(args.paths, args.scheduler_timeout)
    try:
        if args.json:
            print(as_json(runs), flush=True)
        else:
            console().print(table(runs))
    except BrokenPipeError:  # `hpc-mnist status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""hpc-mnist stop RUN: ask a running run to stop at its next check with a checkpoint, from any host that sees
its run directory (a login node). The request is the run's stop file (status.json's `stop_file`: the file the
ranks already watch as the deadline, hpc_mnist/runtime/stopfile.py), written with "by": "user": the ranks stop
within 16 steps (at their next check) or at the end of an evaluation, rank 0 writes one checkpoint, status.json
says `stopped`, reason `user stop`, requeue false, and the job ends as after scancel or qdel. The same command
(a job script: the same RUN_NAME) continues the run later.

No --now: the stop file is read at the same checks at which a signal is honoured, so a signal would not stop it
sooner; a stop without a checkpoint is scancel or qdel, and a login node cannot signal a compute node's ranks.
A run that is not running: one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hpc_mnist.errors import ArgumentParser, UserError, one_line
from hpc_mnist.runtime import runinfo, stopfile

PROG = "hpc-mnist stop"


def stop(path: str) -> str:
    """Ask the run in `path` to stop; what was done, in one line. A UserError when it is not running."""
    if not Path(path).is_dir() or not runinfo.is_run(Path(path)):
        raise UserError(f"{path} is not a run directory (hpc-mnist status lists the runs under runs/)")
    run = runinfo.read(path)
    runinfo.settle([run])
    if not run.running:
        why = f": {run.reason}" if run.reason else ""
        raise UserError(f"run {path} is not running ({run.state}{why}): nothing to stop")
    if not run.stop_file:
        raise UserError(f"run {path} was started by an older hpc_mnist whose status.json names no stop file: "
                        "stop its job with scancel or qdel (it stops with a checkpoint)")
    if run.stop_requested:
        return f"run {path} was asked to stop already; it stops at its next check ({run.stop_file})"
    try:
        stopfile.request(run.stop_file)
    except OSError as e:
        raise UserError(f"cannot write the stop file {run.stop_file}: {e.strerror or e}") from None
    where = f" on {run.host}" if run.host else ""
    return (f"asked run {path} (rank 0{where}) to stop at its next check with a checkpoint ({run.stop_file}); its "
            "job then ends, not requeued: hpc-mnist status shows when it has stopped")


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="the run directory (runs/<name>)")
    args = p.parse_args(argv)
    print(stop(args.run))  # not running: a UserError, exit 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

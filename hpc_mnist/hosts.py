"""hpc-mnist hosts RUN_DIR [--clear [HOST ...]]: the hosts a run will not use again, and the one way to clear
them. The job scripts record a host as bad when its ranks were lost (hpc_mnist/runtime/badhosts.py,
<run_dir>/bad-hosts.json); a requeue, a PBS successor and every later launch of the run avoid it. Clear a host
once it is repaired, or the list when a resubmission should be free to use any host."""

from __future__ import annotations

import sys
from pathlib import Path

from hpc_mnist.errors import ArgumentParser, UserError, one_line
from hpc_mnist.runtime import badhosts

PROG = "hpc-mnist hosts"


def show(run_dir: Path) -> None:
    hosts = badhosts.read(run_dir)
    if not hosts:
        print(f"{run_dir}: no bad hosts recorded")
        return
    for host, record in hosts.items():
        job = f", job {record.get('job')}" if record.get("job") else ""
        print(f"{host}  {record.get('when', '?')}{job}: {record.get('why', '?')}")


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (runs/<name>)")
    p.add_argument("--clear", nargs="*", metavar="HOST", default=None,
                   help="forget these hosts (all of them when none are named)")
    args = p.parse_args(argv)
    if not args.run_dir.is_dir():
        raise UserError(f"no run directory {args.run_dir}")
    if args.clear is None:
        show(args.run_dir)
        return 0
    gone = badhosts.clear(args.run_dir, args.clear)
    print(f"cleared {', '.join(gone)}: the run may use {'it' if len(gone) == 1 else 'them'} again" if gone
          else f"{args.run_dir}: no bad hosts recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

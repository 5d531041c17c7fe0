"""What the job scripts (launch/jobs.sh) ask of the package after their launch: the run's status file read and
kept by its one set of rules (hpc_mnist/runtime/status.py), and the PBS job that continues a run. Not a user's
verb: a job script runs it, with the job's PYTHON.

    python -m hpc_mnist.job after-launch --scheduler slurm|pbs --exit N [--stopping SIG] [--status FILE]
        The launch ended with exit status N. A status still `running` means its ranks died before they could
        record why: say so in one line and mark both copies (FILE and the run directory's status.json) failed,
        reason gone, asking for the run to continue only when this job had saved a checkpoint and was not being
        stopped (SIG: the signal that is stopping the job). Then exit 0 and print two lines, why the run stopped
        and the run directory's name, when the status asks for the run to continue (requeue true); else exit 1,
        printing nothing. A status file that is not there: exit 1; one that cannot be read: one line, exit 2.
    python -m hpc_mnist.job continue-pbs --script "$0" --run-name NAME --count N [--job ID]
        Submit the PBS job that continues this job's run once this job has ended; print its id.
"""

from __future__ import annotations

import os
import sys

from hpc_mnist.errors import ArgumentParser, UserError, one_line
from hpc_mnist.runtime import pbs, status

PROG = "python -m hpc_mnist.job"
CONTINUE, DONE = 0, 1  # after-launch's exit statuses (a mistake: 2, errors.EXIT_USAGE)


def gone_line(code: int, ended: dict) -> str:
    """What the job's log says when the launch ended (exit `code`) with the status still running; `ended`: that
    status as status.after_launch leaves it."""
    if ended.get("requeue") and ended.get("checkpoint"):
        kept = f"this job had saved {str(ended['checkpoint']).rpartition('/')[2]}, the newest checkpoint"
    else:
        kept = f"the newest checkpoint is kept: resubmit with RUN_NAME={status.run_name(ended)} to continue"
    return (f"hpc_mnist: the launch ended (exit {code}) without the ranks recording why: a rank or its node died "
            f"(the OOM killer, a node failure; the launcher's report above names it); {kept}")


def after_launch(path: str, code: int, scheduler: str, stopping: bool) -> int:
    job_copy = status.read(path)
    if job_copy is None:
        return DONE  # the ranks recorded nothing (a start that failed): the launch's own report says why
    if status.running(job_copy):
        ended = status.after_launch(job_copy, stopping=stopping)
        print(gone_line(code, ended), file=sys.stderr, flush=True)
        write(path, ended)
        run_dir = str(job_copy.get("run_dir") or "")
        record = read_quietly(os.path.join(run_dir, status.NAME)) if run_dir else None
        if record is not None and status.running(record):  # not when a later writer has said more since
            write(os.path.join(run_dir, status.NAME), status.after_launch(record, stopping=stopping))
        job_copy = ended
    if job_copy.get("requeue") is not True:
        return DONE
    print(status.why_stopped(job_copy, scheduler))
    print(status.run_name(job_copy))
    return CONTINUE


def read_quietly(path: str) -> dict | None:
    """The run directory's copy, or None where it is missing or unreadable: the job's copy decides."""
    try:
        return status.read(path)
    except UserError:
        return None


def write(path: str, data: dict) -> None:
    try:
        status.write(path, data)
    except OSError as e:
        raise UserError(f"cannot write the status file {path}: {e.strerror or e}") from None


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    after = sub.add_parser("after-launch", prog=f"{PROG} after-launch",
                           help="after the launch: mark a status left running gone; say whether to continue the run")
    after.add_argument("--scheduler", choices=("slurm", "pbs"), required=True)
    after.add_argument("--exit", type=int, required=True, metavar="N", help="the launch's exit status")
    after.add_argument("--stopping", default="", metavar="SIG",
                       help="the signal that is stopping the job (the job script's JOB_STOPPING), if any")
    after.add_argument("--status", default=os.environ.get(status.STATUS_FILE_VAR, ""), metavar="FILE",
                       help=f"the job's status file (default ${status.STATUS_FILE_VAR})")
    cont = sub.add_parser("continue-pbs", prog=f"{PROG} continue-pbs",
                          help="submit the job that continues this job's run after it ends")
    cont.add_argument("--script", required=True, help="the job script to submit (PBS's copy: $0 in the job)")
    cont.add_argument("--run-name", required=True, help="the run directory's name (RUN_NAME of the successor)")
    cont.add_argument("--count", type=int, required=True,
                      help="jobs that will have carried the run, the successor included")
    cont.add_argument("--job", default=os.environ.get("PBS_JOBID", ""), help="this job's id (default $PBS_JOBID)")
    args = p.parse_args(argv)
    if args.command == "after-launch":
        if not args.status:
            p.error(f"after-launch needs --status FILE or ${status.STATUS_FILE_VAR}")
        return after_launch(args.status, args.exit, args.scheduler, stopping=bool(args.stopping))
    if not args.job:
        raise UserError("no PBS job here (PBS_JOBID is not set): nothing to continue")
    print(pbs.submit_continuation(args.job, args.script, args.run_name, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())

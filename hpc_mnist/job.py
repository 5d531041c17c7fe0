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
        Also: record the hosts the status names bad (`bad_hosts`) in the run directory's bad-hosts.json
        (hpc_mnist/runtime/badhosts.py), and count the launches in a row that ended without a new checkpoint
        (runtime/chain.py): at --max-fruitless of them (0: never) the run is not continued, said in one line.
    python -m hpc_mnist.job before-launch --scheduler slurm|pbs [--job ID --link N --max-fruitless N] -- \
            --config FILE [section.key=value ...]
        Before any launch: the job's hosts less the run's bad ones too few for the job, or --max-fruitless
        launches in a row of this chain without a new checkpoint, is one line, exit 2.
    python -m hpc_mnist.job requeue-slurm [--job ID] [--status FILE]
        Requeue this Slurm job, its excluded nodes updated with the run's bad hosts (runtime/slurm.py).
    python -m hpc_mnist.job continue-pbs --script "$0" --run-name NAME --count N [--job ID] [--status FILE]
        Submit the PBS job that continues this job's run once this job has ended, placed on hosts that are not
        the run's bad ones; print its id.
"""

from __future__ import annotations

import argparse
import os
import sys

from hpc_mnist.errors import ArgumentParser, UserError, one_line
from hpc_mnist.runtime import badhosts, chain, pbs, slurm, status

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


def after_launch(path: str, code: int, scheduler: str, stopping: bool, job: str = "", link: int = 0,
                 max_fruitless: int = 0) -> int:
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
    run_dir = str(job_copy.get("run_dir") or "")
    fruitless = 0
    if run_dir and os.path.isdir(run_dir):
        note_bad_hosts(run_dir, job_copy, job)
        fruitless = chain.count(run_dir, job_copy.get("checkpoint"), job, link, job_copy.get("time"))
    if job_copy.get("requeue") is not True:
        return DONE
    if max_fruitless and fruitless >= max_fruitless:
        print(f"hpc_mnist: {chain.stop_line(fruitless, max_fruitless, status.run_name(job_copy), 'not continuing')}",
              file=sys.stderr, flush=True)
        return DONE
    print(status.why_stopped(job_copy, scheduler))
    print(status.run_name(job_copy))
    return CONTINUE


def note_bad_hosts(run_dir: str, st: dict, job: str) -> None:
    """Record the hosts the status names bad, and say so in one line."""
    named = [str(h) for h in st.get("bad_hosts") or []]
    new = badhosts.add(run_dir, named, badhosts.why(st), job) if named else []
    if new:
        print(f"hpc_mnist: recorded {', '.join(new)} as bad in {os.path.join(run_dir, badhosts.NAME)} "
              f"({badhosts.why(st)}): this run will not use {'it' if len(new) == 1 else 'them'} again "
              f"(`hpc-mnist hosts {run_dir} --clear` clears the list)", file=sys.stderr, flush=True)


def run_dir_of(status_path: str) -> str:
    """The run directory the job's status copy names ('' where there is none)."""
    st = status.read(status_path) if status_path else None
    return str((st or {}).get("run_dir") or "")


def bad_of(status_path: str) -> list[str]:
    """The run's bad hosts, found through the job's status copy."""
    run_dir = run_dir_of(status_path)
    return list(badhosts.read(run_dir)) if run_dir else []


def before_launch(scheduler: str, words: list[str], job: str, link: int, max_fruitless: int) -> int:
    """Before any launch of the run the launch's config words name: too few good hosts in the allocation
    (badhosts.check), or a chain that has made no progress in `max_fruitless` launches (one a scheduler
    reran by itself: Slurm's NODE_FAIL requeue, PBS's rerun), is one line, exit 2; nothing is deleted."""
    from hpc_mnist.core import config  # yaml, no torch
    from hpc_mnist.runtime.jobid import job_name

    args = config.parser(f"{PROG} before-launch", "the launch's config words").parse_args(words)
    cfg = config.build(args.config, args.overrides)
    name = cfg.log.name or job_name()
    run_dir = os.path.join(cfg.log.dir, name or "")
    if not name or not os.path.isdir(run_dir):
        return 0  # a new run: nothing recorded yet
    catch_up(run_dir, job, link)
    if max_fruitless and (fruitless := chain.fruitless(run_dir, job, link)) >= max_fruitless:
        raise UserError(chain.stop_line(fruitless, max_fruitless, name, "not launching"))
    if bad := badhosts.read(run_dir):
        hosts = allocation(scheduler)
        badhosts.check(hosts, bad, len(hosts), run_dir)
    return 0


def catch_up(run_dir: str, job: str, link: int) -> None:
    """Do what the last launch's after-launch could not: a job script killed before it (Slurm's own requeue
    after a node failure: measured on the lab, the job is cancelled "DUE TO NODE FAILURE" seconds after rank 0
    named the ranks lost there) recorded neither the bad hosts its status names nor the launch."""
    st = read_quietly(os.path.join(run_dir, status.NAME))
    if st is None or status.running(st) or st.get("time") is None or st.get("time") == chain.counted(run_dir):
        return
    note_bad_hosts(run_dir, st, job)
    chain.count(run_dir, st.get("checkpoint"), job, max(link - 1, 0), st.get("time"))


def allocation(scheduler: str) -> list[str]:
    """The job's hosts: Slurm's node list, PBS's node file (each host once, in order)."""
    if scheduler == "slurm":
        return slurm.hostnames(os.environ.get("SLURM_JOB_NODELIST", ""))
    nodefile = os.environ.get("PBS_NODEFILE", "")
    try:
        with open(nodefile) as f:
            return list(dict.fromkeys(line.strip() for line in f if line.strip()))
    except OSError as e:
        raise UserError(f"cannot read PBS_NODEFILE {nodefile!r}: {e.strerror or e}") from None


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
    before = sub.add_parser("before-launch", prog=f"{PROG} before-launch",
                            help="before the launch: too few good hosts, or a chain without progress, is one line")
    before.add_argument("--scheduler", choices=("slurm", "pbs"), required=True)
    before.add_argument("words", nargs=argparse.REMAINDER, help="-- then the launch's --config FILE and overrides")
    for each in (after, before):
        each.add_argument("--job", default="", help="this job's id (the record of bad hosts, the chain's count)")
        each.add_argument("--link", type=int, default=0, metavar="N",
                          help="the job's place in its chain (SLURM_RESTART_COUNT, RESUBMIT_COUNT; 0: a first job)")
        each.add_argument("--max-fruitless", type=int, default=0, metavar="N",
                          help="stop the chain after N launches in a row without a new checkpoint (0: never)")
    requeue = sub.add_parser("requeue-slurm", prog=f"{PROG} requeue-slurm",
                             help="requeue this Slurm job away from the run's bad hosts")
    requeue.add_argument("--job", default=os.environ.get("SLURM_JOB_ID", ""), help="the job (default $SLURM_JOB_ID)")
    cont = sub.add_parser("continue-pbs", prog=f"{PROG} continue-pbs",
                          help="submit the job that continues this job's run after it ends")
    cont.add_argument("--script", required=True, help="the job script to submit (PBS's copy: $0 in the job)")
    cont.add_argument("--run-name", required=True, help="the run directory's name (RUN_NAME of the successor)")
    cont.add_argument("--count", type=int, required=True,
                      help="jobs that will have carried the run, the successor included")
    cont.add_argument("--job", default=os.environ.get("PBS_JOBID", ""), help="this job's id (default $PBS_JOBID)")
    for each in (requeue, cont):
        each.add_argument("--status", default=os.environ.get(status.STATUS_FILE_VAR, ""), metavar="FILE",
                          help=f"the job's status file, naming the run directory (default ${status.STATUS_FILE_VAR})")
    args = p.parse_args(argv)
    if args.command == "after-launch":
        if not args.status:
            p.error(f"after-launch needs --status FILE or ${status.STATUS_FILE_VAR}")
        return after_launch(args.status, args.exit, args.scheduler, stopping=bool(args.stopping), job=args.job,
                            link=args.link, max_fruitless=args.max_fruitless)
    if args.command == "before-launch":
        return before_launch(args.scheduler, args.words[1:] if args.words[:1] == ["--"] else args.words, args.job,
                             args.link, args.max_fruitless)
    if not args.job:
        raise UserError("no Slurm job here (SLURM_JOB_ID is not set): nothing to requeue"
                        if args.command == "requeue-slurm" else
                        "no PBS job here (PBS_JOBID is not set): nothing to continue")
    if args.command == "requeue-slurm":
        excluded = slurm.requeue(args.job, bad_of(args.status))
        if excluded:
            print(f"hpc_mnist: job {args.job} requeued excluding {', '.join(excluded)} (the run's bad hosts)")
        return 0
    print(pbs.submit_continuation(args.job, args.script, args.run_name, args.count, avoid=bad_of(args.status)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

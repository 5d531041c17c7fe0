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
        With --launch-output FILE (the launch's output, kept), a host where the launcher's report says a rank
        died (runtime/launch_report.py: MPICH's mpiexec kills the rest before they can say) is named bad there.
        Also: record the hosts the status names bad (`bad_hosts`) in the run directory's bad-hosts.json
        (hpc_mnist/runtime/badhosts.py), and count the launches in a row that ended without a new checkpoint
        (runtime/chain.py): at --max-fruitless of them (0: never) the run is not continued, said in one line.
        With --restarts-left N (N > 0) a third line says where the run continues: `here` (relaunch inside this
        job: a rank or host failed and the status names its hosts, and the job's good hosts less --spares K still
        make the launch) or `queue`.
    python -m hpc_mnist.job before-launch --scheduler slurm|pbs [--job ID --link N --max-fruitless N --spares K] \
            -- --config FILE [section.key=value ...]
        Before any launch: the job's hosts less the run's bad ones too few for the job (all but K spares), or
        --max-fruitless launches in a row of this chain without a new checkpoint, is one line, exit 2. Prints the
        hosts to train on and the good hosts (the pre-flight check runs on all of them), each comma-separated, or
        nothing when the launch may use every host of the job (no spares, no bad host).
    python -m hpc_mnist.job after-doctor --report FILE [--job ID] -- --config FILE [section.key=value ...]
        The pre-flight check failed: record the hosts its report blames alone (`bad_hosts`) as bad, say so in one
        line, and exit 0 (pick the hosts again, check again); exit 1 when it blames no new host.
    python -m hpc_mnist.job requeue-slurm [--job ID] [--status FILE]
        Requeue this Slurm job, its excluded nodes updated with the run's bad hosts (runtime/slurm.py).
    python -m hpc_mnist.job continue-pbs --script "$0" --run-name NAME --count N [--job ID] [--status FILE]
        Submit the PBS job that continues this job's run once this job has ended, placed on hosts that are not
        the run's bad ones; print its id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hpc_mnist.errors import ArgumentParser, UserError, one_line
from hpc_mnist.runtime import badhosts, chain, launch_report, pbs, slurm, status

PROG = "python -m hpc_mnist.job"
CONTINUE, DONE = 0, 1  # after-launch's exit statuses (a mistake: 2, errors.EXIT_USAGE)


def gone_line(code: int, ended: dict) -> str:
    """What the job's log says when the launch ended (exit `code`) with the status still running; `ended`: that
    status as status.after_launch leaves it."""
    if ended.get("requeue") and ended.get("checkpoint"):
        kept = f"this job had saved {str(ended['checkpoint']).rpartition('/')[2]}, the newest checkpoint"
    else:
        kept = f"the newest checkpoint is kept: resubmit with RUN_NAME={status.run_name(ended)} to continue"
    where = (f"on {', '.join(ended['bad_hosts'])}, as the launcher's report above says" if ended.get("bad_hosts")
             else "the launcher's report above names it")
    return (f"hpc_mnist: the launch ended (exit {code}) without the ranks recording why: a rank or its node died "
            f"(the OOM killer, a node failure; {where}); {kept}")


def after_launch(path: str, code: int, scheduler: str, stopping: bool, job: str = "", link: int = 0,
                 max_fruitless: int = 0, restarts_left: int = 0, spares: int = 0, report: str = "") -> int:
    job_copy = status.read(path)
    if job_copy is None:
        return DONE  # the ranks recorded nothing (a start that failed): the launch's own report says why
    if status.running(job_copy):
        dead = launch_report.read(report) if report else []  # MPICH's mpiexec names the host, its ranks cannot
        from_report = {"bad_hosts": dead} if dead else {}
        ended = status.after_launch(job_copy, stopping=stopping, **from_report)
        print(gone_line(code, ended), file=sys.stderr, flush=True)
        write(path, ended)
        run_dir = str(job_copy.get("run_dir") or "")
        record = read_quietly(os.path.join(run_dir, status.NAME)) if run_dir else None
        if record is not None and status.running(record):  # not when a later writer has said more since
            write(os.path.join(run_dir, status.NAME), status.after_launch(record, stopping=stopping, **from_report))
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
    if restarts_left > 0:
        # Only a fault that names its hosts (a launch that ended `gone` with no launcher's report to name one
        # might relaunch onto a dead host).
        named = bool(job_copy.get("bad_hosts"))
        here = status.fault(job_copy) and named and not stopping and room_here(scheduler, run_dir, spares)
        print("here" if here else "queue")
    return CONTINUE


def room_here(scheduler: str, run_dir: str, spares: int) -> bool:
    """Whether this job's good hosts still make a launch (all but `spares` of its hosts), the bad ones left out."""
    try:
        hosts = allocation(scheduler)
        bad = badhosts.read(run_dir) if run_dir else {}
    except (UserError, OSError):
        return False  # the hosts cannot be told here: the scheduler's requeue chooses them
    return bool(hosts) and len(badhosts.good(hosts, bad)) >= len(hosts) - spares


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


def before_launch(scheduler: str, words: list[str], job: str, link: int, max_fruitless: int, spares: int = 0) -> int:
    """Before any launch of the run the launch's config words name: too few good hosts in the allocation
    (badhosts.check), or a chain that has made no progress in `max_fruitless` launches (one a scheduler
    reran by itself: Slurm's NODE_FAIL requeue, PBS's rerun), is one line, exit 2; nothing is deleted. Prints
    the hosts to launch on (below)."""
    name, run_dir = run_of(words)
    bad: dict = {}
    if name and os.path.isdir(run_dir):
        catch_up(run_dir, job, link)
        if max_fruitless and (fruitless := chain.fruitless(run_dir, job, link)) >= max_fruitless:
            raise UserError(chain.stop_line(fruitless, max_fruitless, name, "not launching"))
        bad = badhosts.read(run_dir)
    print(" ".join(launch_hosts(scheduler, bad, spares, run_dir)))
    return 0


def launch_hosts(scheduler: str, bad: dict, spares: int, run_dir: str) -> list[str]:
    """[hosts to train on, good hosts] (comma-separated), or [] when a launch may use every host of the job."""
    if spares < 0:
        raise UserError(f"SPARE_NODES={spares}: give 0 or more spare nodes")
    if not spares and not bad:
        return []
    hosts = allocation(scheduler)
    if spares >= len(hosts):
        raise UserError(f"SPARE_NODES={spares} but this job has {len(hosts)} node(s), which leaves none to train "
                        f"on: ask for the nodes to train on plus {spares} (sbatch -N, qsub -l select)")
    nodes = len(hosts) - spares
    good = badhosts.check(hosts, bad, nodes, run_dir)
    return [",".join(good[:nodes]), ",".join(good)]


def after_doctor(report_path: str, words: list[str], job: str) -> int:
    """The pre-flight check failed: record the hosts it blames alone as the run's bad hosts (the run directory
    is made for it: a new run's first launch is the one the check guards)."""
    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return DONE  # the check ended before its report (a missing rank): its own lines say why
    blamed = [str(h) for h in report.get("bad_hosts") or []]
    if not blamed:
        return DONE
    _, run_dir = run_of(words)
    os.makedirs(run_dir, exist_ok=True)
    why = "failed the pre-flight check: " + "; ".join(c.get("message", "") for c in report.get("checks", [])
                                                       if c.get("status") == "fail" and c.get("hosts"))
    new = badhosts.add(run_dir, blamed, why, job)
    if not new:
        return DONE
    print(f"hpc_mnist: {', '.join(new)} failed the pre-flight check ({why.partition(': ')[2]}): recorded as bad in "
          f"{os.path.join(run_dir, badhosts.NAME)}; going on without {'it' if len(new) == 1 else 'them'} if the "
          "job's other hosts suffice", file=sys.stderr, flush=True)
    return CONTINUE


def run_of(words: list[str]) -> tuple[str, str]:
    """The run the launch's config words name: (its name, its directory); ('', log.dir) when no name is known."""
    from hpc_mnist.core import config  # yaml, no torch
    from hpc_mnist.runtime.jobid import job_name

    args = config.parser(f"{PROG}", "the launch's config words").parse_args(words)
    cfg = config.build(args.config, args.overrides)
    name = cfg.log.name or job_name()
    return name or "", os.path.join(cfg.log.dir, name or "")


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
        return pbs.nodefile_hosts(nodefile)
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
    doctor = sub.add_parser("after-doctor", prog=f"{PROG} after-doctor",
                            help="the pre-flight check failed: record the hosts it blames as bad")
    doctor.add_argument("--report", required=True, metavar="FILE", help="the doctor's --json report")
    doctor.add_argument("--job", default="", help="this job's id (the record of bad hosts)")
    doctor.add_argument("words", nargs=argparse.REMAINDER, help="-- then the launch's --config FILE and overrides")
    after.add_argument("--restarts-left", type=int, default=0, metavar="N",
                       help="relaunches this job may still make inside its allocation (0: none; no third line)")
    after.add_argument("--launch-output", default="", metavar="FILE",
                       help="the launch's output, kept: a launcher's report of where a rank died (MPICH's "
                            "mpiexec) names the bad host of a status still running")
    for each in (after, before):
        each.add_argument("--job", default="", help="this job's id (the record of bad hosts, the chain's count)")
        each.add_argument("--link", type=int, default=0, metavar="N",
                          help="the job's place in its chain (SLURM_RESTART_COUNT, RESUBMIT_COUNT; 0: a first job)")
        each.add_argument("--max-fruitless", type=int, default=0, metavar="N",
                          help="stop the chain after N launches in a row without a new checkpoint (0: never)")
        each.add_argument("--spares", type=int, default=0, metavar="K",
                          help="the job's spare nodes (SPARE_NODES): a launch uses all but K of its good hosts")
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
                            link=args.link, max_fruitless=args.max_fruitless, restarts_left=args.restarts_left,
                            spares=args.spares, report=args.launch_output)
    words = getattr(args, "words", [])
    words = words[1:] if words[:1] == ["--"] else words
    if args.command == "before-launch":
        return before_launch(args.scheduler, words, args.job, args.link, args.max_fruitless, args.spares)
    if args.command == "after-doctor":
        return after_doctor(args.report, words, args.job)
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

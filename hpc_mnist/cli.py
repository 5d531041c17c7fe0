"""hpc-mnist: one command for every tool; each verb imports its module only when it runs.

`python -m hpc_mnist.train` stays what launchers start on every rank (`torchrun -m hpc_mnist.train`, the job
scripts); the other `python -m hpc_mnist.<tool>` forms work as before.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from hpc_mnist import errors, resources

VERBS = {  # verb: (module, what it does)
    "train": ("train", "train a model (what every rank runs; `torchrun -m hpc_mnist.train` under a launcher)"),
    "status": ("overview.command", "every run at a glance from a login node: state, why, jobs, progress, ETA"),
    "stop": ("stop", "ask a running run to stop with a checkpoint and end its job (not requeued)"),
    "launch": ("launch", "start a command on every allocated node the way the system wants it"),
    "doctor": ("doctor.command", "pre-flight check of a job: ranks, devices, CPU binding, network, one all-reduce"),
    "data": ("data", "download datasets before a job (MNIST ships with the package)"),
    "bench": ("bench.command", "throughput and time-to-accuracy benchmarks"),
    "comm": ("comm", "all-reduce benchmark, under a launcher (`torchrun ... -m hpc_mnist.comm`)"),
    "scaling": ("scaling.command", "scaling study: run a sweep of jobs, report efficiency"),
    "model": ("model", "predict scaling efficiency from all-reduce measurements"),
    "hosts": ("hosts", "show the hosts a run will not use again (bad-hosts.json); --clear [HOST ...] clears them"),
    "lessons": ("lessons", "reproduce the classic MNIST lessons' published figures"),
    "init": (None, "copy the job scripts, site settings and presets into a folder to edit and submit from"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {summary}" for verb, (_, summary) in VERBS.items()]
    return ("usage: hpc-mnist VERB [options]   (hpc-mnist VERB --help for each; hpc-mnist --version)\n\n"
            + "\n".join(lines))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hpc_mnist")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def init(argv: list[str]) -> int:
    p = errors.ArgumentParser(prog="hpc-mnist init", description=VERBS["init"][1])
    p.add_argument("folder", type=Path, nargs="?", default=Path("."), help="where (default: here)")
    args = p.parse_args(argv)
    try:
        args.folder.mkdir(parents=True, exist_ok=True)
        copied = resources.write_project(args.folder)
    except OSError as e:
        return errors.report(errors.UserError(f"cannot write {args.folder}: {e.strerror or e}"))
    except errors.UserError as e:
        return errors.report(e)
    print(f"wrote {', '.join(f'{p}/' for p in copied)}: edit jobscripts/<system>.sh (account, queue, nodes) and "
          f"launch/<system>.sh (modules), then submit from {args.folder}, e.g. qsub jobscripts/polaris.sh")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"hpc-mnist {version()}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        return errors.report(errors.UserError(f"unknown verb {verb!r}: choose one of {', '.join(VERBS)}"))
    module = VERBS[verb][0]
    if module is None:
        return init(rest)
    return importlib.import_module(f"hpc_mnist.{module}").main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""Scaling studies: run the same training at several sizes, then tabulate and plot speed and accuracy.

    python -m hpc_mnist.scaling run --ranks 1,2 -- --config configs/smoke.yaml     # a workstation
    python -m hpc_mnist.scaling run --nodes 1,2,4,8 -- --config configs/cnn.yaml   # inside a batch job
    python -m hpc_mnist.scaling report runs/scaling-<time>                         # table and plots

`run` starts each point through `python -m hpc_mnist.launch` (torchrun on a workstation, mpiexec on a
subset of the PBS hostfile, srun -N k on Slurm), each in its own run directory, and records the sweep in
sweep.json. Weak mode fixes the batch per rank (the global batch grows with ranks, so the learning rate
is scaled linearly); strong mode fixes the global batch (split across ranks; the learning rate stays).
`report` reads each point's summary.json and metrics.jsonl and writes scaling.csv, scaling.md and PNG
plots (with matplotlib installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc_mnist.errors import ArgumentParser, UserError, comma_list, report
from hpc_mnist.scaling.report import report_folder, report_paths
from hpc_mnist.scaling.run import run_sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist scaling", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run a sweep, then report it", usage="%(prog)s [options] [-- trainer arguments]",
                       description="Train the same configuration at each size. The trainer's arguments after -- "
                       "win over the sweep's own settings; the sweep prints what it sets.")
    sizes = r.add_mutually_exclusive_group()
    counts = comma_list(int, positive=True)
    sizes.add_argument("--ranks", type=counts, default=[1, 2], help="world sizes on this machine (default: 1,2)")
    sizes.add_argument("--nodes", type=counts, help="node counts inside a batch allocation, e.g. 1,2,4,8 "
                       "(default: none; --ranks is used)")
    r.add_argument("--ppn", type=int, default=1, help="ranks per node with --nodes, one per GPU (default: 1)")
    r.add_argument("--system", help="passed to hpc_mnist.launch (default: detected)")
    r.add_argument("--mode", choices=["weak", "strong"], default="weak",
                   help="weak: fixed batch per rank; strong: fixed global batch (default: weak)")
    r.add_argument("--batch", type=int, help="batch per rank (weak) or global batch (strong) "
                   "(default: the configuration's train.batch_size)")
    r.add_argument("--epochs", type=int, help="epochs per point (default: the configuration's train.epochs)")
    r.add_argument("--repeats", type=int, default=1, help="runs per size; the report takes the median (default: 1)")
    r.add_argument("--threads", type=int, help="CPU threads per rank at every point (default: OMP_NUM_THREADS, "
                   "else this node's cores / the most ranks per node of any point)")
    r.add_argument("--target", type=float, default=0.9,
                   help="validation accuracy for 'time to target' (default: 0.9)")
    r.add_argument("--sweep-dir", default="", help="folder of the sweep (default: runs/scaling-<date>-<time>)")
    r.add_argument("--predict", action="store_true",
                   help="after the points, time the all-reduce (hpc_mnist.comm) at the two smallest sizes with more "
                   "than one rank, fit the scaling model there and put its prediction and error beside each point")
    r.add_argument("--dry-run", action="store_true", help="print each point's launch line, run nothing")
    r.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: arguments for hpc_mnist.train")
    rep = sub.add_parser("report", help="tables and plots from sweep or run directories")
    rep.add_argument("paths", nargs="+", type=Path)
    rep.add_argument("--target", type=float, default=0.9,
                     help="validation accuracy for 'time to target' (default: 0.9)")
    rep.add_argument("--out", type=Path, help="output folder (default: the first path when it is a sweep folder; "
                     "run directories need --out)")
    rep.add_argument("--comm", type=Path, action="append", help="an all-reduce benchmark's JSON (hpc_mnist.comm "
                     "--json), once per host count it ran at (e.g. 2 and 3 hosts): the scaling model is fitted on "
                     "them, the 1-rank point and the points at those rank counts, and its predicted samples/s, "
                     "error, regime and communication share go beside each point (default: none)")
    rep.add_argument("--model", choices=["linear", "mlp", "cnn"],
                     help="the model trained, for --comm: that preset's defaults (default: the model section of the "
                     "runs' config.yaml)")
    args = p.parse_args(argv)
    if args.verb == "run" and args.trainer_args[:1] == ["--"]:
        args.trainer_args = args.trainer_args[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["comm"]:
        return report(UserError("the all-reduce benchmark has one home now: python -m hpc_mnist.comm under the "
                                "launcher (torchrun ... -m hpc_mnist.comm, mpiexec ... python -m hpc_mnist.comm)"))
    args = parse_args(argv)
    try:
        if args.verb == "run":
            return run_sweep(args)
        return report_paths(args.paths, args.target, args.out or report_folder(args.paths[0]), args.comm, args.model)
    except UserError as e:
        return report(e)

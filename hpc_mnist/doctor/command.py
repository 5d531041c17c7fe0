"""Pre-flight check of a distributed launch: where every rank runs, and whether that is sane.

    torchrun --standalone --nproc_per_node=2 -m hpc_mnist.doctor
    mpiexec -n 8 --ppn 4 ... python -m hpc_mnist.doctor        # or through hpc_mnist.launch, srun, ...

Every rank checks in with rank 0 through a small key-value store (its own short timeout, so a missing rank
is named in seconds instead of hanging for the collective timeout). Rank 0 prints a table (rank, host, local
rank, device, CPU affinity, threads) and one verdict per check, then all ranks exit 0 when healthy and 1
when a check failed. Checks that only mean something across hosts (the master address) or under a launcher
that binds ranks to cores (overlapping CPU sets) apply only there, so a healthy single-host run passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch.distributed as tdist

from hpc_mnist.core import config
from hpc_mnist.doctor import storage
from hpc_mnist.doctor.protocol import Failure, diagnose
from hpc_mnist.doctor.render import show
from hpc_mnist.errors import ArgumentParser, UserError, report, writable_file
from hpc_mnist.runtime import rundir

DEFAULT_TIMEOUT = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist doctor", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=float(os.environ.get("HPC_MNIST_DOCTOR_TIMEOUT", DEFAULT_TIMEOUT)),
                   help="seconds to wait for every rank to check in, and for the all-reduce "
                   f"(default: $HPC_MNIST_DOCTOR_TIMEOUT or {DEFAULT_TIMEOUT:g})")
    p.add_argument("--init", default="auto", choices=["auto", "torchrun", "mpi", "slurm", "none"],
                   help="how to find the ranks, as the trainer's dist.init (default: auto)")
    p.add_argument("--device", default="auto", help="as train.device (default: auto)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "xccl", "gloo"], help="(default: auto)")
    p.add_argument("--json", type=Path, help="also write the report as JSON (rank 0)")
    p.add_argument("--config", metavar="FILE", help="the run's YAML, as the trainer's: its run directory's storage "
                   "is checked (writable from every host, shared between hosts, room for its checkpoints)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="the run's overrides, as the trainer's")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        json_out = writable_file(args.json) if args.json else None  # before the check, not after it
        args.cfg = config.build(args.config, args.overrides)
        args.storage = storage.as_dict(storage.probe(rundir.path_for(args.cfg, args.config)))
        code, result = diagnose(args)
    except UserError as e:
        return report(e)
    except Failure as e:
        print(f"hpc_mnist.doctor: FAIL {e}", file=sys.stderr, flush=True)
        return 1
    except tdist.DistError as e:  # a peer vanished during the all-reduce
        print(f"hpc_mnist.doctor: FAIL all-reduce did not complete within {args.timeout:g} s: "
              f"{str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        return 1
    finally:
        storage.remove(getattr(args, "storage", None))  # after rank 0 has looked for it (the verdict)
    if result is not None:
        show(result)
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
    return code

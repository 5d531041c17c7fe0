"""Fetch the dataset files where there is internet, before a job on compute nodes that have none.

    hpc-mnist data download --name kmnist --root /path/to/datasets   # fashion_mnist | kmnist | all

MNIST ships inside the package: nothing to fetch. The files are read by hpc_mnist.core.datasets.
"""

from __future__ import annotations

import sys

from hpc_mnist.core.config import DataConfig
from hpc_mnist.core.datasets import BUNDLED, DATASETS, prepare
from hpc_mnist.errors import ArgumentParser, UserError, one_line, report


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="hpc-mnist data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch dataset files (run where there is internet; MNIST needs none)")
    dl.add_argument("--root", default="",
                    help="target folder, created if missing (default $HPC_MNIST_DATA, else ./data; MNIST: the "
                         "bundled copy, nothing to fetch)")
    dl.add_argument("--name", default="mnist", choices=[*DATASETS, "all"], help="dataset (default mnist)")
    args = p.parse_args(argv)
    try:
        for name in DATASETS if args.name == "all" else [args.name]:
            root = prepare(DataConfig(name=name, root=args.root, download=True), command=True)
            print(f"{name}: ready in {root}" + (" (bundled with hpc_mnist)" if root == BUNDLED else ""))
    except UserError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())

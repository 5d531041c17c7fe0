"""python -m hpc_mnist.bench: the same as hpc-mnist bench (and each rank of its weak-scaling runs)."""

import sys

from hpc_mnist.bench.command import main

if __name__ == "__main__":
    sys.exit(main())

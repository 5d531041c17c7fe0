"""python -m hpc_mnist: the same as the hpc-mnist command."""

import sys

from hpc_mnist.cli import main

if __name__ == "__main__":
    sys.exit(main())

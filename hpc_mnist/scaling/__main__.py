"""python -m hpc_mnist.scaling: the same as hpc-mnist scaling."""

import sys

from hpc_mnist.scaling.command import main

if __name__ == "__main__":
    sys.exit(main())

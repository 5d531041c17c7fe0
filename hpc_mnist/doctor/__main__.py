"""python -m hpc_mnist.doctor: the same as hpc-mnist doctor."""

import sys

from hpc_mnist.doctor.command import main

if __name__ == "__main__":
    sys.exit(main())

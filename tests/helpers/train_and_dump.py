"""Test helper: train exactly as `python -m hpc_mnist.train` does, then save this rank's parameters.

Usage: python train_and_dump.py OUT_DIR [trainer arguments...]   (under torchrun or mpiexec)
"""

import sys
from pathlib import Path

import torch

from hpc_mnist import train
from hpc_mnist.core import config
from hpc_mnist.runtime import dist

out = Path(sys.argv[1])
args = config.parser("train_and_dump", "").parse_args(sys.argv[2:])
result = train.run(config.build(args.config, args.overrides))
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
dist.shutdown()

"""The pre-flight doctor (`python -m hpc_mnist.doctor`, `hpc-mnist doctor`): each rank describes itself
(`ranks.py`), checks in with rank 0 (`protocol.py`), all ranks run one timed all-reduce (`allreduce.py`), and
rank 0 judges what they reported (`checks.py`) and prints it (`render.py`); `command.py` is the command line.
"""

"""Performance models: the all-reduce model fitted to measured sweeps, and the step-time model built on it;
a GPU's dense bf16 peak and the FLOP-bound limit of a step on it (peak.py, for benchmarks/gpu_check.py).
Import core only; the `model`, `comm` and `scaling` commands use them.
"""

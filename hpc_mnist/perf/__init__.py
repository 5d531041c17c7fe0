"""Performance models: the all-reduce model fitted to measured sweeps, and the step-time model built on it.
Import core only; the `model`, `comm` and `scaling` commands use them.
"""

"""The training benchmarks: our loop against the tutorials' loop, time to an accuracy, weak scaling (command.py);
the step compiled or captured as a CUDA graph (captured.py, for benchmarks/gpu_check.py)."""

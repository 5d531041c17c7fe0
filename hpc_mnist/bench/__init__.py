"""The training benchmarks: our loop against the tutorials' loop, time to an accuracy, weak scaling (command.py)."""

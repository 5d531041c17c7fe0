"""The scaling study: run the same training at several sizes, then report speed and accuracy (command.py)."""

"""The distributed and job runtime: process groups, stop requests and their agreement, deadlines, the run
directory, hang diagnostics, timing, the console and the schedulers. Imports core, never training or a command.
"""

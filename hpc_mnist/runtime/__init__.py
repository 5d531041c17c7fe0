"""The distributed and job runtime: process groups, stop requests and their agreement, deadlines,
the run directory and controller, hang diagnostics, timing, the console and PBS continuation."""

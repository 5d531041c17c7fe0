"""The training layer: the Trainer (model, data, optimizer, the step) and the RunController (a run's life around
the steps: checkpoints, stops, status). Imports core and runtime; the commands use it.
"""

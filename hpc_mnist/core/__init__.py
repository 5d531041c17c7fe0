"""The training core: configuration, models, data, optimizer, precision, checkpoints, the Trainer."""

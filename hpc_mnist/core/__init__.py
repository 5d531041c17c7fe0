"""What a run is made of: configuration, data sets, models, optimizer, precision and checkpoint files.

Imports nothing of the package but errors and resources (tests/test_layers.py holds every layer to that).
"""

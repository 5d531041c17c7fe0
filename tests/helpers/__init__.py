"""What the tests share besides fixtures (those stay in conftest.py): command lines, processes, run directories,
MNIST roots, the trainer in the test's process. Imported as `from helpers.runs import status` (tests/ is on
sys.path under pytest, as the folder of the rootdir's conftest.py)."""

import pkgutil

import pytest

# A helper's failed assert explains itself as a test's own does: pytest rewrites the asserts of test modules,
# and of other modules only when they are registered before their first import.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))

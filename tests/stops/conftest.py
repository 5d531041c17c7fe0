"""The uninterrupted run that the stop and resume tests with real processes compare with."""

from pathlib import Path

import pytest

from helpers.commands import LONG_EPOCHS, SMALL_CNN, ranks
from helpers.processes import ok, run_train


@pytest.fixture(scope="session")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted reference run: LONG_EPOCHS epochs of SMALL_CNN on 2 processes, in `straight / "two"`
    (made once per worker: three files compare with it)."""
    out = tmp_path_factory.mktemp("straight")
    ok(run_train([*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={out}", "log.name=two"], launcher=ranks(2)))
    return out

"""Fixtures shared by every test (a real-digits MNIST root, the trainer in this process), the suite's xdist
scheduling around the labs, and one CPU thread per test process. Helpers that are not fixtures: tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.data import write_mnist_root
from helpers.in_process import Outcome, as_a_user_would
from hpc_mnist import train
from hpc_mnist.runtime import dist

# Each lab's tests run on one xdist worker, in order (pytest -n 4, the default in pyproject.toml): each lab starts
# once per run and a test that kills one of its hosts never meets another test's jobs, while the other workers run
# the rest of the suite beside the labs' waiting jobs. The groups go by file, which is what xdist's controller
# sees (pytest 9.2 ignores the node-id suffix that --dist loadgroup relies on); collection refuses a test that
# uses a lab's fixture outside its lab's files.
LAB_FILES = {"tests/cluster/test_slurm.py": "lab", "tests/cluster/test_stops.py": "lab",
             "tests/cluster/test_launchers.py": "lab", "tests/cluster/test_heal_slurm.py": "lab",
             "tests/cluster/test_login_node.py": "lab",
             "tests/cluster/test_pbs_jobs.py": "pbs_lab", "tests/cluster/test_heal_pbs.py": "pbs_lab",
             "tests/cluster/test_pbs_lab.py": "pbs_lab"}


def pytest_configure(config: pytest.Config) -> None:
    """One CPU thread per process unless a test says otherwise (it then sets or clears OMP_NUM_THREADS itself):
    the workers' processes share 2 cores with the labs' ranks, and a process that takes every core spins against
    the others (an MLP epoch 10x slower, benchmarks/threads-under-load.md)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist (benchmarks/gpu_check.py) runs the tests too
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class LabScheduling(LoadScopeScheduling):
        """A lab's files are one unit of work (the largest, so they start first); every other test is its own."""

        def _split_scope(self, nodeid: str) -> str:
            return LAB_FILES.get(nodeid.split("::")[0], nodeid)

    return LabScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        lab = LAB_FILES.get(item.nodeid.split("::")[0])
        for fixture in {"lab", "pbs_lab"} & set(getattr(item, "fixturenames", ())) - {lab}:
            raise pytest.UsageError(f"{item.nodeid} uses the {fixture} fixture: list its file in LAB_FILES "
                                    "(tests/conftest.py), so that its lab's tests share one worker")


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_mnist_root(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def train_here(monkeypatch, capsys):
    """Run `python -m hpc_mnist.train ARGS` in this process, optionally beside a fake peer rank (the agreement's
    all-reduce, `dist.any_rank`, replaced by `peer`: helpers.in_process.PeerRank)."""
    as_a_user_would(monkeypatch)

    def run(args: list[str], env: dict[str, str] | None = None, peer=None) -> Outcome:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            if peer:
                m.setattr(dist, "any_rank", peer)
            code = train.main(args)
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return run

"""Counting the cores a process may use, on a platform with CPU affinity (Linux) and one without (macOS)."""

import os

from hpc_mnist.runtime import cpus


def test_usable_cores_are_the_affinity_where_there_is_one():
    if hasattr(os, "sched_getaffinity"):
        assert cpus.usable_cpus() == sorted(os.sched_getaffinity(0))
    assert cpus.usable_cores() == len(cpus.usable_cpus()) >= 1


def test_without_sched_getaffinity_every_core_is_usable(monkeypatch):
    """macOS has no os.sched_getaffinity: a single-process run must not fail on it."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cpus.usable_cores() == os.cpu_count()
    assert cpus.usable_cpus() == list(range(os.cpu_count()))

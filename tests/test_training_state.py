"""The training layer's pieces on their own: the Position a checkpoint carries, the epoch meter, and when an
epoch's end is checkpointed."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from hpc_mnist.training.checkpointer import Checkpointer
from hpc_mnist.training.meter import EpochMeter
from hpc_mnist.training.state import Position


def test_position_round_trips_and_counts_one_more_segment():
    pos = Position(epochs_done=3, step=17, train_time=12.5, wall_time=20.0, train_samples=4096, segments=2,
                   partial=[1.0, 2.0, 3.0])
    state = pos.state_dict()
    assert "partial" not in state  # every rank's partial sums are gathered into the checkpoint apart
    again = Position()
    again.load_state_dict(state)
    assert (again.epochs_done, again.step, again.train_time, again.wall_time, again.train_samples) == (
        3, 17, 12.5, 20.0, 4096)
    assert again.segments == 3 and again.partial is None
    old = {k: v for k, v in state.items() if k not in ("wall_time", "segments")}  # a checkpoint of format 1's start
    again.load_state_dict(old)
    assert (again.wall_time, again.segments) == (0.0, 2)


def test_epoch_meter_keeps_sums_and_the_first_non_finite_step():
    meter = EpochMeter(torch.device("cpu"), partial=[10.0, 5.0, 8.0])
    y = torch.tensor([0, 1, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2]), 3).float()  # 3 of 4 right
    meter.learning_rate(1, 0.1)
    meter.add(1, torch.tensor(0.5), logits, y)
    meter.add(2, torch.tensor(float("nan")), logits, y)
    meter.add(3, torch.tensor(float("inf")), logits, y)
    assert meter.sums.tolist()[1:] == [5.0 + 9, 8.0 + 12] and meter.earlier == 8
    assert int(meter.first_bad) == 2 and meter.seen == 12
    meter.checked()
    assert meter.lrs == {}


def test_checkpoints_fall_on_the_cadence_the_last_epoch_and_a_stop():
    cfg = SimpleNamespace(train=SimpleNamespace(checkpoint_every=2, epochs=5))
    every_second = Checkpointer(SimpleNamespace(cfg=cfg, rt=None, monitor=None))
    assert [e for e in range(1, 6) if every_second.due(e, None)] == [2, 4, 5]
    assert every_second.due(3, "signal")
    cfg.train.checkpoint_every = 0
    assert [e for e in range(1, 6) if every_second.due(e, None)] == [5]



def test_a_single_process_run_on_a_platform_without_sched_getaffinity(monkeypatch):
    """macOS has no os.sched_getaffinity: the start panel's oversubscription check must not need it."""
    from hpc_mnist.training import controller

    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    one = SimpleNamespace(local_world_size=1, threads=8)
    assert controller._oversubscribed(one) == [
        "oversubscribed: 1 rank(s) x 8 thread(s) on 4 CPU core(s); each rank runs at a fraction of its speed "
        "(use fewer ranks per node)"]
    assert controller._oversubscribed(SimpleNamespace(local_world_size=1, threads=4)) == []

"""The quiet-rank watch (runtime/quiet.py) on a real TCPStore, its ranks as watches in this process: a rank whose
beat stops is named by its watcher after a census, every other rank takes the one published verdict; a rank that
ended is never named; a store whose process is frozen names its holder; a store that cannot be reached names
nobody. The whole job under torchrun and mpiexec: tests/stops/test_quiet_ranks.py."""

import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as tdist

from helpers.processes import free_port
from hpc_mnist.runtime import hang, quiet

AFTER = 1.5  # seconds of silence before a rank is named (the default is 20)


@pytest.fixture(autouse=True)
def quick_census(monkeypatch):
    monkeypatch.setattr(quiet, "CENSUS", 1.0)
    monkeypatch.setattr(quiet, "PERIOD", 0.2)
    monkeypatch.setattr(quiet, "STORE_TIMEOUT", 1.0)
    monkeypatch.setattr(quiet, "RECORD_WAIT", 3.0)


class Rank:
    """One rank's watch, its verdict and exit recorded instead of ending this process."""

    def __init__(self, rank: int, size: int, connect, holder: int | None = None, probe=lambda: True,
                 recording: float = 0.0):
        self.rank, self.recording = rank, recording
        self.stuck = False  # as hang.Watchdog.stuck says of a rank whose own work has stood still too long
        self.verdicts: list[quiet.Verdict] = []
        self.exits: list[int] = []
        self.recorded_at = self.exited_at = 0.0
        self.ended = threading.Event()
        self.watch = quiet.QuietWatch(rank, size, AFTER, lambda: f"epoch 1 step {rank}, computing",
                                      self._record, 4, holder=holder, connect=connect, probe=probe,
                                      exit=self._exit, stuck=lambda: 30.0 if self.stuck else None)

    def _record(self, verdict: quiet.Verdict) -> None:
        """As the run records it: the reporter's line and status.json take `recording` seconds."""
        self.verdicts.append(verdict)
        if verdict.reporter == self.rank:
            time.sleep(self.recording)
        self.recorded_at = time.monotonic()

    def _exit(self, code: int) -> None:
        self.exits.append(code)
        self.exited_at = time.monotonic()
        self.ended.set()

    def freeze(self) -> None:
        """As SIGSTOP would leave it: no more beats, and no last word."""
        self.watch._stop.set()
        self.watch._thread.join()


def client(port: int):
    return lambda: tdist.PrefixStore("t", tdist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False,
                                                         timeout=datetime.timedelta(seconds=1)))


@pytest.fixture
def store():
    port = free_port()
    master = tdist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    yield port
    del master


def test_a_rank_whose_beat_stops_is_named_once_and_every_other_rank_ends(store):
    """Rank 2 of 4 stops beating: rank 1, its watcher, names it after the census; every other rank takes that
    verdict and ends only once rank 1 has recorded it (a launcher would end rank 1 with the first of them)."""
    ranks = [Rank(r, 4, client(store), recording=1.0) for r in range(4)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.6)
    frozen = time.monotonic()
    ranks[2].freeze()
    for r in (0, 1, 3):
        assert ranks[r].ended.wait(10), f"rank {r} never ended"
    took = time.monotonic() - frozen
    assert AFTER < took < AFTER + 1.0 + 2 + 1.5, took  # silence, census, a few periods
    verdicts = {r: ranks[r].verdicts for r in (0, 1, 3)}
    assert all(v == [verdicts[0][0]] for v in verdicts.values()), verdicts  # one verdict, the same everywhere
    v = verdicts[0][0]
    assert (v.ranks, v.reporter, v.where) == ((2,), 1, {2: "epoch 1 step 2, computing"})  # rank 1 watches rank 2
    assert "no heartbeat for 1.5 s" in v.why
    assert all(ranks[r].exits == [4] for r in (0, 1, 3)) and ranks[2].verdicts == []
    assert ranks[1].recorded_at < min(ranks[r].exited_at for r in (0, 3))


def test_ranks_that_ended_are_not_named(store):
    ranks = [Rank(r, 3, client(store)) for r in range(3)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.5)
    ranks[1].watch.__exit__(None, None, None)  # finished: leaves its last beat, 'ended'
    time.sleep(3 * AFTER)
    assert not any(r.verdicts for r in ranks) and not any(r.exits for r in ranks)
    for r in (0, 2):
        ranks[r].watch.__exit__(None, None, None)


def test_ranks_frozen_together_are_named_together(store):
    """A host's ranks frozen at once (ranks 2 and 3 of 5): the census finds both, though only rank 2 is watched by
    a rank that still runs."""
    ranks = [Rank(r, 5, client(store)) for r in range(5)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.6)
    ranks[2].freeze()
    ranks[3].freeze()
    assert ranks[0].ended.wait(10)
    assert ranks[0].verdicts[0].ranks == (2, 3)


def test_a_stuck_rank_is_named_while_the_others_wait_for_it(store):
    """Rank 1 of 3 still beats but its own work stands still (a hung kernel): named, as stuck, not as silent."""
    ranks = [Rank(r, 3, client(store)) for r in range(3)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.6)
    ranks[1].stuck = True
    assert ranks[0].ended.wait(10)
    v = ranks[0].verdicts[0]
    assert (v.ranks, v.reporter, v.where) == ((1,), 0, {1: "epoch 1 step 1, computing"})
    assert "its process answers, but its own work (no collective) has not moved" in v.why, v.why
    assert ranks[1].ended.wait(10) and ranks[1].exits == [4]  # its own watch ends it: its main thread cannot


def test_when_every_rank_is_stuck_no_one_is_named(store):
    """Each waits for another outside a marked collective (a broadcast inside the model's forward): who is at
    fault cannot be told, so nobody is named (dist.timeout's message says who did not arrive)."""
    ranks = [Rank(r, 3, client(store)) for r in range(3)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.6)
    for r in ranks:
        r.stuck = True
    time.sleep(3 * AFTER + 2)
    assert not any(r.verdicts for r in ranks) and not any(r.exits for r in ranks)
    for r in ranks:
        r.stuck = False
        r.watch.__exit__(None, None, None)


def test_a_frozen_rank_is_named_and_not_the_peers_stuck_waiting_for_it(store):
    ranks = [Rank(r, 4, client(store)) for r in range(4)]
    for r in ranks:
        r.watch.__enter__()
    time.sleep(0.6)
    ranks[2].freeze()
    ranks[3].stuck = True
    assert ranks[0].ended.wait(10)
    assert ranks[0].verdicts[0].ranks == (2,) and "no heartbeat" in ranks[0].verdicts[0].why


def frozen_store_holder(port: int) -> subprocess.Popen:
    """A process holding the store, as rank 0 does under srun and mpiexec."""
    proc = subprocess.Popen([sys.executable, "-c", "import time, torch.distributed as d; "
                             f"s = d.TCPStore('127.0.0.1', {port}, is_master=True, wait_for_workers=False); "
                             "print('up', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_a_frozen_store_names_its_holder_and_a_store_out_of_reach_names_no_one(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    holder = frozen_store_holder(port)
    try:
        ranks = [Rank(r, 3, client(port), holder=0, probe=quiet.store_answers_connections) for r in (1, 2)]
        for r in ranks:
            r.watch.__enter__()
        time.sleep(0.6)
        os.kill(holder.pid, signal.SIGSTOP)  # the store's process frozen: connections accepted, never answered
        for r in ranks:
            assert r.ended.wait(15)
        for r in ranks:
            v = r.verdicts[0]
            assert (v.ranks, v.reporter) == ((0,), 1) and "the rendezvous store it holds has not answered" in v.why
        # No store to hear from the reporter in: rank 2 gives it RECORD_WAIT; the reporter itself ends at once.
        assert ranks[1].exited_at - ranks[0].exited_at > quiet.RECORD_WAIT / 2
    finally:
        holder.kill()
        holder.wait()
    # Nothing listens any more: this host or the store's is cut off, and this side cannot tell which.
    cut_off = Rank(1, 3, client(port), holder=0, probe=quiet.store_answers_connections)
    cut_off.watch.__enter__()
    assert cut_off.ended.wait(15)
    v = cut_off.verdicts[0]
    assert (v.ranks, v.reporter) == ((), -1) and "this host or the store's host is cut off" in v.why


def test_the_watch_does_not_start_for_one_rank_or_when_turned_off():
    for size, after in ((1, 20.0), (2, 0.0)):
        w = quiet.QuietWatch(0, size, after, str, print, 4, connect=lambda: pytest.fail("connected"))
        with w:
            assert not w._thread.is_alive()


def test_a_ranks_own_work_is_stuck_past_ten_times_its_longest_stretch_and_a_floor(tmp_path):
    """hang.Watchdog.stuck: a phase's first stretch (warm-up, compilation) is not measured; a collective and a
    checkpoint's write are never judged (a slow file system is no fault)."""
    dog = hang.Watchdog(tmp_path, 0, after=600)
    dog.beat(1, 1)
    time.sleep(0.3)  # the first step: slow, not measured
    dog.beat(1, 2)
    assert dog.longest == {"computing": 0.0}
    time.sleep(0.02)
    dog.beat(1, 3)
    longest = dog.longest["computing"]
    assert 0.02 <= longest < 0.2
    time.sleep(0.05)
    assert dog.stuck(floor=0.1) is None  # under both the floor and 10x the longest step
    time.sleep(max(0.1, 10 * longest))
    assert dog.stuck(floor=0.1) >= max(0.1, 10 * longest)
    dog.in_collective()  # waiting for others: never stuck
    time.sleep(0.3)
    assert dog.stuck(floor=0.0) is None
    dog.doing("writing a checkpoint")
    time.sleep(0.3)
    assert dog.stuck(floor=0.0) is None
    dog.doing("evaluating")  # evaluation's first stretch: not known yet
    time.sleep(0.3)
    assert dog.stuck(floor=0.0) is None

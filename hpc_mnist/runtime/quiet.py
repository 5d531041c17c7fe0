"""Quiet ranks: a rank that stops answering without closing its sockets (a frozen process, a hung host, a host
whose network drops every packet) is named within seconds of `dist.quiet_after`, not after `dist.timeout`.

Gloo cannot abort a blocked collective, and a dead process's closed sockets (peers.py) never come. So every
rank runs a thread that beats once a second in the job's rendezvous store, through a connection of its own with
a short timeout, and watches the beat of the next rank (a ring: each rank is watched by one other at any job
size). A beat that stands still for `quiet_after` seconds starts a census of every rank's beat; the ranks whose
beat stood still through it are the verdict, which the first rank to reach one publishes in the store. Every
rank's thread, once it sees a verdict, hands it to the run (which leaves its stacks and, on the reporting rank,
the one line and status.json) and ends its process: a rank blocked in a collective cannot otherwise. The
launcher then ends the frozen ones. A thread beats while its main thread computes, evaluates or writes a
checkpoint to a slow file system, so only a rank whose process or host has gone silent is named.

A rank that is alive but stuck in its own work (a hung kernel or driver) is caught by the same watch: its beat
says so in place of its count (hang.Watchdog.stuck: no progress outside a collective for ten times the longest
this phase has taken, and at least STUCK_FLOOR x quiet_after), so it stands still. It is named while a rank that
still moves waits for it; a frozen rank's waiting peers, stuck beside it, are not. The run judges it only where
collectives block inside the call (gloo): under NCCL a waiting rank blocks at a later synchronization instead.

Where the store itself goes silent: a store that accepts connections but never answers lives in a frozen
process (rank 0's, under srun and mpiexec), which is named; a store that cannot be reached at all may be on the
far side of a network fault from this host, or this host may be cut off: such a rank says so, leaves its stacks
and ends without writing the run's status (the store's side, which can still count, does).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import torch.distributed as tdist

PERIOD = 1.0  # seconds between beats
CENSUS = 4.0  # seconds a suspected rank's peers are watched before the verdict
STORE_TIMEOUT = 5.0  # seconds one store operation of the watch may take
RECORD_WAIT = 10.0  # seconds the other ranks give the reporter to record the verdict before they end
T = TypeVar("T")
ENDED = "ended"  # the beat a rank leaves when it stops watching (a run that ended, a rank that failed)
STUCK = "stuck"  # a beat's first word, in place of its count, while the rank's own work makes no progress
STUCK_FLOOR = 2.0  # a rank's own work may stand still for at least this many times quiet_after (hang.Watchdog.stuck)


@dataclass(frozen=True)
class Verdict:
    """The ranks found quiet, where each last was ("epoch E step S, phase"), and why they were named."""

    ranks: tuple[int, ...]
    where: dict[int, str] = field(default_factory=dict)
    why: str = ""
    reporter: int = -1  # the rank that says it in one line and writes status.json; -1: none (a cut-off rank)
    published: bool = True  # through the store; False: found without it (a store that does not answer)

    def to_json(self) -> str:
        return json.dumps({"ranks": list(self.ranks), "where": self.where, "why": self.why, "reporter": self.reporter})

    @staticmethod
    def from_json(text: str) -> Verdict:
        d = json.loads(text)
        return Verdict(tuple(d["ranks"]), {int(k): v for k, v in d["where"].items()}, d["why"], d["reporter"])


def _where(beat: str | None) -> str | None:
    """'epoch E step S, phase' from a beat ('COUNT epoch E step S, phase'); None before the first or after the last."""
    return beat.split(" ", 1)[1] if beat and beat != ENDED else None


def watch_store(timeout: float = STORE_TIMEOUT) -> tdist.Store:
    """A client of the job's rendezvous store with a short timeout, apart from the one the process group uses.
    Under torchrun the agent's store outlives restarts: the attempt's number keeps each attempt's beats apart."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = tdist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout),
                           wait_for_workers=False)
    return tdist.PrefixStore(f"hpc_mnist/quiet-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def store_answers_connections(timeout: float = 3.0) -> bool:
    """Whether the store's host accepts a TCP connection: a store that does then not answer lives in a frozen
    process; one whose host does not is across a network fault (or this host is cut off)."""
    try:
        with socket.create_connection((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])), timeout=timeout):
            return True
    except OSError:
        return False


def store_rank() -> int | None:
    """The rank whose process holds the rendezvous store: 0, except under torchrun, whose agent holds it."""
    return None if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else 0


class QuietWatch:
    """This rank's beat and its watch on the next rank (see the module's docstring).

    `where()` says where this rank is ("epoch E step S, phase"); `on_verdict(verdict)` runs in the watch's thread
    once a verdict exists (the run's record of it), after which the thread ends the process with `exit_code`.
    """

    def __init__(self, rank: int, world_size: int, quiet_after: float, where: Callable[[], str],
                 on_verdict: Callable[[Verdict], None], exit_code: int,
                 holder: int | None = 0, connect: Callable[[], tdist.Store] = watch_store,
                 probe: Callable[[], bool] = store_answers_connections, exit: Callable[[int], None] = os._exit,
                 stuck: Callable[[], float | None] = lambda: None):
        self.rank, self.world_size, self.quiet_after, self.stuck = rank, world_size, quiet_after, stuck
        self.where, self.on_verdict, self.exit_code = where, on_verdict, exit_code
        self.connect, self.probe, self.holder, self.exit = connect, probe, holder, exit
        self.target = (rank + 1) % world_size
        # Who names the store's holder when it freezes (no verdict can be published then): the lowest other rank.
        others = [r for r in range(world_size) if r != holder]
        self.reporter_for_holder = -1 if holder is None or not others else others[0]
        self._holder_seen: str | None = None
        self._store: tdist.Store | None = None
        self._ops: ThreadPoolExecutor | None = None
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpc_mnist-quiet-watch", daemon=True)

    # --- the store, through this watch's own connection ---

    def _key(self, rank: int) -> str:
        return f"beat/{rank}"

    def _client(self) -> tdist.Store:
        if self._store is None:
            self._store = self.connect()
        return self._store

    def _bounded(self, fn: Callable[[], T]) -> T:
        """`fn` (store operations) within STORE_TIMEOUT: a TCPStore client waits for ever on a store whose process
        is frozen, so it waits in a thread of its own, which is left behind (with its connection) if it hangs."""
        if self._ops is None:
            self._ops = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpc_mnist-quiet-store")
        try:
            return self._ops.submit(fn).result(timeout=STORE_TIMEOUT)
        except BaseException:
            self._ops.shutdown(wait=False)
            self._ops, self._store = None, None
            raise

    def _read(self, rank: int) -> str | None:
        store = self._client()
        return store.get(self._key(rank)).decode() if store.check([self._key(rank)]) else None

    def _beat(self, text: str | None = None) -> None:
        """The count, and where this rank is; a rank whose own work is stuck (a hung kernel: its process still
        answers) beats the same words each time, so its watcher sees it stand still."""
        self._count += 1
        mark = STUCK if self.stuck() is not None else self._count
        self._client().set(self._key(self.rank), text or f"{mark} {self.where()}")

    def _published(self) -> Verdict | None:
        store = self._client()
        return Verdict.from_json(store.get("verdict").decode()) if store.check(["verdict"]) else None

    # --- the watch ---

    def _run(self) -> None:
        last_seen: str | None = None
        changed = silent_since = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                verdict, seen = self._bounded(self._tick)
                if verdict is None:
                    if self.target == self.holder:
                        self._holder_seen = seen
                    if seen != last_seen or seen == ENDED:
                        last_seen, changed = seen, now
                    if now - changed >= self.quiet_after:
                        verdict = self._census()
                        changed = now if verdict is None else changed
                silent_since = time.monotonic()
            except Exception:  # the store did not answer in STORE_TIMEOUT: a fresh connection next time
                verdict = self._store_silent() if time.monotonic() - silent_since >= self.quiet_after else None
            if verdict is not None and not self._stop.is_set():
                self._end(verdict)
                return
            self._stop.wait(PERIOD)

    def _tick(self) -> tuple[Verdict | None, str | None]:
        """Beat; the published verdict, if any, else the target's beat (and, on the rank that would name a frozen
        store's holder, the holder's: where it was)."""
        self._beat()
        verdict = self._published()
        if verdict is None and self.rank == self.reporter_for_holder and self.holder != self.target:
            self._holder_seen = self._read(self.holder)
        return verdict, None if verdict else self._read(self.target)

    def _everyone(self) -> dict[int, str | None]:
        return {r: self._read(r) for r in range(self.world_size) if r != self.rank}

    def _census(self) -> Verdict:
        """Every rank's beat now and CENSUS seconds later: those that stood still, the target among them, are
        quiet. The first rank to publish its verdict reports it; the others take the published one."""
        first = self._bounded(self._everyone)
        time.sleep(CENSUS)
        second = self._bounded(self._everyone)
        quiet = sorted({self.target} | {r for r in first if first[r] == second[r] and second[r] != ENDED})
        frozen = [r for r in quiet if not (second[r] or "").startswith(f"{STUCK} ")]
        if frozen:  # the stuck ones may only be waiting for these (a broadcast is not marked as a collective)
            quiet, why = frozen, f"no heartbeat for {self.quiet_after:g} s"
        elif self.stuck() is None or len(quiet) < self.world_size - 1:  # a rank that still moves waits for them
            why = (f"its process answers, but its own work (no collective) has not moved for over "
                   f"{STUCK_FLOOR * self.quiet_after:g} s")
        else:  # every rank stands still in its own work: which one the others wait for cannot be told
            return self._bounded(self._published)
        where = {r: _where(second[r]) or "before its first heartbeat" for r in quiet}
        mine = Verdict(tuple(quiet), where, why, self.rank)
        return self._bounded(lambda: self._publish(mine))

    def _publish(self, mine: Verdict) -> Verdict:
        self._client().compare_set("verdict", "", mine.to_json())
        return self._published() or mine

    def _store_silent(self) -> Verdict:
        """The store has not answered for quiet_after seconds."""
        if self.holder is not None and self.holder != self.rank and self.probe():
            where = {self.holder: _where(self._holder_seen)} if _where(self._holder_seen) else {}
            return Verdict((self.holder,), where, f"the rendezvous store it holds has not answered for "
                                                  f"{self.quiet_after:g} s", self.reporter_for_holder, False)
        return Verdict((), {}, f"the rendezvous store at {os.environ.get('MASTER_ADDR', '?')} has not answered for "
                               f"{self.quiet_after:g} s: this host or the store's host is cut off", -1, False)

    def _end(self, verdict: Verdict) -> None:
        """Record the verdict (the run's callback), then end this process. The reporter says in the store that it
        has recorded it, and the others wait for that: a launcher ends every rank once one has ended (MPICH's
        mpiexec at once), which must not come before the reporter's line and status.json."""
        try:
            self.on_verdict(verdict)
            if verdict.reporter == self.rank:
                if verdict.published:
                    with contextlib.suppress(Exception):
                        self._bounded(lambda: self._client().set("recorded", "1"))
            elif verdict.reporter >= 0 and verdict.published:
                self._await_record()
            elif verdict.reporter >= 0:  # no store to hear from the reporter in: it is given the time
                time.sleep(RECORD_WAIT)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            self.exit(self.exit_code)

    def _await_record(self) -> None:
        """Until the reporter has recorded the verdict, or RECORD_WAIT seconds (it may be gone, or the store)."""
        deadline = time.monotonic() + RECORD_WAIT
        while time.monotonic() < deadline:
            try:
                if self._bounded(lambda: self._client().check(["recorded"])):
                    return
            except Exception:  # no store (its holder is the quiet one): give the reporter its time
                time.sleep(max(0.0, deadline - time.monotonic()))
                return
            time.sleep(0.1)

    def __enter__(self) -> QuietWatch:
        if self.quiet_after > 0 and self.world_size > 1:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """This rank stops watching: its last beat says it ended, so its watcher does not take it for quiet."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * STORE_TIMEOUT)
            with contextlib.suppress(Exception):
                self._bounded(lambda: self._beat(ENDED))

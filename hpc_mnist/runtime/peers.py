"""A rank that died (the OOM killer, a crashed host, a kill -9): the survivors find which one, and the lowest of
them says so in one line.

When a process dies its sockets close, so the peers' next collective fails within milliseconds with the
backend's error (gloo: "Connection reset by peer"; a TCPStore: "Broken pipe") that names an address, not a
rank. Every rank gathered each rank's host and pid at start-up (dist.Runtime), so a survivor can tell: a rank
on its own host is gone when its pid is (or is a zombie); one elsewhere when it does not answer in the job's
rendezvous store within a few seconds. How it ended (signal, exit code) only its parent knows: torchrun's
and mpiexec's reports follow ours with it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_mnist.errors import EXIT_RANK_LOST, UserError
from hpc_mnist.runtime import dist, quiet

ANSWER_WITHIN = 5.0  # seconds a survivor on another host has to say it is alive
_LOST = re.compile(r"connection (reset|closed) by peer|broken pipe|connection refused|end of file|"
                   r"remote process exited|socket closed|ECONNRESET|EPIPE", re.I)


def is_lost(error: BaseException) -> bool:
    """An error of the kind a collective raises when a peer's process is gone."""
    return isinstance(error, RuntimeError) and _LOST.search(str(error)) is not None


def process_exists(pid: int) -> bool:
    """On this host: running, and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def dead_ranks(rt: dist.Runtime, wait: float = ANSWER_WITHIN) -> dict[int, str]:
    """{rank: how we know it is gone} for the ranks that died, as this surviving rank sees them.

    Every survivor says so in the rendezvous store first. A dying process closes its sockets before it becomes a
    zombie, so a pid on this host is looked at again until it has gone or `wait` has passed (a survivor that
    answered and has exited since is not gone); ranks on other hosts have until then to answer."""
    here = socket.gethostname()
    local = [r for r in range(rt.world_size) if r != rt.rank and rt.hosts[r] == here]
    remote = [r for r in range(rt.world_size) if r != rt.rank and rt.hosts[r] != here]
    found: dict[int, str] = {}
    store = dist.store() if _holder_alive(rt) else None
    try:
        store.set(f"hpc_mnist/alive/{rt.rank}", "1")
    except Exception:  # the store lived in the dead process (rank 0 hosts it unless torchrun's agent does)
        store = None
    if store is None and rt.hosts[0] != here:
        found[0] = "the job's rendezvous store, which rank 0 hosts, is unreachable"
        remote.remove(0)

    def answered(rank: int) -> bool:  # a survivor, even if it has exited since
        nonlocal store
        try:
            return store is not None and store.check([f"hpc_mnist/alive/{rank}"])
        except Exception:  # its holder has ended since: asked once, not every 50 ms
            store = None
            return False

    deadline = time.monotonic() + wait
    while True:
        found.update({r: "its process no longer exists" for r in local
                      if not process_exists(rt.pids[r]) and not answered(r)})
        local = [r for r in local if r not in found]
        remote = [r for r in remote if not answered(r)]
        if time.monotonic() >= deadline or (found and not remote):
            break
        time.sleep(0.05)
    found.update({r: f"no answer within {wait:g} s" for r in remote})
    if store is not None:
        _linger(rt, store, found, wait)
    return dict(sorted(found.items()))


def _holder_alive(rt: dist.Runtime) -> bool:
    """Whether the process that holds the store may still answer: asking a store whose process has gone makes
    torch log a warning with its C++ stack in the job's log."""
    holder = quiet.store_rank()
    if holder is None or holder == rt.rank:
        return True
    if rt.hosts[holder] == socket.gethostname():
        return process_exists(rt.pids[holder])
    return quiet.store_answers_connections(timeout=1.0)


def _linger(rt: dist.Runtime, store: object, dead: dict[int, str], wait: float) -> None:
    """Say this rank has decided; the rank whose process holds the store then waits (up to `wait` + 2 s) until
    every other survivor has too: its exit would take the store away, and a survivor still asking would then
    take it for dead (measured on the Slurm lab: rank 1 named rank 0 gone, and its status overwrote rank 0's)."""
    with contextlib.suppress(Exception):
        store.set(f"hpc_mnist/decided/{rt.rank}", "1")
        if rt.rank != quiet.store_rank():
            return
        others = [f"hpc_mnist/decided/{r}" for r in range(rt.world_size) if r != rt.rank and r not in dead]
        deadline = time.monotonic() + wait + 2
        while others and not store.check(others) and time.monotonic() < deadline:
            time.sleep(0.05)


def recorded_by(rt: dist.Runtime, dead: dict[int, str], record: dict[str, Any] | None) -> list[int]:
    """The ranks among `dead` that wrote the run's failure `record` (status.json) before they ended: they decided,
    they were not lost. A survivor that decides late (a loaded host) finds the reporter's process gone."""
    if not record or record.get("state") != "failed":
        return []
    return [r for r in dead if (record.get("host"), record.get("pid")) == (rt.hosts[r], rt.pids[r])]


def lost_error(rt: dist.Runtime, error: BaseException, where: str,
               record: Callable[[], dict[str, Any] | None] = lambda: None) -> UserError:
    """The one line naming the dead rank(s), said by the lowest survivor (the others stay quiet); exit 5.
    `record()` reads the run's status.json: a rank that wrote a failure into it has reported, and is not lost."""
    dead = dead_ranks(rt)
    reported = recorded_by(rt, dead, record()) if dead else []
    if reported:  # the reporter said so and ended: this rank only adds its own line
        for r in reported:
            del dead[r]
        named = "; ".join(f"rank {r} (pid {rt.pids[r]}) on {rt.hosts[r]} is gone: {how}" for r, how in dead.items())
        return UserError(f"{named or f'rank {reported[0]} recorded the failure in status.json and ended'}. "
                         f"Rank {rt.rank} stopped {where}", EXIT_RANK_LOST, on_all_ranks=True)
    if not dead:  # the backend lost a connection but every rank is still there: a network fault
        cause = str(error).strip().splitlines()[-1][:200] if str(error).strip() else type(error).__name__
        return UserError(f"a collective failed although every rank is still running ({cause}), {where}",
                         EXIT_RANK_LOST, status={"reason": "connection lost"})
    named = "; ".join(f"rank {r} (pid {rt.pids[r]}) on {rt.hosts[r]} is gone: {how}" for r, how in dead.items())
    reporter = min(set(range(rt.world_size)) - set(dead))
    first = next(iter(dead))
    return UserError(f"{named}. Rank {rt.rank} stopped {where}", EXIT_RANK_LOST,
                     on_all_ranks=rt.rank != reporter,
                     status={"reason": "rank lost", "rank": first, "rank_host": rt.hosts[first],
                             "rank_pid": rt.pids[first], "lost_ranks": list(dead),
                             "bad_hosts": list(dict.fromkeys(rt.hosts[r] for r in dead))})

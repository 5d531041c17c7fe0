"""Output of the ranks other than 0, labelled line by line with the rank and its host, under every launcher.

Launchers can label too (torchrun `--tee 3 --log-line-prefix-template`, srun `--label`, MPICH's
`mpiexec -prepend-rank`), but each in its own way and for every rank: rank 0's console would be labelled
as well, and a job script would need three spellings. Here a rank other than 0 points its file descriptors 1
and 2 at pipes read by a small relay process (a fresh `python -I`, standard library only) that writes each line
with `[rank R host] ` in front to where they pointed before. Descriptors, not sys.stdout: what C code prints (NCCL,
gloo, a CUDA assertion), Python warnings, tracebacks and faulthandler's stacks of a dying process are labelled
alike. A process, not a thread: a rank that crashes or is killed leaves its last lines in the pipe, and the
relay, which ignores the signals that stop a job step, still writes them once the pipe closes.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys

WAIT_S = 5.0  # at a rank's exit, for the relay to write its last lines
_relays: list[subprocess.Popen] = []  # this process's relay, for an exit that skips atexit (finish)
RELAY = r"""
import os, selectors, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)  # the rank decides; the relay ends when its pipes do
prefix = sys.argv[1].encode()

def write(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # the reader is gone: keep draining, so the rank never blocks on a full pipe

out, err = int(sys.argv[2]), int(sys.argv[3])  # the pipes' read ends
pending = {out: b"", err: b""}
selector = selectors.DefaultSelector()
selector.register(out, selectors.EVENT_READ, 1)
selector.register(err, selectors.EVENT_READ, 2)
while pending:
    for key, _ in selector.select():
        data = os.read(key.fd, 65536)
        if not data:
            selector.unregister(key.fd)
            rest = pending.pop(key.fd)
            if rest:
                write(key.data, prefix + rest + b"\n")
            continue
        *lines, pending[key.fd] = (pending[key.fd] + data).split(b"\n")
        if len(pending[key.fd]) > 65536:  # a very long line without an end: pass it on in pieces
            lines.append(pending[key.fd])
            pending[key.fd] = b""
        if lines:
            write(key.data, b"".join(prefix + line + b"\n" for line in lines))
"""


def prefix(rank: int, host: str) -> str:
    return f"[rank {rank} {host}] "


def label_output(rank: int, host: str | None = None) -> subprocess.Popen | None:
    """For a rank other than 0: from now on, every line this process (and its children) writes to descriptors 1
    and 2 goes out labelled. Rank 0: nothing changes (its console stays as it is). Returns the relay."""
    if rank == 0:
        return None
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        relay = subprocess.Popen([sys.executable, "-I", "-c", RELAY, prefix(rank, host or socket.gethostname()),
                                  str(out_r), str(err_r)], stdin=subprocess.DEVNULL, pass_fds=(out_r, err_r))
    except (OSError, subprocess.SubprocessError):
        relay = None  # no relay (no processes left, no interpreter to start): the rank prints unlabelled
    for fd in (out_r, err_r):
        os.close(fd)
    if relay is None:
        os.close(out_w)
        os.close(err_w)
        return None
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (out_w, err_w):
        os.close(fd)
    atexit.register(_drain, relay)  # registered early: runs after the handlers registered later
    _relays.append(relay)
    return relay


def finish() -> None:
    """Before an exit that skips atexit handlers (os._exit, MPI_Abort, after which the launcher kills the job's
    processes, the relay among them): this process's last lines written out."""
    while _relays:
        _drain(_relays.pop())


def _drain(relay: subprocess.Popen) -> None:
    """At exit: close this process's ends of the pipes and let the relay write the last lines."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    try:
        relay.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        pass  # a child of the rank still holds the pipe: the relay goes on writing after us

"""The check-in protocol every rank runs: rank 0 serves a small key-value store with its own short timeout, every
rank leaves its report there, and rank 0 names any rank that did not arrive within seconds instead of hanging
for the collective timeout. Then all ranks run one all-reduce and wait for rank 0's verdict.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as tdist

from hpc_mnist.doctor import storage
from hpc_mnist.doctor.allreduce import read_nccl_network, timed_allreduce, watch_nccl
from hpc_mnist.doctor.checks import Check, check_storage, verdict
from hpc_mnist.doctor.ranks import RankInfo, gather_self
from hpc_mnist.errors import UserError
from hpc_mnist.perf.allreduce import bus_factor
from hpc_mnist.runtime import launchers, rendezvous
from hpc_mnist.runtime.devices import backend_for
from hpc_mnist.runtime.launchers import Placement


class Failure(Exception):
    """The doctor could not finish; the message is its one-line verdict."""


def _reachable(addr: str, port: int, timeout: float) -> bool:
    """Whether rank 0's store accepts connections before `timeout` (probed here: the store's own client
    retries past its timeout and prints C++ stack traces while it does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _connect(place: Placement, timeout: float, host: str) -> tdist.Store:
    """The rendezvous: rank 0 serves a TCP store (torchrun's agent serves it under torchrun)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise UserError(f"{place.world_size} ranks but MASTER_ADDR/MASTER_PORT are not set (torchrun sets them)")
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    serve = place.rank == 0 and not agent
    if not serve and not _reachable(addr, int(port), timeout):
        raise Failure(f"rank {place.rank} on {host}: no rendezvous at {addr}:{port} within {timeout:g} s; "
                      f"checked in: rank {place.rank} ({host}); did not: rank 0 (not started, or {addr} is not "
                      "reachable from here)")
    try:
        store = tdist.TCPStore(addr, int(port), place.world_size, is_master=serve, wait_for_workers=False,
                               timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, OSError) as e:
        if serve:
            raise Failure(f"rank 0 on {host} cannot serve the rendezvous at {addr}:{port}: "
                          f"{str(e).splitlines()[0]}") from None
        raise Failure(f"rank {place.rank} on {host}: no rendezvous at {addr}:{port} within {timeout:g} s; "
                      f"checked in: rank {place.rank} ({host}); did not: rank 0 (not started, or {addr} is not "
                      "reachable from here)") from None
    return tdist.PrefixStore(f"hpc_mnist/doctor/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _check_in(store: tdist.Store, me: RankInfo, timeout: float) -> tuple[list[RankInfo], list[int]]:
    """Rank 0: wait up to `timeout` for every rank's info; (arrived, missing ranks)."""
    store.set(f"rank/{me.rank}", json.dumps(asdict(me)))
    store.add("arrived", 1)
    deadline = time.monotonic() + timeout
    while store.add("arrived", 0) < me.world_size and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = [f"rank/{r}" for r in range(me.world_size)]
    arrived = [r for r, k in enumerate(keys) if store.check([k])]
    infos = [RankInfo(**json.loads(store.get(f"rank/{r}"))) for r in arrived]
    return infos, sorted(set(range(me.world_size)) - set(arrived))


def _storage(args: argparse.Namespace, infos: list[RankInfo]) -> Check | None:
    """Rank 0, while every rank's probe file is still there: the storage check (none without a configuration)."""
    if getattr(args, "cfg", None) is None:
        return None
    seen = {i.rank: i.rank == 0 or storage.visible(i.storage) for i in infos}
    return check_storage(infos, storage.checkpoint_size(args.cfg, len(infos)), args.cfg.train.keep_checkpoints, seen)


def diagnose(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """Run on every rank; rank 0 returns the report. Exit code 0 healthy, 1 otherwise."""
    place = launchers.detect(args.init)
    if place.launcher == "mpi":
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise Failure("mpi4py: an MPI launch was detected (rank variables of mpiexec/PALS/PMI) but mpi4py "
                          "cannot be imported, and the trainer needs it there: load the site's mpi4py, or launch "
                          "with torchrun") from None
        place = rendezvous.mpi_rendezvous(place)  # mpi4py's numbers and rank 0's address
    elif place.launcher == "slurm" and place.world_size > 1:
        rendezvous.slurm_rendezvous()
    me = gather_self(place, args.device)
    me.storage = getattr(args, "storage", None)
    device = torch.device(me.device)
    backend = backend_for(args.backend, device)
    if not tdist.is_backend_available(backend):
        raise UserError(f"this PyTorch ({torch.__version__}) has no {backend} backend (a CPU-only build has no nccl): "
                        "install the site's GPU build of torch, or check the CPU path with --backend gloo")
    if backend == "nccl" and device.type != "cuda":
        raise UserError(f"--backend nccl needs a GPU on every rank, and rank {place.rank} on {me.host} has {device} "
                        "(no GPU visible): use --backend gloo for the CPU path")
    report: dict[str, Any] = {"backend": backend, "timeout_s": args.timeout, "missing": []}
    if place.world_size == 1:
        return verdict(report, [me], None, [None], backend, _storage(args, [me]))
    store = _connect(place, args.timeout, me.host)
    if place.rank == 0:
        infos, missing = _check_in(store, me, args.timeout)
        if missing:
            store.set("go", "stop")
            report["missing"] = missing
            ranks = ", ".join(f"rank {i.rank} ({i.host})" for i in infos)
            gone = ", ".join(f"rank {r}" for r in missing[:20]) + (f" and {len(missing) - 20} more" if
                                                                   len(missing) > 20 else "")
            check = Check("rendezvous", "fail", f"{len(infos)} of {place.world_size} ranks checked in within "
                          f"{args.timeout:g} s; checked in: {ranks}; did not: {gone}")
            report.update(ranks=[asdict(i) for i in infos], checks=[asdict(check)], healthy=False)
            return 1, report
        store.set("go", "run")
    else:
        store.set(f"rank/{me.rank}", json.dumps(asdict(me)))
        store.add("arrived", 1)
        try:
            store.wait(["go"], datetime.timedelta(seconds=args.timeout + 5))
            go = store.get("go")
        except tdist.DistError:
            raise Failure(f"rank {me.rank} on {me.host}: rank 0 did not say go within {args.timeout + 5:g} s") \
                from None
        if go != b"run":
            return 1, None  # rank 0 names the missing ranks
    log_dir = watch_nccl(backend)
    tdist.init_process_group(backend, store=tdist.PrefixStore("pg", store), rank=place.rank,
                             world_size=place.world_size, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        result = timed_allreduce(device, place.world_size, place.rank)
        result["network"] = read_nccl_network(log_dir)
        results: list[dict[str, Any]] = [None] * place.world_size  # type: ignore[list-item]
        tdist.all_gather_object(results, result)
    finally:
        tdist.destroy_process_group()
    if place.rank != 0:
        store.wait(["verdict"], datetime.timedelta(seconds=args.timeout))
        code = int(store.get("verdict"))
        store.add("read", 1)  # rank 0 hosts the store: it waits for this before it exits
        return code, None
    slowest = max(results, key=lambda r: r["seconds"])
    n = place.world_size
    slowest["busbw_gbs"] = slowest["bytes"] / slowest["seconds"] / 1e9 * bus_factor(n)
    slowest["correct"] = all(r["correct"] for r in results)
    code, report = verdict(report, infos, slowest, [r["network"] for r in results], backend, _storage(args, infos))
    store.set("verdict", str(code))
    deadline = time.monotonic() + args.timeout  # exiting now would reset the others' connections mid-read
    while store.add("read", 0) < n - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return code, report

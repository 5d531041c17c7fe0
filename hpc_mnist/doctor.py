"""Pre-flight check of a distributed launch: where every rank runs, and whether that is sane.

    torchrun --standalone --nproc_per_node=2 -m hpc_mnist.doctor
    mpiexec -n 8 --ppn 4 ... python -m hpc_mnist.doctor        # or through hpc_mnist.launch, srun, ...

Every rank checks in with rank 0 through a small key-value store (its own short timeout, so a missing rank
is named in seconds instead of hanging for the collective timeout). Rank 0 prints a table (rank, host, local
rank, device, CPU affinity, threads) and one verdict per check, then all ranks exit 0 when healthy and 1
when a check failed. Checks that only mean something across hosts (the master address) or under a launcher
that binds ranks to cores (overlapping CPU sets) apply only there, so a healthy single-host run passes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import ipaddress
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from hpc_mnist.errors import ArgumentParser, UserError, report, writable_file
from hpc_mnist.perf.allreduce import bus_factor
from hpc_mnist.runtime import cpus, devices, launchers, rendezvous

DEFAULT_TIMEOUT = 60.0
ALLREDUCE_BYTES = 4 * 2**20


class Failure(Exception):
    """The doctor could not finish; the message is its one-line verdict."""


@dataclass
class RankInfo:
    """What one rank found about itself."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    host: str
    pid: int
    device: str
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_bus: str | None = None
    gpus_on_host: int = 0  # GPUs this rank can see (all of the node's unless the launcher narrowed it)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES / ZE_AFFINITY_MASK / ROCR_VISIBLE_DEVICES
    cpus: list[int] = field(default_factory=list)
    cpu_count: int = 1
    threads: int = 1
    omp_num_threads: str | None = None
    master_addr: str | None = None
    master_ip: str | None = None
    mpi4py: str | None = None  # version, None when it cannot be imported


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    message: str


def cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form taskset and mpiexec use)."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and cpu == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


def _resolve(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return socket.getaddrinfo(name, None)[0][4][0]
    except OSError:
        return None


def _gpu(device: torch.device) -> dict[str, Any]:
    """Index, UUID and PCI bus id of this rank's accelerator, where the runtime says."""
    if device.type not in ("cuda", "xpu"):
        return {}
    backend = getattr(torch, device.type)
    index = device.index or 0
    props = backend.get_device_properties(index)
    out: dict[str, Any] = {"gpu_index": index, "gpus_on_host": backend.device_count()}
    if getattr(props, "uuid", None) is not None:
        out["gpu_uuid"] = str(props.uuid)
    if hasattr(props, "pci_bus_id"):
        out["gpu_bus"] = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    return out


def gather_self(place: launchers.Placement, device_name: str) -> RankInfo:
    device = devices.select_device(device_name, place.local_rank or 0)
    if device.type in ("cuda", "xpu"):  # object collectives use the current device: never all on GPU 0
        getattr(torch, device.type).set_device(device)
    threads, _ = cpus.set_cpu_threads(place.local_world_size or 1)
    usable = cpus.usable_cpus()
    mpi = None
    if importlib.util.find_spec("mpi4py") is not None:
        try:
            import mpi4py

            mpi = mpi4py.__version__
        except ImportError:
            mpi = None
    visible = next((os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "ROCR_VISIBLE_DEVICES")
                    if k in os.environ), None)
    master = os.environ.get("MASTER_ADDR")
    return RankInfo(place.rank, place.world_size, place.local_rank or 0, place.local_world_size or 1, place.launcher,
                    socket.gethostname(), os.getpid(), str(device), cpus=usable, cpu_count=os.cpu_count() or 1,
                    threads=threads, omp_num_threads=os.environ.get("OMP_NUM_THREADS"), master_addr=master,
                    master_ip=_resolve(master), mpi4py=mpi, visible_devices=visible, **_gpu(device))


# ---- checks: pure functions of what the ranks reported, so each can be tested alone --------------------------

def _by_host(infos: list[RankInfo]) -> dict[str, list[RankInfo]]:
    hosts: dict[str, list[RankInfo]] = {}
    for info in infos:
        hosts.setdefault(info.host, []).append(info)
    return hosts


def check_world(infos: list[RankInfo], allocation: int | None) -> Check:
    """World size = hosts x ranks per host, and every allocated node runs ranks."""
    hosts = _by_host(infos)
    world = infos[0].world_size
    shape = f"{world} rank(s) on {len(hosts)} host(s)"
    uneven = {h: len(r) for h, r in hosts.items() if len(r) != r[0].local_world_size}
    if len(infos) != world:
        return Check("world size", "fail", f"{len(infos)} rank(s) reported but the world size is {world}")
    if uneven:
        host, count = next(iter(uneven.items()))
        return Check("world size", "fail", f"{host} runs {count} rank(s) but they say the local world size is "
                     f"{hosts[host][0].local_world_size}: the launcher's ranks-per-node does not match")
    if allocation is not None and allocation != len(hosts):
        one = " as one process" if world == 1 else ""
        return Check("world size", "fail", f"the job has {allocation} node(s) but the ranks run on {len(hosts)}"
                     f"{one}: start through a launcher (python -m hpc_mnist.launch, mpiexec, srun) on every node")
    for host, ranks in hosts.items():
        if ranks[0].gpus_on_host > len(ranks) and not ranks[0].visible_devices:
            return Check("world size", "warn", f"{shape}, but {host} has {ranks[0].gpus_on_host} GPUs and "
                         f"{len(ranks)} rank(s): some GPUs idle (one rank per GPU: --ppn)")
    where = f"the job's {allocation} node(s)" if allocation is not None else "no batch allocation"
    return Check("world size", "ok", f"{shape} ({where})")


def check_gpus(infos: list[RankInfo]) -> Check:
    """No two ranks on one GPU (same UUID, or the same index under the same visibility on one host)."""
    on_gpu = [i for i in infos if i.gpu_index is not None]
    if not on_gpu:
        return Check("one GPU per rank", "skip", "no GPUs in use")
    owners: dict[tuple, list[int]] = {}
    for i in on_gpu:
        key = (i.host, i.gpu_uuid) if i.gpu_uuid else (i.host, i.visible_devices, i.gpu_index)
        owners.setdefault(key, []).append(i.rank)
    shared = [(key, ranks) for key, ranks in owners.items() if len(ranks) > 1]
    if shared:
        (host, *_), ranks = shared[0]
        dev = next(i for i in on_gpu if i.rank == ranks[0])
        return Check("one GPU per rank", "fail", f"ranks {', '.join(map(str, ranks))} on {host} share GPU "
                     f"{dev.gpu_index} ({dev.gpu_uuid or 'same index'}): the launcher must give each rank its own "
                     "GPU (CUDA_VISIBLE_DEVICES per rank, --gpus-per-task, or LOCAL_RANK)")
    return Check("one GPU per rank", "ok", f"{len(on_gpu)} rank(s) on {len(owners)} distinct GPU(s)")


def check_cpu_sets(infos: list[RankInfo]) -> Check:
    """Under a launcher that binds ranks to cores (some rank sees fewer than all cores), no two ranks of a host
    may share a core; unbound ranks float over all cores, where overlap is expected."""
    bound_hosts = {h: r for h, r in _by_host(infos).items() if any(len(i.cpus) < i.cpu_count for i in r)}
    if not bound_hosts:
        return Check("CPU binding", "skip", "ranks are not bound to cores (each may run on all of its host's)")
    for host, ranks in bound_hosts.items():
        for a_index, a in enumerate(ranks):
            for b in ranks[a_index + 1:]:
                common = set(a.cpus) & set(b.cpus)
                if common:
                    return Check("CPU binding", "fail", f"ranks {a.rank} and {b.rank} on {host} share core(s) "
                                 f"{cpu_ranges(sorted(common))}: fix the launcher's --cpu-bind / --depth")
    return Check("CPU binding", "ok", f"bound ranks on {len(bound_hosts)} host(s) use disjoint core sets")


def check_threads(infos: list[RankInfo]) -> Check:
    """Threads per host against the cores the ranks may use: oversubscription slowed the CNN 2.4x here."""
    for host, ranks in _by_host(infos).items():
        cores = set().union(*(set(i.cpus) for i in ranks)) or {0}
        for i in ranks:
            if i.threads > len(i.cpus):
                return Check("threads", "fail", f"rank {i.rank} on {host} runs {i.threads} threads on "
                             f"{len(i.cpus)} core(s): set OMP_NUM_THREADS={max(1, len(i.cpus))} or bind more cores")
        total = sum(i.threads for i in ranks)
        if total > len(cores):
            return Check("threads", "fail", f"{host}: {len(ranks)} rank(s) x {ranks[0].threads} thread(s) = {total} "
                         f"threads on {len(cores)} core(s): set OMP_NUM_THREADS={max(1, len(cores) // len(ranks))} "
                         "or run fewer ranks per node")
    worst = max(sum(i.threads for i in r) / max(1, len(set().union(*(set(i.cpus) for i in r))))
                for r in _by_host(infos).values())
    return Check("threads", "ok", f"at most {worst:.0%} of each host's cores busy with compute threads")


def check_master(infos: list[RankInfo]) -> Check:
    """Across hosts the master address must resolve, to one non-loopback address, on every rank."""
    hosts = _by_host(infos)
    if len(hosts) == 1:
        return Check("master address", "skip", f"one host: {infos[0].master_addr or 'none needed'} is fine")
    unresolved = [i for i in infos if i.master_ip is None]
    if unresolved:
        return Check("master address", "fail", f"rank {unresolved[0].rank} on {unresolved[0].host} cannot resolve "
                     f"MASTER_ADDR={unresolved[0].master_addr!r}")
    loop = [i for i in infos if ipaddress.ip_address(i.master_ip.split("%")[0]).is_loopback]
    if loop:
        return Check("master address", "fail", f"MASTER_ADDR={loop[0].master_addr} is a loopback address "
                     f"({loop[0].master_ip}) on {loop[0].host}: other hosts cannot reach it; use rank 0's "
                     "high-speed-network name")
    addresses = {i.master_ip for i in infos}
    if len(addresses) > 1:
        return Check("master address", "fail", f"MASTER_ADDR resolves differently on different hosts: "
                     f"{', '.join(sorted(addresses))}")
    return Check("master address", "ok", f"{infos[0].master_addr} = {infos[0].master_ip} on every host, "
                 "reached by all ranks")


def check_mpi4py(infos: list[RankInfo]) -> Check:
    launchers = {i.launcher for i in infos}
    if "mpi" not in launchers:
        return Check("mpi4py", "skip", f"not needed ({', '.join(sorted(launchers))} launch)")
    missing = [i for i in infos if i.mpi4py is None]
    if missing:
        return Check("mpi4py", "fail", f"rank {missing[0].rank} on {missing[0].host} cannot import mpi4py, which "
                     "an MPI launch needs: load the site's mpi4py")
    return Check("mpi4py", "ok", f"mpi4py {infos[0].mpi4py} on every rank (MPI launch)")


def nccl_network(log_text: str) -> str | None:
    """The network NCCL chose, from its INFO log ('Using network Socket', 'Using network AWS Libfabric')."""
    found = re.findall(r"Using network ([^\n]+)", log_text)
    return found[-1].strip() if found else None


def check_transport(infos: list[RankInfo], backend: str, networks: list[str | None]) -> Check:
    if backend != "nccl":
        return Check("network transport", "skip", f"{backend} backend, no NCCL")
    hosts = len(_by_host(infos))
    seen = sorted({n for n in networks if n})
    if not seen:
        return Check("network transport", "warn", "NCCL did not say which network it uses (NCCL_DEBUG set by you? "
                     "look for 'Using network' in its output)")
    if hosts > 1 and any(n.lower().startswith("socket") for n in seen):
        return Check("network transport", "fail", "NCCL talks between hosts over TCP sockets, not the network "
                     "plugin (5-10x slower): load the site's NCCL net plugin (aws-ofi-nccl on Slingshot), see "
                     "launch/<system>.sh")
    where = "between hosts" if hosts > 1 else "on one host (traffic stays in the node)"
    return Check("network transport", "ok", f"NCCL uses {', '.join(seen)} {where}")


def check_allreduce(result: dict[str, Any] | None, world: int) -> Check:
    if world == 1 or result is None:
        return Check("all-reduce", "skip", "one process: no peers")
    if not result["correct"]:
        return Check("all-reduce", "fail", f"wrong sum: got {result['got']}, expected {result['expected']}")
    return Check("all-reduce", "ok", f"{result['bytes'] / 2**20:.0f} MiB in {result['seconds'] * 1e3:.2f} ms "
                 f"(slowest rank), bus bandwidth {result['busbw_gbs']:.2f} GB/s")


# ---- the run -------------------------------------------------------------------------------------------------

def allocation_nodes() -> int | None:
    """Nodes of the batch job (or of this srun step); None outside one."""
    if "SLURM_STEP_ID" in os.environ or "SLURM_JOB_ID" in os.environ:
        value = os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_JOB_NUM_NODES") \
            or os.environ.get("SLURM_NNODES")
        return int(value) if value and value.isdigit() else None
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile and Path(nodefile).exists():
        return len({line.strip() for line in Path(nodefile).read_text().splitlines() if line.strip()})
    return None


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


def _connect(place: launchers.Placement, timeout: float, host: str) -> tdist.Store:
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


def _allreduce(device: torch.device, world: int, rank: int) -> dict[str, Any]:
    """One correctness all-reduce, then a timed one of ALLREDUCE_BYTES (nccl-tests' bus bandwidth)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    x = torch.full((ALLREDUCE_BYTES // 4,), float(rank + 1), device=device)
    tdist.all_reduce(x)
    got, expected = float(x[0]), world * (world + 1) / 2
    times = []
    for _ in range(4):
        sync()
        start = time.perf_counter()
        tdist.all_reduce(x)
        sync()
        times.append(time.perf_counter() - start)
    seconds = min(times[1:])
    return {"correct": got == expected, "got": got, "expected": expected, "bytes": ALLREDUCE_BYTES,
            "seconds": seconds}


def _nccl_log(backend: str) -> Path | None:
    """Point NCCL's INFO log at a private folder, to read which network it picked (unless the user set it)."""
    if backend != "nccl" or "NCCL_DEBUG" in os.environ:
        return None
    folder = Path(tempfile.mkdtemp(prefix="hpc_mnist-doctor-"))
    os.environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,NET", NCCL_DEBUG_FILE=str(folder / "nccl.%p.log"))
    return folder


def _read_nccl_log(folder: Path | None) -> str | None:
    if folder is None:
        return None
    text = "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))
    for p in folder.glob("*"):
        p.unlink()
    folder.rmdir()
    return nccl_network(text)


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
    device = torch.device(me.device)
    backend = devices.backend_for(args.backend, device)
    if not tdist.is_backend_available(backend):
        raise UserError(f"this PyTorch ({torch.__version__}) has no {backend} backend (a CPU-only build has no nccl): "
                        "install the site's GPU build of torch, or check the CPU path with --backend gloo")
    if backend == "nccl" and device.type != "cuda":
        raise UserError(f"--backend nccl needs a GPU on every rank, and rank {place.rank} on {me.host} has {device} "
                        "(no GPU visible): use --backend gloo for the CPU path")
    report: dict[str, Any] = {"backend": backend, "timeout_s": args.timeout, "missing": []}
    if place.world_size == 1:
        return _verdict(report, [me], None, [None], backend)
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
    log_dir = _nccl_log(backend)
    tdist.init_process_group(backend, store=tdist.PrefixStore("pg", store), rank=place.rank,
                             world_size=place.world_size, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        result = _allreduce(device, place.world_size, place.rank)
        result["network"] = _read_nccl_log(log_dir)
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
    code, report = _verdict(report, infos, slowest, [r["network"] for r in results], backend)
    store.set("verdict", str(code))
    deadline = time.monotonic() + args.timeout  # exiting now would reset the others' connections mid-read
    while store.add("read", 0) < n - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return code, report


def _verdict(report: dict[str, Any], infos: list[RankInfo], allreduce: dict[str, Any] | None,
             networks: list[str | None], backend: str) -> tuple[int, dict[str, Any]]:
    checks = [check_world(infos, allocation_nodes()), check_gpus(infos), check_cpu_sets(infos),
              check_threads(infos), check_master(infos), check_mpi4py(infos),
              check_transport(infos, backend, networks), check_allreduce(allreduce, infos[0].world_size)]
    healthy = all(c.status != "fail" for c in checks)
    report.update(ranks=[asdict(i) for i in infos], checks=[asdict(c) for c in checks], healthy=healthy,
                  allreduce=allreduce)
    return (0 if healthy else 1), report


def show(report: dict[str, Any]) -> None:
    from rich.table import Table

    from hpc_mnist.runtime.logger import make_console

    console = make_console()
    table = Table(title=f"hpc_mnist doctor: {len(report['ranks'])} rank(s), backend {report['backend']}")
    for header in ("rank", "host", "local rank", "device", "GPU UUID / bus id", "CPU affinity", "threads"):
        table.add_column(header, justify="right" if header in ("rank", "local rank", "threads") else "left")
    for r in report["ranks"]:
        gpu = " / ".join(x for x in (r["gpu_uuid"], r["gpu_bus"]) if x) or "-"
        table.add_row(str(r["rank"]), r["host"], str(r["local_rank"]), r["device"], gpu, cpu_ranges(r["cpus"]),
                      str(r["threads"]))
    console.print(table)
    marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}
    for c in report["checks"]:
        console.print(f"{marks[c['status']]} {c['name']}: {c['message']}", soft_wrap=True)
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    console.print("healthy" if report["healthy"] else f"[red]unhealthy[/]: {', '.join(failed)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist doctor", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=float(os.environ.get("HPC_MNIST_DOCTOR_TIMEOUT", DEFAULT_TIMEOUT)),
                   help="seconds to wait for every rank to check in, and for the all-reduce "
                   f"(default: $HPC_MNIST_DOCTOR_TIMEOUT or {DEFAULT_TIMEOUT:g})")
    p.add_argument("--init", default="auto", choices=["auto", "torchrun", "mpi", "slurm", "none"],
                   help="how to find the ranks, as the trainer's dist.init (default: auto)")
    p.add_argument("--device", default="auto", help="as train.device (default: auto)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "xccl", "gloo"], help="(default: auto)")
    p.add_argument("--json", type=Path, help="also write the report as JSON (rank 0)")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        json_out = writable_file(args.json) if args.json else None  # before the check, not after it
        code, result = diagnose(args)
    except UserError as e:
        return report(e)
    except Failure as e:
        print(f"hpc_mnist.doctor: FAIL {e}", file=sys.stderr, flush=True)
        return 1
    except tdist.DistError as e:  # a peer vanished during the all-reduce
        print(f"hpc_mnist.doctor: FAIL all-reduce did not complete within {args.timeout:g} s: "
              f"{str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        return 1
    if result is not None:
        show(result)
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The checks: pure functions of what the ranks reported, so each can be tested alone, and the verdict that
runs them all. Checks that only mean something across hosts (the master address) or under a launcher that binds
ranks to cores (overlapping CPU sets) apply only there, so a healthy single-host run passes.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc_mnist.doctor.ranks import RankInfo
from hpc_mnist.runtime import systems


@dataclass
class Check:
    """One check's verdict, as the table and the JSON report show it."""

    name: str
    status: str  # ok | warn | fail | skip
    message: str
    hosts: list[str] = field(default_factory=list)  # the hosts a failure is theirs alone: a job goes on without them


def cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form taskset and mpiexec use)."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and cpu == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


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
            fits = len(cores) // len(ranks)  # 0: more ranks than cores, whatever the threads
            fix = f"set OMP_NUM_THREADS={fits} or run fewer ranks per node" if fits and fits < ranks[0].threads \
                else f"run at most {len(cores)} rank(s) on this host"
            return Check("threads", "fail", f"{host}: {len(ranks)} rank(s) x {ranks[0].threads} thread(s) = {total} "
                         f"threads on {len(cores)} core(s): {fix}")
    worst = max(sum(i.threads for i in r) / max(1, len(set().union(*(set(i.cpus) for i in r))))
                for r in _by_host(infos).values())
    return Check("threads", "ok", f"at most {worst:.0%} of each host's cores busy with compute threads")


def check_master(infos: list[RankInfo]) -> Check:
    """Across hosts the master address must resolve, to one non-loopback address, on every rank."""
    hosts = _by_host(infos)
    if len(hosts) == 1:
        where = infos[0].master_addr
        return Check("master address", "skip", f"one host: {where} is fine" if where else "one host: none needed")
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


def size(n: float) -> str:
    """Bytes for people: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _some_hosts(infos: list[RankInfo], failing: set[str]) -> list[str]:
    """The hosts to blame for a failure: `failing`, when others pass (a failure on every host is the set-up's)."""
    return sorted(failing) if failing and failing != set(_by_host(infos)) else []


def check_storage(infos: list[RankInfo], checkpoint: int, keep: int, seen: dict[int, bool]) -> Check:
    """The run directory: writable from every host, one file system that every host shares (rank 0 saw every
    other host's probe file: `seen`), and room for train.keep_checkpoints + 1 checkpoints of `checkpoint` bytes
    (the newest are kept, and the next is written before the oldest goes)."""
    reports = [(i, i.storage) for i in infos if i.storage]
    if not reports:
        return Check("storage", "skip", "no run directory checked")
    where = reports[0][1]["run_dir"]
    for i, s in reports:
        if not s["writable"]:
            return Check("storage", "fail", f"rank {i.rank} on {i.host} cannot write {s['probed']} (for the run "
                         f"directory {where}): {s['error']}: set log.dir to a folder every host can write",
                         hosts=_some_hosts(infos, {j.host for j, t in reports if not t["writable"]}))
    hosts = _by_host(infos)
    unseen = sorted({i.host for i, _ in reports if i.host != infos[0].host and not seen.get(i.rank)})
    if len(hosts) > 1 and unseen:
        s = reports[0][1]
        return Check("storage", "fail", f"the run directory {where} is on a node-local file system ({s['fs_type']} "
                     f"at {s['mount']} on each host): rank 0 on {infos[0].host} does not see what "
                     f"{', '.join(unseen[:5])} write there; set log.dir to a file system every host shares")
    needed = (keep + 1) * checkpoint
    tight = min(reports, key=lambda r: r[1]["free_bytes"] + r[1]["checkpoint_bytes"])
    i, s = tight
    room = s["free_bytes"] + s["checkpoint_bytes"]
    what = (f"train.keep_checkpoints + 1 = {keep + 1} checkpoints of {size(checkpoint)} (model and optimizer "
            f"state) need {size(needed)}")
    fs = f"{s['fs_type'] or 'file system'} at {s['mount'] or s['probed']}"
    held = f" (and {size(s['checkpoint_bytes'])} in its checkpoints)" if s["checkpoint_bytes"] else ""
    if room < needed:
        return Check("storage", "fail", f"{where}: {size(s['free_bytes'])} free{held} on {fs} (seen from {i.host}); "
                     f"{what}: free some space or set log.dir elsewhere")
    return Check("storage", "ok", f"{where} writable from {len(hosts)} host(s); {size(s['free_bytes'])} free{held} "
                 f"on {fs}; {what}")


FAIL_HOSTS_VAR = "HPC_MNIST_DOCTOR_FAIL_HOSTS"


def check_named_hosts(infos: list[RankInfo]) -> Check | None:
    """The test hook of the job scripts' healing (a host that fails the doctor is left out of the launch when
    spares allow): the hosts named in $HPC_MNIST_DOCTOR_FAIL_HOSTS fail; none when it is unset."""
    named = [h for h in os.environ.get(FAIL_HOSTS_VAR, "").split(",") if h]
    if not named:
        return None
    failing = sorted({i.host for i in infos} & set(named))
    if failing:
        return Check("named to fail", "fail", f"{', '.join(failing)} named in ${FAIL_HOSTS_VAR} (a test of the "
                     "job scripts)", hosts=failing)
    return Check("named to fail", "ok", f"no host of this launch is named in ${FAIL_HOSTS_VAR}")


def allocation_nodes() -> int | None:
    """Nodes of this launch (hpc_mnist.launch says: a job may hold spares), of the srun step or of the batch job;
    None outside one."""
    if os.environ.get(systems.NODES_VAR, "").isdigit():
        return int(os.environ[systems.NODES_VAR])
    if "SLURM_STEP_ID" in os.environ or "SLURM_JOB_ID" in os.environ:
        value = os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_JOB_NUM_NODES") \
            or os.environ.get("SLURM_NNODES")
        return int(value) if value and value.isdigit() else None
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile and Path(nodefile).exists():
        return len({line.strip() for line in Path(nodefile).read_text().splitlines() if line.strip()})
    return None


def verdict(report: dict[str, Any], infos: list[RankInfo], allreduce: dict[str, Any] | None,
            networks: list[str | None], backend: str, storage: Check | None = None) -> tuple[int, dict[str, Any]]:
    """Every check on what the ranks reported, into `report`; (exit code, report): 0 healthy, 1 not."""
    checks = [check_world(infos, allocation_nodes()), check_gpus(infos), check_cpu_sets(infos),
              check_threads(infos), check_master(infos), check_mpi4py(infos),
              check_transport(infos, backend, networks), check_allreduce(allreduce, infos[0].world_size),
              *([storage] if storage else [])]
    checks += [c for c in [check_named_hosts(infos)] if c]
    healthy = all(c.status != "fail" for c in checks)
    blamed = sorted({h for c in checks if c.status == "fail" for h in c.hosts})
    report.update(ranks=[asdict(i) for i in infos], checks=[asdict(c) for c in checks], healthy=healthy,
                  allreduce=allreduce, bad_hosts=blamed)
    return (0 if healthy else 1), report

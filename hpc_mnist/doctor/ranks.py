"""What one rank finds about itself: host, device, GPU identity, CPU affinity, threads, rendezvous address."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch

from hpc_mnist.runtime.cpus import set_cpu_threads, usable_cpus
from hpc_mnist.runtime.devices import select_device
from hpc_mnist.runtime.launchers import Placement


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
    storage: dict[str, Any] | None = None  # the run directory as this rank finds it (storage.Storage)


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


def gather_self(place: Placement, device_name: str) -> RankInfo:
    """This rank's report, with the device and CPU threads chosen as the trainer chooses them."""
    device = select_device(device_name, place.local_rank or 0)
    if device.type in ("cuda", "xpu"):  # object collectives use the current device: never all on GPU 0
        getattr(torch, device.type).set_device(device)
    threads, _ = set_cpu_threads(place.local_world_size or 1)
    cpus = usable_cpus()
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
                    socket.gethostname(), os.getpid(), str(device), cpus=cpus, cpu_count=os.cpu_count() or 1,
                    threads=threads, omp_num_threads=os.environ.get("OMP_NUM_THREADS"), master_addr=master,
                    master_ip=_resolve(master), mpi4py=mpi, visible_devices=visible, **_gpu(device))

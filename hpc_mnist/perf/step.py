"""The step-time model of data-parallel training: step time, samples/s and efficiency at any size.

A weak-scaling step on n ranks takes the rank's own compute t_c(b) (forward, backward, optimizer at per-rank
batch b) plus the gradient all-reduce of S bytes that DDP adds:

    no overlap:   t_step = t_c + t_allreduce(S, n)
    with overlap: t_step = t_c + max(0, t_allreduce(all buckets but the last) - backward share x t_c)
                  + t_allreduce(last bucket)       (DDP reduces buckets during backward; the last one after it)

Efficiency is t_c / t_step: throughput against n x one rank without communication. t_allreduce comes from an
alpha-beta `Network` fitted to one sweep, or from `perf.allreduce`'s model fitted to sweeps at several rank
counts. The `model` command (hpc_mnist/model.py) prints its predictions; `comm` and `scaling` check them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hpc_mnist.perf import allreduce

TRAIN_SPLIT = 48_000  # MNIST's 60,000 training digits less the 20% validation split


@dataclass(frozen=True)
class Network:
    """Alpha-beta all-reduce cost: latency `alpha_s` at `ref_ranks` ranks and bus bandwidth (bytes/s)."""

    alpha_s: float
    busbw: float
    ref_ranks: int
    latency: str = "tree"  # tree: alpha grows as log2(n); ring: as n - 1
    max_rel_error: float = 0.0  # of the fit on the points it came from
    busbw_is_lower_bound: bool = False  # the sweep was latency-bound: busbw is the best any size showed

    def latency_s(self, ranks: int) -> float:
        if ranks < 2:
            return 0.0
        if self.latency == "ring":
            return self.alpha_s * (ranks - 1) / max(1, self.ref_ranks - 1)
        return self.alpha_s * math.log2(ranks) / math.log2(max(2, self.ref_ranks))

    def bandwidth_s(self, nbytes: float, ranks: int) -> float:
        return 0.0 if ranks < 2 else nbytes * 2 * (ranks - 1) / ranks / self.busbw

    def allreduce_s(self, nbytes: float, ranks: int) -> float:
        return self.latency_s(ranks) + self.bandwidth_s(nbytes, ranks)


def _weighted_line(xs: list[float], ts: list[float], ws: list[float]) -> tuple[float, float]:
    """(alpha, slope) of t = alpha + slope x by weighted least squares."""
    points = list(zip(ws, xs, ts, strict=True))
    sw, sx, st = sum(ws), sum(w * x for w, x, _ in points), sum(w * t for w, _, t in points)
    sxx, sxt = sum(w * x * x for w, x, _ in points), sum(w * x * t for w, x, t in points)
    slope = (sw * sxt - sx * st) / (sw * sxx - sx * sx)
    alpha = (st - slope * sx) / sw
    if alpha < 0:  # latency cannot be negative: refit the slope through the origin
        alpha, slope = 0.0, sxt / sxx
    return alpha, slope


def fit(rows: list[dict[str, Any]], ranks: int) -> Network:
    """Alpha and 1/busbw from measured (bytes, time_us) rows, minimising the sum of relative errors (times span
    four orders of magnitude; absolute, not squared, errors so that one size that caught a neighbour's burst
    or a quiet moment on a shared machine does not drag the fit): iteratively reweighted least squares.
    A sweep of small messages only may not resolve the bandwidth at all; busbw is then the best any size
    showed (a lower bound the data supports), and the network says so."""
    if ranks < 2 or len(rows) < 2:
        raise ValueError("an alpha-beta fit needs 2 or more ranks and 2 or more message sizes")
    xs = [r["bytes"] * 2 * (ranks - 1) / ranks for r in rows]
    ts = [r["time_us"] * 1e-6 for r in rows]
    ws = [1 / t**2 for t in ts]
    for _ in range(50):
        alpha, slope = _weighted_line(xs, ts, ws)
        ws = [1 / (t**2 * max(abs(alpha + slope * x - t) / t, 1e-4)) for x, t in zip(xs, ts, strict=True)]
    bound = slope <= 0
    if bound:  # times do not grow with size within the noise: the sweep never left the latency-bound regime
        alpha = statistics.median(ts)  # what every size took: latency
        slope = min(t / x for x, t in zip(xs, ts, strict=True))  # bandwidth time <= measured time, at every size
    net = Network(alpha, 1 / slope, ranks)
    error = max(abs(net.allreduce_s(r["bytes"], ranks) - t) / t for r, t in zip(rows, ts, strict=True))
    return Network(alpha, 1 / slope, ranks, max_rel_error=error, busbw_is_lower_bound=bound)


def network_from_dict(data: dict[str, Any]) -> Network:
    return Network(data["alpha_s"], data["busbw"], data["ref_ranks"], data.get("latency", "tree"),
                   data.get("max_rel_error", 0.0), data.get("busbw_is_lower_bound", False))


def polaris() -> allreduce.AllReduceModel:
    """The all-reduce model fitted to ALCF's published Polaris sweeps (2, 8 and 540 nodes x 4 A100, NCCL 2.18)."""
    return allreduce.fit(allreduce.shipped_sweeps())


@dataclass(frozen=True)
class Compute:
    """A rank's own work per step at batch b: a fixed floor (kernel launches, optimizer) plus per-sample work."""

    floor_s: float
    per_sample_s: float
    backward_share: float = 2 / 3  # backward is about twice the forward; DDP overlaps the all-reduce with it
    source: str = ""

    def step_s(self, batch: int) -> float:
        return self.floor_s + batch * self.per_sample_s


def train_flops_per_sample(model: nn.Module) -> float:
    """Forward multiply-adds x 2 of the Linear and Conv2d layers, x 3 for forward + backward."""
    flops = 0.0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops += 2 * module.in_channels // module.groups * k * output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return 3 * flops


# An A100 running these small models in eager PyTorch: ASSUMED, not measured here (no GPU was lent).
# Floor: ~40-60 kernel launches and the optimizer at ~8 us each; achieved 20 TFLOP/s on small TF32/bf16 kernels.
A100_FLOOR_S = 0.4e-3
A100_FLOPS = 20e12


def a100_compute(model: nn.Module) -> Compute:
    return Compute(A100_FLOOR_S, train_flops_per_sample(model) / A100_FLOPS,
                   source=f"assumed A100: {A100_FLOOR_S * 1e3:g} ms floor + FLOPs / {A100_FLOPS / 1e12:g} TFLOP/s")


def ddp_buckets(model: nn.Module, first_cap: int = 2**20, cap: int = 25 * 2**20) -> list[int]:
    """Gradient bytes per DDP bucket, in the order backward fills them (parameters in reverse; a bucket closes
    once it holds `cap` bytes, the first one at 1 MiB: DDP's defaults, approximately). The last bucket holds
    the first layers' gradients, ready only when backward ends: its all-reduce cannot overlap."""
    buckets, current, limit = [], 0, first_cap
    for param in reversed(list(model.parameters())):
        current += param.numel() * param.element_size()
        if current >= limit:
            buckets.append(current)
            current, limit = 0, cap
    if current or not buckets:
        buckets.append(current)
    return buckets


def predict(compute: Compute, net: Network, grad_bytes: int, batch: int, ranks: int,
            buckets: list[int] | None = None) -> dict[str, Any]:
    """One step on `ranks` ranks. With overlap, every bucket but the last is reduced during the rest of
    backward (`buckets=None`: every byte may overlap, the bound for many small buckets)."""
    t_c = compute.step_s(batch)
    latency, bandwidth = net.latency_s(ranks), net.bandwidth_s(grad_bytes, ranks)
    t_ar = latency + bandwidth
    plain = t_c + t_ar
    if buckets is None:
        hidden, tail = t_ar, 0.0
    else:
        hidden = sum(net.allreduce_s(b, ranks) for b in buckets[:-1])
        tail = net.allreduce_s(buckets[-1], ranks)
    overlap = t_c + max(0.0, hidden - compute.backward_share * t_c) + tail
    return {"ranks": ranks, "batch": batch, "global_batch": batch * ranks, "compute_s": t_c,
            "latency_s": latency, "bandwidth_s": bandwidth, "step_s": plain, "step_overlap_s": overlap,
            "samples_per_s": ranks * batch / plain, "samples_per_s_overlap": ranks * batch / overlap,
            "efficiency": t_c / plain, "efficiency_overlap": t_c / overlap,
            "steps_per_epoch": TRAIN_SPLIT / (batch * ranks)}


def where_it_stops(rows: list[dict[str, Any]], nodes: list[int], threshold: float) -> str:
    """The first node count whose efficiency (no overlap) falls below `threshold`, and the term to blame."""
    for n, r in zip(nodes, rows, strict=True):
        if r["efficiency"] < threshold:
            term = "latency" if r["latency_s"] > r["bandwidth_s"] else "bandwidth"
            return (f"from {n} node(s) ({term}: {r[term + '_s'] * 1e6:.0f} us of all-reduce vs "
                    f"{r['compute_s'] * 1e6:.0f} us compute)")
    return f"never up to {nodes[-1]} nodes"


def sweep(compute: Compute, net: Network, grad_bytes: int, batch: int, nodes: list[int],
          ranks_per_node: int, buckets: list[int] | None = None) -> list[dict[str, Any]]:
    return [{"nodes": n, **predict(compute, net, grad_bytes, batch, n * ranks_per_node, buckets)} for n in nodes]


def polaris_report(batches: list[int], nodes: list[int], ranks_per_node: int = 4,
                   net: Any = None, measured: dict[tuple[str, int], float] | None = None) -> dict[str, Any]:
    """Predictions for each shipped model: on Polaris' network unless `net` is given, with an assumed A100's
    compute unless `measured` gives the milliseconds of a step for (model, batch)."""
    from hpc_mnist.core.config import ModelConfig
    from hpc_mnist.core.models import allreduce_bytes, build

    net = net or polaris()
    out: dict[str, Any] = {"network": network_dict(net), "ranks_per_node": ranks_per_node, "models": {}}
    for name in ("linear", "mlp", "cnn"):
        model = build(ModelConfig(name=name))
        grad, buckets = allreduce_bytes(model), ddp_buckets(model)
        entry: dict[str, Any] = {"gradient_bytes": grad, "ddp_buckets": buckets, "batches": {}}
        for b in batches:
            compute = a100_compute(model)
            if measured and (name, b) in measured:
                compute = Compute(0.0, measured[(name, b)] / 1e3 / b, source=f"measured: {measured[(name, b)]:g} ms "
                                  f"a step at batch {b}")
            rows = sweep(compute, net, grad, b, nodes, ranks_per_node, buckets)
            data_limit = next((n for n, r in zip(nodes, rows, strict=True) if r["steps_per_epoch"] < 1), None)
            entry["compute"] = asdict(compute)
            entry["batches"][b] = {"rows": rows, "below_90": where_it_stops(rows, nodes, 0.9),
                                   "below_50": where_it_stops(rows, nodes, 0.5),
                                   "global_batch_exceeds_data_at": data_limit, "compute": asdict(compute)}
        out["models"][name] = entry
    return out


def network_dict(net: Any) -> dict[str, Any]:
    if isinstance(net, allreduce.AllReduceModel):
        return net.to_dict()
    return {**asdict(net), "busbw_gbs": net.busbw / 1e9}


def describe(net: Any) -> str:
    if isinstance(net, allreduce.AllReduceModel):
        ranks = ", ".join(f"{n:,}" for n in net.fitted_ranks)
        return (f"all-reduce model fitted to sweeps at {ranks} ranks ({len(net.regimes)} regime(s); latency "
                f"{net.latency_s(8) * 1e6:.0f} us at 8 ranks, {net.latency_s(4096) * 1e6:.0f} us at 4,096)")
    return (f"alpha {net.alpha_s * 1e6:.1f} us at {net.ref_ranks} ranks (log2 growth), bus bandwidth "
            f"{net.busbw / 1e9:.1f} GB/s")


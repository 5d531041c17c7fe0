"""All-reduce time as a function of message size and rank count, fitted to measured sweeps.

A sweep is the all-reduce time of many message sizes at one rank count: this project's `python -m hpc_mnist.comm
--json` output, or nccl-tests' `all_reduce_perf` text output as centres publish it (ranks counted from its
per-rank device lines, time from the out-of-place column).

The form. NCCL picks, for each size, the fastest of its algorithms and protocols, and every published sweep
shows two regimes: latency-bound (trees and the LL protocols, small messages) and bandwidth-bound (rings and the
Simple protocol, large ones). Each regime k is a line in the size S, and the faster one is taken:

    t(S, n) = min_k [ a_k + b_k L + (c_k + d_k L) S ],    L = log2(n ranks)

Latency grows with log2 of the ranks, the depth of NCCL's trees across nodes (Polaris: 23 us at 8 ranks, 61 us
at 32, 206 us at 2,160: log-linear within 15%); the per-byte cost grows with it too, which no algorithm's
formula says but the network does (Polaris' bus bandwidth at 64 MiB: 35 GB/s at 8 ranks, 17 GB/s at 2,160).
Neither may fall as ranks grow (b_k, d_k >= 0). A ring's latency, linear in n, would matter only beyond a few
thousand ranks and cannot be told apart from noise in sweeps of tens of ranks, so it is not modelled.

The fit uses every size of every sweep and minimises the sum of relative absolute errors (times span five
orders of magnitude, and single sizes of published sweeps sit up to 2x off their neighbours; squared errors
would let them drag the fit) by iteratively reweighted least squares; each point belongs to the regime that is
faster for it, starting from the split between small and large sizes that fits the sweeps best. One rank count
cannot show growth: a fit to one sweep keeps its latency growing as log2(n) from nothing at one rank and its
per-byte cost fixed.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_mnist.errors import UserError

SHIPPED = Path(__file__).resolve().parents[1] / "sweeps"  # published sweeps the default model is fitted to


@dataclass(frozen=True)
class Sweep:
    ranks: int
    sizes: tuple[int, ...]  # bytes
    times_us: tuple[float, ...]
    source: str
    hosts: int | None = None


def parse_nccl_tests(text: str, source: str = "") -> Sweep:
    """nccl-tests' all_reduce_perf output: ranks from the '#  Rank N ... device' lines, the out-of-place time."""
    ranks = len(re.findall(r"^#\s+Rank\s+\d+\s.*\bdevice\b", text, flags=re.M))
    hosts = len(set(re.findall(r"^#\s+Rank\s+\d+\s.*?\bon\s+(\S+)\s+device\b", text, flags=re.M))) or None
    sizes, times = [], []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0].isdigit() and not line.lstrip().startswith("#"):
            sizes.append(int(fields[0]))
            times.append(float(fields[5]))  # size count type redop root TIME algbw busbw #wrong ...
    if not ranks or not sizes:
        raise UserError(f"{source or 'input'}: not an nccl-tests all_reduce_perf output (no device lines or no "
                        "rows of sizes and times)")
    return Sweep(ranks, tuple(sizes), tuple(times), source, hosts)


def read_sweep(path: str | Path) -> Sweep:
    """A sweep from this project's comm JSON or nccl-tests' text output (either may be gzip-compressed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode(errors="replace")
    if not text.lstrip().startswith("{"):
        return parse_nccl_tests(text, str(path))
    try:
        data = json.loads(text)
        rows = [r for r in data["rows"] if r.get("what", "sweep") == "sweep"]
        return Sweep(int(data["ranks"]), tuple(int(r["bytes"]) for r in rows),
                     tuple(float(r["time_us"]) for r in rows), data.get("source", str(path)), data.get("hosts"))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a comm sweep (python -m hpc_mnist.comm --json): {e}") from None


def shipped_sweeps() -> list[Sweep]:
    return [read_sweep(p) for p in sorted(SHIPPED.glob("*.json"))]


@dataclass(frozen=True)
class Regime:
    """t = a + b L + (c + d L) S seconds, L = log2(ranks), S bytes."""

    a: float
    b: float
    c: float
    d: float

    def time_s(self, nbytes: float, ranks: int) -> float:
        log = math.log2(ranks)
        return max(0.0, self.a + self.b * log) + max(0.0, self.c + self.d * log) * nbytes


@dataclass(frozen=True)
class AllReduceModel:
    regimes: tuple[Regime, ...]
    fitted_ranks: tuple[int, ...]  # the rank counts of the sweeps it was fitted to

    def allreduce_s(self, nbytes: float, ranks: int) -> float:
        """Below the smallest rank count fitted (one node, where NCCL moves data over NVLink alone), that count's
        time: an upper bound rather than an extrapolation of inter-node sweeps into a node."""
        if ranks < 2:
            return 0.0
        ranks = max(ranks, self.fitted_ranks[0])
        return min(r.time_s(nbytes, ranks) for r in self.regimes)

    def latency_s(self, ranks: int) -> float:
        return self.allreduce_s(0, ranks)

    def bandwidth_s(self, nbytes: float, ranks: int) -> float:
        return self.allreduce_s(nbytes, ranks) - self.latency_s(ranks)

    def to_dict(self) -> dict[str, Any]:
        return {"form": "t = min_k [a + b log2(n) + (c + d log2(n)) S] seconds",
                "regimes": [vars(r) for r in self.regimes], "fitted_ranks": list(self.fitted_ranks)}


def _points(sweeps: list[Sweep]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.array([s for sw in sweeps for s in sw.sizes], dtype=float)
    logs = np.array([math.log2(sw.ranks) for sw in sweeps for _ in sw.sizes])
    times = np.array([t * 1e-6 for sw in sweeps for t in sw.times_us])
    return sizes, logs, times


def _fit_regime(sizes: np.ndarray, logs: np.ndarray, times: np.ndarray) -> Regime:
    """One regime by relative-L1 IRLS; the growth terms b, d are dropped when the data would make them negative
    and are not fitted at all from one rank count."""
    features = np.stack([np.ones_like(sizes), logs, sizes, sizes * logs], axis=1)
    one_count = np.ptp(logs) == 0
    weights = 1 / times**2
    coef = np.zeros(4)
    for _ in range(40):
        keep = [0, 2] if one_count else [0, 1, 2, 3]
        while True:
            w = np.sqrt(weights)
            solved, *_ = np.linalg.lstsq(features[:, keep] * w[:, None], times * w, rcond=None)
            coef = np.zeros(4)
            coef[keep] = solved
            negative = [i for i in (1, 3, 2) if i in keep and coef[i] < 0]
            if not negative:
                break
            keep.remove(negative[0])
        error = np.abs(features @ coef - times) / times
        weights = 1 / (times**2 * np.maximum(error, 1e-3))
    if one_count:  # latency from nothing at one rank, growing as log2(n); per-byte cost as measured
        log = logs[0]
        coef = np.array([0.0, max(coef[0], 0.0) / log, coef[2], 0.0])
    return Regime(*coef.tolist())


def _relative_error(model: AllReduceModel, sweeps: list[Sweep]) -> float:
    return sum(abs(model.allreduce_s(s, sw.ranks) / (t * 1e-6) - 1)
               for sw in sweeps for s, t in zip(sw.sizes, sw.times_us, strict=True))


def fit(sweeps: list[Sweep]) -> AllReduceModel:
    """The model from every size of every sweep (see the module docstring)."""
    sweeps = [sw for sw in sweeps if sw.ranks >= 2 and sw.sizes]
    if not sweeps or sum(len(sw.sizes) for sw in sweeps) < 2:
        raise UserError("an all-reduce model needs a sweep of 2 or more message sizes at 2 or more ranks")
    sizes, logs, times = _points(sweeps)
    ranks = tuple(sorted({sw.ranks for sw in sweeps}))
    best = AllReduceModel((_fit_regime(sizes, logs, times),), ranks)
    best_error = _relative_error(best, sweeps)
    for split in sorted(set(sizes.tolist()))[3:-2]:  # at least 3 sizes in each regime
        small = sizes <= split
        for _ in range(20):  # each point to its faster regime, until that settles
            if small.sum() < 3 or (~small).sum() < 3:
                break
            regimes = (_fit_regime(sizes[small], logs[small], times[small]),
                       _fit_regime(sizes[~small], logs[~small], times[~small]))
            faster = np.array([regimes[0].time_s(s, 2**log) <= regimes[1].time_s(s, 2**log)
                               for s, log in zip(sizes, logs, strict=True)])
            if (faster == small).all():
                break
            small = faster
        else:
            continue
        if small.sum() < 3 or (~small).sum() < 3:
            continue
        model = AllReduceModel(regimes, ranks)
        error = _relative_error(model, sweeps)
        if error < 0.9 * best_error:  # a second regime must earn its four parameters
            best, best_error = model, error
    return best


def predictions(model: AllReduceModel, ranks: list[int], sizes: list[int]) -> list[dict[str, Any]]:
    """`{"ranks", "bytes", "time_us"}` rows: the shape other tools read."""
    return [{"ranks": n, "bytes": s, "time_us": model.allreduce_s(s, n) * 1e6} for n in ranks for s in sizes]


def errors(model: AllReduceModel, sweep: Sweep) -> list[dict[str, Any]]:
    """Predicted against measured, for each size of a sweep (a check on sweeps the model was not fitted to)."""
    return [{"bytes": s, "measured_us": t, "predicted_us": model.allreduce_s(s, sweep.ranks) * 1e6,
             "error": model.allreduce_s(s, sweep.ranks) * 1e6 / t - 1}
            for s, t in zip(sweep.sizes, sweep.times_us, strict=True)]


def bus_factor(ranks: int) -> float:
    """nccl-tests' all-reduce factor: busbw = algbw x 2(n-1)/n (a ring moves 2(n-1)/n of the data per rank)."""
    return 2 * (ranks - 1) / ranks

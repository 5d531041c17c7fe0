"""All-reduce over hosts joined by links of one speed, as gloo's ring runs it: fitted to sweeps at a few host
counts, it says what the same links give at more.

gloo reduces a tensor of S bytes on n ranks in a ring: a reduce-scatter and an all-gather of n - 1 steps each, in
which every rank sends and receives S / n bytes. So each host's link carries 2(n-1)/n x S each way, and the time is

    t(S, n) = a + b (n - 1) + 2(n-1)/n x S / B

with `a` what any call costs, `b` each step's latency (two per extra rank) and B the bus bandwidth, which
approaches the link's speed. Sweeps at two host counts or more fix all three; one host count cannot separate
`a` from `b`, and then the latency grows from nothing at one rank (a = 0). Fitted by minimising the sum of
relative absolute errors (times span four orders of magnitude; one size caught by a neighbour's burst must not
drag the fit), by iteratively reweighted least squares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hpc_mnist.errors import UserError
from hpc_mnist.perf.allreduce import Sweep, bus_factor


@dataclass(frozen=True)
class Ring:
    """t(S, n) = a_s + step_s (n - 1) + bus_factor(n) S / busbw seconds."""

    a_s: float
    step_s: float
    busbw: float  # bytes/s
    fitted_ranks: tuple[int, ...]
    max_rel_error: float = 0.0  # on the sweeps it was fitted to

    def latency_s(self, ranks: int) -> float:
        return 0.0 if ranks < 2 else self.a_s + self.step_s * (ranks - 1)

    def bandwidth_s(self, nbytes: float, ranks: int) -> float:
        return 0.0 if ranks < 2 else bus_factor(ranks) * nbytes / self.busbw

    def allreduce_s(self, nbytes: float, ranks: int) -> float:
        return self.latency_s(ranks) + self.bandwidth_s(nbytes, ranks)

    def to_dict(self) -> dict[str, Any]:
        return {"form": "t = a + step (n - 1) + 2(n-1)/n S / busbw seconds", **asdict(self),
                "busbw_mbit": self.busbw * 8 / 1e6}

    def describe(self) -> str:
        ranks = ", ".join(map(str, self.fitted_ranks))
        return (f"ring all-reduce fitted to sweeps at {ranks} ranks: {self.a_s * 1e6:.0f} us + "
                f"{self.step_s * 1e6:.0f} us per extra rank, bus bandwidth {self.busbw * 8 / 1e6:,.0f} Mbit/s "
                f"(largest error on the sweeps {self.max_rel_error:.0%})")


def fit(sweeps: list[Sweep]) -> Ring:
    """The ring's three terms from every size of every sweep (see the module docstring)."""
    sweeps = [sw for sw in sweeps if sw.ranks >= 2 and sw.sizes]
    if sum(len(sw.sizes) for sw in sweeps) < 3:
        raise UserError("a ring all-reduce fit needs sweeps of 3 or more message sizes at 2 or more ranks")
    ranks = np.array([sw.ranks for sw in sweeps for _ in sw.sizes], dtype=float)
    sizes = np.array([s for sw in sweeps for s in sw.sizes], dtype=float)
    times = np.array([t * 1e-6 for sw in sweeps for t in sw.times_us])
    one_count = np.ptp(ranks) == 0
    features = np.stack([np.ones_like(ranks), ranks - 1, 2 * (ranks - 1) / ranks * sizes], axis=1)
    keep = [1, 2] if one_count else [0, 1, 2]
    weights = 1 / times**2
    coef = np.zeros(3)
    for _ in range(50):
        used = list(keep)
        while True:
            w = np.sqrt(weights)
            solved, *_ = np.linalg.lstsq(features[:, used] * w[:, None], times * w, rcond=None)
            coef = np.zeros(3)
            coef[used] = solved
            negative = [i for i in used if coef[i] < 0 and i != 2]  # no latency term below nothing
            if not negative:
                break
            used.remove(negative[0])
        error = np.abs(features @ coef - times) / times
        weights = 1 / (times**2 * np.maximum(error, 1e-4))
    if coef[2] <= 0:
        raise UserError("the sweeps' times do not grow with the message size: no bandwidth to fit (sweep larger "
                        "messages: --max-bytes 4194304 or more)")
    ring = Ring(float(coef[0]), float(coef[1]), float(1 / coef[2]), tuple(sorted({sw.ranks for sw in sweeps})))
    worst = max(abs(ring.allreduce_s(s, sw.ranks) / (t * 1e-6) - 1)
                for sw in sweeps for s, t in zip(sw.sizes, sw.times_us, strict=True))
    return Ring(ring.a_s, ring.step_s, ring.busbw, ring.fitted_ranks, float(worst))

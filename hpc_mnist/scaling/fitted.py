"""The scaling model fitted to small runs, for predicting larger ones: a rank's compute from the sweep's smallest
point, the all-reduce from `hpc-mnist comm` sweeps at a few host counts (perf/ring.py), and the share of that
all-reduce a training step pays (1 - overlap), measured on the sweep's points at the host counts the comm sweeps
ran on (else on the DDP steps those comm runs timed with and without it, `--validate`):

    step(n) = compute + exposed x allreduce(gradient bytes, n)      samples/s(n) = n x batch / step(n)

Every other point is a prediction. Each point is compute-bound (compute is most of the step), latency-bound or
bandwidth-bound (whichever term of the exposed all-reduce is larger).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_mnist.errors import UserError
from hpc_mnist.perf import ring
from hpc_mnist.perf.allreduce import read_sweep


@dataclass(frozen=True)
class Fitted:
    compute_s: float  # a rank's step without the all-reduce, from the smallest point
    batch: int  # per rank
    gradient_bytes: int
    network: ring.Ring
    exposed: float  # of the all-reduce the step pays: 1 - overlap
    exposed_by_ranks: dict[int, float]  # what the steps at each swept rank count showed
    exposed_source: str  # which steps

    def allreduce_s(self, ranks: int) -> float:
        return self.exposed * self.network.allreduce_s(self.gradient_bytes, ranks)

    def step_s(self, ranks: int) -> float:
        return self.compute_s + self.allreduce_s(ranks)

    def samples_per_s(self, ranks: int) -> float:
        return ranks * self.batch / self.step_s(ranks)

    def efficiency(self, ranks: int) -> float:
        return self.compute_s / self.step_s(ranks)

    def comm_share(self, ranks: int) -> float:
        return self.allreduce_s(ranks) / self.step_s(ranks)

    def regime(self, ranks: int) -> str:
        if ranks < 2 or self.compute_s >= self.allreduce_s(ranks):
            return "compute"
        latency, bandwidth = self.network.latency_s(ranks), self.network.bandwidth_s(self.gradient_bytes, ranks)
        return "latency" if latency > bandwidth else "bandwidth"

    def row(self, ranks: int) -> dict[str, Any]:
        return {"ranks": ranks, "predicted_samples_per_s": self.samples_per_s(ranks),
                "predicted_efficiency": self.efficiency(ranks), "comm_share": self.comm_share(ranks),
                "regime": self.regime(ranks)}

    def overlap_sentence(self) -> str:
        shown = ", ".join(f"{e:.2f} at {n} ranks" for n, e in sorted(self.exposed_by_ranks.items()))
        hidden = 1 - self.exposed
        what = (f"{hidden:.0%} of it hidden behind backward" if hidden > 0.005 else
                f"none of it hidden; the step paid {-hidden:.0%} more than the all-reduce alone" if hidden < -0.005
                else "none of it hidden")
        return (f"overlap, measured on {self.exposed_source}: a step pays {self.exposed:.2f} x the all-reduce "
                f"({what}; {shown})")

    def describe(self) -> str:
        return (f"Model fitted on the smallest point, the comm sweeps and the overlap: compute "
                f"{self.compute_s * 1e3:.2f} ms a step at batch {self.batch} per rank; {self.network.describe()}; "
                f"gradients {self.gradient_bytes:,} bytes; {self.overlap_sentence()}.")


def _validation(path: Path, model: str, batch: int) -> tuple[int, dict[str, Any] | None]:
    """The comm file's rank count and its DDP step of `model` at `batch` (`--validate`), if it timed one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not an all-reduce benchmark's JSON (python -m hpc_mnist.comm --json "
                        "FILE)") from None
    found = [v for v in data.get("validation", []) if v.get("model") == model and v.get("batch") == batch]
    return int(data.get("ranks", 0)), found[0] if found else None


def fit(table: list[dict[str, Any]], comm_files: list[Path], model: str, gradient_bytes: int) -> Fitted:
    """From a sweep's aggregated rows (ranks, global batch, samples/s; the first is the smallest point) and comm
    files of this project's all-reduce benchmark (`--json`). A 1-rank first point gives the compute as measured;
    a larger one (a sweep of whole multi-GPU nodes) shares the fit of compute and overlap with the other points at
    the comm files' rank counts, so two such points are needed."""
    base = table[0]
    batch = round(base["global_batch"] / base["ranks"])
    network = ring.fit([read_sweep(p) for p in comm_files])
    grad = {r["ranks"]: network.allreduce_s(gradient_bytes, r["ranks"]) for r in table}
    steps = {r["ranks"]: r["global_batch"] / r["samples_per_s"] for r in table
             if r["ranks"] in network.fitted_ranks or r is base}
    source = "the sweep's points at those ranks"
    if base["ranks"] == 1 and len(steps) > 1:  # the compute as measured; what each swept point paid on top
        compute = steps[1]
        exposed = {n: (step - compute) / grad[n] for n, step in steps.items() if n > 1}
    elif base["ranks"] == 1:  # no point at the swept sizes: the comm runs' DDP steps with and without it
        compute = steps[1]
        timed = {n: v for n, v in (_validation(p, model, batch) for p in comm_files) if v}
        exposed = {n: (v["step_s"] - v["compute_s"]) / network.allreduce_s(gradient_bytes, n)
                   for n, v in timed.items()}
        source = f"the comm runs' DDP steps (--validate {model} --batch {batch})"
    elif len(steps) >= 2:  # compute + exposed x all-reduce through the points, least squares
        xs, ys = [grad[n] for n in steps], list(steps.values())
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        compute = my - slope * mx
        exposed = {n: (step - compute) / grad[n] for n, step in steps.items()}
        if compute <= 0:
            raise UserError(f"the points at {', '.join(map(str, steps))} ranks leave no compute for a step: add a "
                            "1-rank point to the sweep")
    else:
        exposed = {}
    if not exposed:
        raise UserError(f"nothing measures the overlap: the sweep has no point at "
                        f"{', '.join(map(str, network.fitted_ranks))} ranks and the comm files timed no DDP step of "
                        f"the {model} at batch {batch} (python -m hpc_mnist.comm --validate {model} --batch {batch})")
    return Fitted(compute, batch, gradient_bytes, network, statistics.mean(exposed.values()), exposed, source)


def extended(largest: int, doublings: int = 2) -> list[int]:
    """The model's line past the measured sizes: `largest` doubled, `doublings` times (6 hosts: 12, 24)."""
    return [largest * 2**k for k in range(1, doublings + 1)]

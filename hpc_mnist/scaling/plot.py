"""The sweep's plots: throughput (with the ideal line and the model's prediction), efficiency and accuracy
against ranks; matplotlib is optional (pip install 'hpc_mnist[plot]'), the tables never need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(table: list[dict[str, Any]], mode: str, out: Path) -> list[Path]:
    """Throughput (with the ideal line), efficiency and accuracy against ranks; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'hpc_mnist[plot]'); tables written")
        return []
    ok = [r for r in table if "samples_per_s" in r]
    if not ok:
        return []
    ranks = [r["ranks"] for r in ok]
    base = ok[0]
    figures = {
        "throughput.png": ("global samples/s", [r["samples_per_s"] for r in ok],
                           [base["samples_per_s"] * n / base["ranks"] for n in ranks]),
        "efficiency.png": ("parallel efficiency", [r["efficiency"] for r in ok], [1.0] * len(ok)),
        "accuracy.png": ("test accuracy", [r["test_acc"] for r in ok], None),
    }
    written = []
    for name, (label, values, ideal) in figures.items():
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        ax.plot(ranks, values, "o-", label="measured")
        if name == "throughput.png" and "predicted_samples_per_s" in base:
            ax.plot(ranks, [r["predicted_samples_per_s"] for r in ok], "s:", label="predicted (model)")
        if ideal:
            ax.plot(ranks, ideal, "--", color="gray", label="ideal")
            ax.legend()
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(n) for n in ranks])
        ax.set_xlabel("ranks")
        ax.set_ylabel(label)
        ax.set_title(f"{mode} scaling: {label}")
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)
    return written

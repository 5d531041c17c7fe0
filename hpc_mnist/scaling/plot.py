"""The sweep's plots: throughput (with the ideal line and the model's prediction), efficiency and accuracy
against ranks, and scaling.png, the figure a user looks at: throughput and efficiency against hosts with the
range of the repeats, the model's line past the measured sizes, and the communication share of the step.
matplotlib is optional (pip install 'hpc_mnist[plot]'); the tables never need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(table: list[dict[str, Any]], mode: str, out: Path, line: list[dict[str, Any]] | None = None) -> list[Path]:
    """throughput.png, efficiency.png, accuracy.png against ranks, and scaling.png; needs matplotlib."""
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
    written.append(summary_figure(plt, ok, mode, out / "scaling.png", line or []))
    return written


def summary_figure(plt: Any, ok: list[dict[str, Any]], mode: str, path: Path, line: list[dict[str, Any]]) -> Path:
    """Three panels against hosts (ranks for a sweep on one node): throughput and efficiency, measured medians
    with the range of the repeats as error bars, the model's line and ideal scaling; the share of the step the
    model gives to communication, beside 1 - the measured efficiency (what the measured points lost)."""
    by_nodes = len({r["nodes"] for r in ok}) > 1
    unit = "hosts" if by_nodes else "ranks"
    xs = [r["nodes"] if by_nodes else r["ranks"] for r in ok]
    base = ok[0]
    per_x = base["samples_per_s"] / xs[0]
    spread = [[r["samples_per_s"] - r.get("samples_per_s_min", r["samples_per_s"]) for r in ok],
              [r.get("samples_per_s_max", r["samples_per_s"]) - r["samples_per_s"] for r in ok]]
    base_rate = base["samples_per_s"] / base["ranks"]
    eff_spread = [[low / (r["ranks"] * base_rate) for low, r in zip(spread[0], ok, strict=True)],
                  [high / (r["ranks"] * base_rate) for high, r in zip(spread[1], ok, strict=True)]]
    lx = [p["nodes"] if by_nodes else p["ranks"] for p in line]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    thr, eff, comm = axes
    thr.errorbar(xs, [r["samples_per_s"] for r in ok], yerr=spread, fmt="o", capsize=4, color="C0",
                 label=f"measured (median, range of {max(r.get('repeats', 1) for r in ok)} repeats)")
    ideal_x = sorted({*xs, *lx})
    thr.plot(ideal_x, [per_x * x for x in ideal_x], "--", color="gray", label="ideal")
    eff.errorbar(xs, [r["efficiency"] for r in ok], yerr=eff_spread, fmt="o", capsize=4, color="C0",
                 label="measured")
    eff.axhline(1.0, ls="--", color="gray")
    comm.plot(xs, [max(0.0, 1 - r["efficiency"]) for r in ok], "o", color="C0", label="measured: 1 - efficiency")
    if line:
        measured_max = max(xs)
        for ax, key in ((thr, "predicted_samples_per_s"), (eff, "predicted_efficiency"), (comm, "comm_share")):
            ax.plot(lx, [p[key] for p in line], "-", color="C1", label="model")
            ax.axvspan(measured_max, max(lx), color="C1", alpha=0.07)
        errors = [r for r in ok if r.get("fit") == "predicted"]
        for i, (r, x) in enumerate((r, x) for r, x in zip(ok, xs, strict=True) if r in errors):
            thr.annotate(f"{r['model_error']:+.1%}", (x, r["samples_per_s"]), textcoords="offset points",
                         xytext=(-12, 8 + 9 * (i % 2)), fontsize=7, color="C1")  # above: never clipped
    for ax, label in ((thr, "global samples/s"), (eff, "parallel efficiency"), (comm, "communication share of step")):
        ax.set_xscale("log", base=2)
        ticks = sorted({*xs, *lx})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(unit)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    thr.set_yscale("log")  # ideal and measured lines can lie orders of magnitude apart
    lowest = min([r["efficiency"] for r in ok] + [p["predicted_efficiency"] for p in line])
    if lowest < 0.2:  # a few percent: on a linear axis every point would sit on the floor
        eff.set_yscale("log")
        eff.set_ylim(lowest / 2, 1.5)
    else:
        eff.set_ylim(0, 1.1)
    comm.set_ylim(0, 1)
    thr.set_title(f"{mode} scaling: throughput")
    eff.set_title("efficiency")
    comm.set_title("communication share of the step")
    thr.legend(fontsize=8)
    comm.legend(fontsize=8)
    if line:
        fig.text(0.5, 0.005, "shaded: beyond the measured sizes (the model's line only); numbers: the model's "
                 "error where it was not fitted", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path

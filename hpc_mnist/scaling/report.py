"""A sweep's report: one row per run from its summary.json and metrics.jsonl, the median (and range) over
repeats with speedup and efficiency, the scaling model's prediction beside them (--comm: fitted on the smallest
point and the all-reduce sweeps, scaling/fitted.py), written as scaling.csv, scaling.md, model.csv and plots,
and shown as a table."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from rich.table import Table

from hpc_mnist.core import config
from hpc_mnist.errors import UserError, writable_file
from hpc_mnist.runtime.logger import make_console
from hpc_mnist.scaling.fitted import extended
from hpc_mnist.scaling.fitted import fit as fit_model
from hpc_mnist.scaling.plot import plot

COLUMNS = [  # (key, header)
    ("nodes", "nodes"), ("ranks", "ranks"), ("threads_per_rank", "threads/rank"), ("global_batch", "global batch"),
    ("samples_per_s", "samples/s"), ("spread", "range of repeats"),
    ("speedup", "speedup"), ("efficiency", "efficiency"), ("epoch_time_s", "epoch time s"),
    ("time_to_target_s", "time to target s"), ("test_acc", "test accuracy"), ("stragglers", "stragglers"),
    ("status", "status"),
]
PREDICTED = [("predicted_samples_per_s", "predicted samples/s"), ("model_error", "model error"),
             ("fit", "fit or predicted"), ("regime", "regime"), ("comm_share", "comm share")]
CSV_ONLY = {"spread": ["samples_per_s_min", "samples_per_s_max"]}  # the markdown's range, as numbers
MODEL_COLUMNS = [("nodes", "nodes"), ("ranks", "ranks"), ("predicted_samples_per_s", "predicted samples/s"),
                 ("predicted_efficiency", "efficiency"), ("comm_share", "comm share"), ("regime", "regime"),
                 ("measured", "measured samples/s")]


def _epoch_metrics(run_dir: Path, target: float) -> tuple[float | None, float | None]:
    """Mean epoch time and the training time until validation accuracy first reached `target`."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None, None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None, None
    elapsed, reached = 0.0, None
    for row in rows:
        elapsed += row["epoch_time_s"]
        if reached is None and row["val_acc"] >= target:
            reached = elapsed
    return statistics.mean(r["epoch_time_s"] for r in rows), reached


def collect(paths: list[Path], target: float) -> tuple[list[dict[str, Any]], str]:
    """One row per run (failed and missing ones included), from sweep directories or run directories."""
    runs: list[tuple[Path, int, int, int | None]] = []  # run dir, nodes, ranks, exit code
    mode = "weak"
    for path in paths:
        manifest = path / "sweep.json"
        if manifest.exists():
            sweep = json.loads(manifest.read_text())
            mode = sweep.get("mode", mode)
            runs += [(Path(p["run_dir"]), p["nodes"], p["ranks"], p["exit_code"]) for p in sweep["points"]]
        elif (path / "summary.json").exists():
            s = json.loads((path / "summary.json").read_text())
            runs.append((path, s.get("num_nodes", 1), s["world_size"], None))
        else:
            raise UserError(f"{path} has neither sweep.json nor summary.json: give a sweep or run directory")
    rows = []
    for run_dir, nodes, ranks, exit_code in runs:
        row: dict[str, Any] = {"nodes": nodes, "ranks": ranks, "run_dir": str(run_dir)}
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if summary.get("status") != "completed":
            why = f"exit code {exit_code}" if exit_code else summary.get("status", "not run")
            rows.append({**row, "status": f"failed ({why})"})
            continue
        epoch_time, reached = _epoch_metrics(run_dir, target)
        rows.append({**row, "status": "ok", "global_batch": summary["global_batch"],
                     "threads_per_rank": summary.get("threads_per_rank"),
                     "samples_per_s": summary["samples_per_s"], "epoch_time_s": epoch_time,
                     "time_to_target_s": reached, "test_acc": summary["test_acc"],
                     "stragglers": sorted(summary.get("stragglers", {}))})
    return rows, mode


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (nodes, ranks); speedup and efficiency against the smallest size.

    speedup(N) = throughput(N) / throughput(N0); efficiency(N) = speedup(N) / (N / N0). In weak scaling
    the work grows with N, so throughput is the measure; in strong scaling the work is fixed, and the
    throughput ratio equals the time ratio T(N0) / T(N). Failed points stay in the table as failed.
    """
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["nodes"], row["ranks"]), []).append(row)
    table = []
    for (nodes, ranks), found in sorted(groups.items()):
        ok = [r for r in found if r["status"] == "ok"]
        if not ok:
            table.append({"nodes": nodes, "ranks": ranks, "status": found[0]["status"], "repeats": len(found)})
            continue
        threads = sorted({r["threads_per_rank"] for r in ok if r.get("threads_per_rank")})
        entry = {"nodes": nodes, "ranks": ranks, "repeats": len(ok), "global_batch": ok[0]["global_batch"],
                 "threads_per_rank": ",".join(map(str, threads)) or None,
                 "status": "ok" if len(ok) == len(found) else f"ok ({len(found) - len(ok)} failed)"}
        for key in ("samples_per_s", "epoch_time_s", "test_acc"):
            entry[key] = statistics.median(r[key] for r in ok)
        entry["samples_per_s_min"] = min(r["samples_per_s"] for r in ok)
        entry["samples_per_s_max"] = max(r["samples_per_s"] for r in ok)
        times = [r["time_to_target_s"] for r in ok if r["time_to_target_s"] is not None]
        entry["time_to_target_s"] = statistics.median(times) if len(times) == len(ok) else None
        named = sorted({name for r in ok for name in r.get("stragglers", [])})  # per-rank timing (timing.py)
        entry["stragglers"] = ", ".join(named) or "none"
        table.append(entry)
    base = next((e for e in table if "samples_per_s" in e), None)
    for e in table:
        if base and "samples_per_s" in e:
            e["speedup"] = e["samples_per_s"] / base["samples_per_s"]
            e["efficiency"] = e["speedup"] / (e["ranks"] / base["ranks"])
    return table


def unlike_threads(table: list[dict[str, Any]]) -> str:
    """A warning when the points ran with different threads per rank: their speedup mixes two effects."""
    seen = {row["threads_per_rank"] for row in table if row.get("threads_per_rank")}
    if len(seen) < 2:
        return ""
    return (f"Warning: the points ran with different threads per rank ({', '.join(sorted(seen))}), so speedup and "
            "efficiency compare unlike runs; run the sweep again with one thread count (hpc-mnist scaling run "
            "holds it fixed: --threads, or OMP_NUM_THREADS).")


def _cell(row: dict[str, Any], key: str) -> str:
    """A table cell: '-' where a failed point has no figure, 'not reached' for a missed target."""
    if key == "spread":
        if "samples_per_s_min" not in row:
            return "-"
        low, high, mid = row["samples_per_s_min"], row["samples_per_s_max"], row["samples_per_s"]
        return f"{low:,.0f}-{high:,.0f} ({(high - low) / mid:.0%})"
    if key not in row:
        return "-"
    value = row[key]
    if value is None:
        return "not reached" if key == "time_to_target_s" else "-"
    if key == "test_acc":
        return f"{value:.2%}"
    if key in ("speedup", "efficiency", "predicted_efficiency", "comm_share"):
        return f"{value:.2f}"
    if key == "model_error":
        return f"{value:+.1%}"
    if key in ("samples_per_s", "predicted_samples_per_s", "measured"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _columns(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The report's columns; the model's predictions when `report --comm` made them."""
    return COLUMNS + (PREDICTED if any("predicted_samples_per_s" in r for r in table) else [])


def _markdown(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> list[str]:
    return ["| " + " | ".join(h for _, h in columns) + " |", "|" + " --- |" * len(columns),
            *("| " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in rows)]


def _write_csv(path: Path, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> Path:
    keys = [k2 for k, _ in columns for k2 in CSV_ONLY.get(k, [k])]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_outputs(table: list[dict[str, Any]], mode: str, target: float, out: Path, note: str = "",
                  line: list[dict[str, Any]] | None = None) -> list[Path]:
    """scaling.csv and scaling.md (the measured points, the prediction beside them); with a model, its line
    (measured sizes and the next doublings) in model.csv and under the table; the plots."""
    out.mkdir(parents=True, exist_ok=True)
    columns = _columns(table)
    written = [_write_csv(out / "scaling.csv", columns, table)]
    lines = [f"{mode.capitalize()} scaling; time to target = training time until validation accuracy >= "
             f"{target:.1%}; range of repeats: slowest-fastest (spread over the median).", "",
             *_markdown(columns, table)]
    lines += ["", note] if note else []
    if line:
        written.append(_write_csv(out / "model.csv", MODEL_COLUMNS, line))
        lines += ["", "The model's line, past the measured sizes to the next doublings:", "",
                  *_markdown(MODEL_COLUMNS, line)]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    written.append(out / "scaling.md")
    return [*written, *plot(table, mode, out, line)]


def _model_config(table: list[dict[str, Any]], given: str | None):
    """The model the runs trained: --model's preset, else the model section of a run's saved config.yaml (its
    channels, widths and layers decide the bytes DDP all-reduces)."""
    if given:
        return config.ModelConfig(name=given)
    for row in table:
        saved = Path(row.get("run_dir", "")) / "config.yaml"
        if saved.exists():
            return config.build(str(saved)).model
    raise UserError("report --comm needs the model: no config.yaml in the run directories, so give --model")


def predictions(table: list[dict[str, Any]], comm_files: list[Path],
                model: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The fitted model's samples/s, error, regime and communication share beside each measured point; a note
    that says what it was fitted on and its errors beyond the fit; its line to the next doublings."""
    from hpc_mnist.core.models import allreduce_bytes, build

    ok = [r for r in table if "samples_per_s" in r]
    if not ok:
        return "", []
    cfg = _model_config(table, model)
    fitted = fit_model(ok, comm_files, cfg.name, allreduce_bytes(build(cfg)))
    fit_ranks = {ok[0]["ranks"], *(fitted.exposed_by_ranks if fitted.exposed_source.startswith("the sweep") else ())}
    predicted = []
    for r in ok:
        r.update(fitted.row(r["ranks"]))
        r["model_error"] = r["predicted_samples_per_s"] / r["samples_per_s"] - 1
        r["fit"] = "fit" if r["ranks"] in fit_ranks else "predicted"
        if r["fit"] == "predicted":
            predicted.append(f"{r['ranks']} ranks {r['model_error']:+.1%}")
    by_nodes = len({r["nodes"] for r in ok}) > 1  # else a sweep of ranks on one node
    per_node = max(1, round(ok[-1]["ranks"] / ok[-1]["nodes"])) if by_nodes else 1
    measured = {r["ranks"]: r["samples_per_s"] for r in ok}
    largest = ok[-1]["nodes"] if by_nodes else ok[-1]["ranks"]
    ranks = sorted({*measured, *(k * per_node for k in extended(largest))})
    line = [{"nodes": n // per_node if by_nodes else 1, **fitted.row(n), "measured": measured.get(n)}
            for n in ranks]
    worst = max((abs(r["model_error"]) for r in ok if r["fit"] == "predicted"), default=None)
    note = (f"{fitted.describe()} Error of the predicted samples/s on the points the model was not fitted on: "
            f"{', '.join(predicted) or 'none measured'}" + (f" (largest {worst:.1%})" if worst is not None else "")
            + f"; on the points it was fitted on ({', '.join(map(str, sorted(fit_ranks)))} ranks) the error is 0 "
            "or close to it by construction. Regime: compute-bound where compute is most of the predicted step, "
            "else latency- or bandwidth-bound by the larger term of the all-reduce it pays.")
    return note, line


def report_folder(first: Path) -> Path:
    """Where a report goes by default: a sweep's own folder, never a training run's directory."""
    if not (first / "sweep.json").exists():
        raise UserError(f"{first} is not a sweep folder (no sweep.json): say where the report goes with --out, "
                        "so that it never lands in a training run's directory")
    return first


def report_paths(paths: list[Path], target: float, out: Path, comm_json: list[Path] | None = None,
                 model: str | None = None, fit_optional: bool = False) -> int:
    writable_file(out / "scaling.csv")  # before reading anything: one line for a folder that cannot be written
    rows, mode = collect(paths, target)
    table = aggregate(rows)
    for row in table:  # the run directory of the median's first repeat, for its saved config
        row.setdefault("run_dir", next((r["run_dir"] for r in rows if r["ranks"] == row["ranks"]), ""))
    try:
        note, line = predictions(table, comm_json, model) if comm_json else ("", [])
    except UserError as e:
        if not fit_optional:
            raise
        note, line = f"No prediction: {e}.", []  # a sweep's own report: its measurements still make one
    warning = unlike_threads(table)
    note = "\n\n".join(n for n in (warning, note) if n)
    written = write_outputs(table, mode, target, out, note, line)
    console = make_console()
    view = Table(title=f"{mode} scaling")
    columns = _columns(table)
    for _, header in columns:
        view.add_column(header, justify="right")
    for row in table:
        view.add_row(*(_cell(row, k) for k, _ in columns))
    console.print(view)
    if note:
        console.print(note)
    console.print("written: " + ", ".join(str(p) for p in written))
    return 0 if all(r["status"] == "ok" for r in table) else 1

"""Scaling studies: run the same training at several sizes, then tabulate and plot speed and accuracy.

    python -m hpc_mnist.scaling run --ranks 1,2 -- --config configs/smoke.yaml     # a workstation
    python -m hpc_mnist.scaling run --nodes 1,2,4,8 -- --config configs/cnn.yaml   # inside a batch job
    python -m hpc_mnist.scaling report runs/scaling-<time>                         # table and plots

`run` starts each point through `python -m hpc_mnist.launch` (torchrun on a workstation, mpiexec on a
subset of the PBS hostfile, srun -N k on Slurm), each in its own run directory, and records the sweep in
sweep.json. Weak mode fixes the batch per rank (the global batch grows with ranks, so the learning rate
is scaled linearly); strong mode fixes the global batch (split across ranks; the learning rate stays).
`report` reads each point's summary.json and metrics.jsonl and writes scaling.csv, scaling.md and PNG
plots (with matplotlib installed).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from hpc_mnist.errors import UserError
from hpc_mnist.logger import make_console

COLUMNS = [  # (key, header)
    ("nodes", "nodes"), ("ranks", "ranks"), ("global_batch", "global batch"), ("samples_per_s", "samples/s"),
    ("speedup", "speedup"), ("efficiency", "efficiency"), ("epoch_time_s", "epoch time s"),
    ("time_to_target_s", "time to target s"), ("test_acc", "test accuracy"), ("status", "status"),
]


@dataclass
class Point:
    """One run of a sweep."""

    nodes: int
    ranks: int
    repeat: int
    run_dir: str
    command: list[str]
    exit_code: int | None = None


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def plan(args: argparse.Namespace, sweep_dir: Path) -> list[Point]:
    """The sweep's points: (nodes, ranks) per size, repeated, each with its trainer command."""
    points = []
    sizes = [(n, n * args.ppn) for n in args.nodes] if args.nodes else [(1, r) for r in args.ranks]
    for nodes, ranks in sizes:
        if args.mode == "weak":
            batch, extra = args.batch, ["optim.scale_lr=true"]
        else:
            if args.batch % ranks:
                raise UserError(f"strong scaling splits the global batch {args.batch} across ranks, but {ranks} "
                                "does not divide it: choose --batch as a multiple of every rank count")
            batch, extra = args.batch // ranks, []
        for repeat in range(1, args.repeats + 1):
            name = f"{args.mode}-n{nodes}-r{ranks}-{repeat}"
            launch = [sys.executable, "-m", "hpc_mnist.launch", *(["--system", args.system] if args.system else []),
                      "--nodes", str(nodes), "--ppn", str(args.ppn if args.nodes else ranks)]
            train = [sys.executable, "-m", "hpc_mnist.train", *args.trainer_args, *extra,  # user may override
                     f"train.batch_size={batch}", f"train.epochs={args.epochs}", f"log.dir={sweep_dir}",
                     f"log.name={name}", "log.console=plain", "train.resume=never"]
            points.append(Point(nodes, ranks, repeat, str(sweep_dir / name), [*launch, "--", *train]))
    return points


def run(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir or f"runs/scaling-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    points = plan(args, sweep_dir)
    if args.dry_run:
        for p in points:
            dry = subprocess.run([*p.command[:p.command.index("--")], "--dry-run", *p.command[p.command.index("--"):]],
                                 capture_output=True, text=True)
            print(dry.stdout.strip().splitlines()[-1] if dry.returncode == 0 else dry.stderr.strip())
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = sweep_dir / "sweep.json"
    meta = {"mode": args.mode, "batch": args.batch, "epochs": args.epochs, "target": args.target}
    for p in points:
        print(f"[{p.ranks} rank(s) on {p.nodes} node(s), repeat {p.repeat}] {p.run_dir}", flush=True)
        with open(Path(p.run_dir + ".log"), "w") as log:
            p.exit_code = subprocess.run(p.command, stdout=log, stderr=subprocess.STDOUT).returncode
        if p.exit_code:
            print(f"  failed with exit code {p.exit_code}: see {p.run_dir}.log", flush=True)
        manifest.write_text(json.dumps({**meta, "points": [asdict(q) for q in points]}, indent=2) + "\n")
    return report_paths([sweep_dir], args.target, sweep_dir)


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
                     "samples_per_s": summary["samples_per_s"], "epoch_time_s": epoch_time,
                     "time_to_target_s": reached, "test_acc": summary["test_acc"]})
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
        entry = {"nodes": nodes, "ranks": ranks, "repeats": len(ok), "global_batch": ok[0]["global_batch"],
                 "status": "ok" if len(ok) == len(found) else f"ok ({len(found) - len(ok)} failed)"}
        for key in ("samples_per_s", "epoch_time_s", "test_acc"):
            entry[key] = statistics.median(r[key] for r in ok)
        times = [r["time_to_target_s"] for r in ok if r["time_to_target_s"] is not None]
        entry["time_to_target_s"] = statistics.median(times) if len(times) == len(ok) else None
        table.append(entry)
    base = next((e for e in table if "samples_per_s" in e), None)
    for e in table:
        if base and "samples_per_s" in e:
            e["speedup"] = e["samples_per_s"] / base["samples_per_s"]
            e["efficiency"] = e["speedup"] / (e["ranks"] / base["ranks"])
    return table


def _cell(row: dict[str, Any], key: str) -> str:
    """A table cell: '-' where a failed point has no figure, 'not reached' for a missed target."""
    if key not in row:
        return "-"
    value = row[key]
    if value is None:
        return "not reached" if key == "time_to_target_s" else "-"
    if key == "test_acc":
        return f"{value:.2%}"
    if key in ("speedup", "efficiency"):
        return f"{value:.2f}"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_outputs(table: list[dict[str, Any]], mode: str, target: float, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    lines = [f"{mode.capitalize()} scaling; time to target = training time until validation accuracy >= "
             f"{target:.1%}.", "", "| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row, k) for k, _ in COLUMNS) + " |" for row in table]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    return [out / "scaling.csv", out / "scaling.md", *plot(table, mode, out)]


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


def report_paths(paths: list[Path], target: float, out: Path) -> int:
    rows, mode = collect(paths, target)
    table = aggregate(rows)
    written = write_outputs(table, mode, target, out)
    console = make_console()
    view = Table(title=f"{mode} scaling")
    for _, header in COLUMNS:
        view.add_column(header, justify="right")
    for row in table:
        view.add_row(*(_cell(row, k) for k, _ in COLUMNS))
    console.print(view)
    console.print("written: " + ", ".join(str(p) for p in written))
    return 0 if all(r["status"] == "ok" for r in table) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hpc_mnist.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run a sweep, then report it",
                       usage="%(prog)s [options] [-- trainer arguments]")
    sizes = r.add_mutually_exclusive_group()
    sizes.add_argument("--ranks", type=_csv_ints, default=[1, 2], help="world sizes on this machine (default 1,2)")
    sizes.add_argument("--nodes", type=_csv_ints, help="node counts inside a batch allocation, e.g. 1,2,4,8")
    r.add_argument("--ppn", type=int, default=1, help="ranks per node with --nodes (default 1; GPUs per node)")
    r.add_argument("--system", help="passed to hpc_mnist.launch (default: detected)")
    r.add_argument("--mode", choices=["weak", "strong"], default="weak")
    r.add_argument("--batch", type=int, default=128, help="batch per rank (weak) or global batch (strong)")
    r.add_argument("--epochs", type=int, default=1)
    r.add_argument("--repeats", type=int, default=1)
    r.add_argument("--target", type=float, default=0.9, help="validation accuracy for 'time to target'")
    r.add_argument("--sweep-dir", default="", help="default runs/scaling-<date>-<time>")
    r.add_argument("--dry-run", action="store_true", help="print each point's launch line, run nothing")
    r.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: arguments for hpc_mnist.train")
    rep = sub.add_parser("report", help="tables and plots from sweep or run directories")
    rep.add_argument("paths", nargs="+", type=Path)
    rep.add_argument("--target", type=float, default=0.9, help="validation accuracy for 'time to target'")
    rep.add_argument("--out", type=Path, help="output folder (default: the first path)")
    args = p.parse_args(argv)
    if args.verb == "run" and args.trainer_args[:1] == ["--"]:
        args.trainer_args = args.trainer_args[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verb == "run":
            return run(args)
        return report_paths(args.paths, args.target, args.out or args.paths[0])
    except UserError as e:
        print(f"hpc_mnist.scaling: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

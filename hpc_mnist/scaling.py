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
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from hpc_mnist.core import config
from hpc_mnist.errors import ArgumentParser, UserError, report
from hpc_mnist.runtime import systems
from hpc_mnist.runtime.logger import make_console

COLUMNS = [  # (key, header)
    ("nodes", "nodes"), ("ranks", "ranks"), ("threads_per_rank", "threads/rank"), ("global_batch", "global batch"),
    ("samples_per_s", "samples/s"),
    ("speedup", "speedup"), ("efficiency", "efficiency"), ("epoch_time_s", "epoch time s"),
    ("time_to_target_s", "time to target s"), ("test_acc", "test accuracy"), ("stragglers", "stragglers"),
    ("status", "status"),
]
PREDICTED = [("predicted_samples_per_s", "predicted samples/s"),
             ("predicted_overlap_samples_per_s", "predicted with overlap"), ("model_error", "model error")]


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


@dataclass
class Sweep:
    """What every point trains, resolved like the trainer does (defaults < config file < words after --)."""

    batch: int  # per rank (weak) or global (strong)
    epochs: int
    words: list[str]  # what the sweep puts before the user's words (strong mode adds the batch per size)
    why: list[str]  # the same, explained for the user
    notes: list[str]  # where batch and epochs came from


def _trainer_words(words: list[str]) -> tuple[str | None, list[str]]:
    """(--config file, overrides) from the words after --."""
    file, overrides, it = None, [], iter(words)
    for word in it:
        if word == "--config":
            file = next(it, None)
            if file is None:
                raise UserError("--config after -- needs a file name")
        elif word.startswith("--config="):
            file = word.split("=", 1)[1]
        else:
            overrides.append(word)
    return file, overrides


def resolve(args: argparse.Namespace) -> Sweep:
    """The sweep's settings. The user's words win: the sweep's own settings go before them on the trainer's
    command line, and --batch/--epochs (explicit) beat the config file but not the words after --."""
    file, overrides = _trainer_words(args.trainer_args)
    cfg = config.build(file, overrides)  # a mistake in the user's words stops here, in one line
    mine = {w.split("=", 1)[0] for w in overrides}
    in_file = _flat_keys(file) if file else set()
    for key in ("log.dir", "log.name"):
        if key in mine:
            raise UserError(f"the sweep names each point's run directory itself; drop {key}=... after -- "
                            "(use --sweep-dir for the folder)")

    def source(key: str) -> str:
        return "yours" if key in mine else file if key in in_file else "default"

    words, why, notes = [], [], []
    if args.mode == "strong" and "train.batch_size" in mine:
        raise UserError("strong scaling sets train.batch_size at each size (global batch / ranks): "
                        "give the global batch with --batch instead of train.batch_size after --")
    if args.batch is not None and "train.batch_size" not in mine:
        batch, where = args.batch, "--batch"
        if args.mode == "weak":
            words.append(f"train.batch_size={batch}")
            why.append(f"train.batch_size={batch} (--batch)")
    elif args.batch is not None and args.mode == "weak":
        batch, where = cfg.train.batch_size, f"yours; --batch {args.batch} ignored"
    else:
        batch, where = cfg.train.batch_size, source("train.batch_size")
    if args.epochs is not None and "train.epochs" not in mine:
        epochs, ewhere = args.epochs, "--epochs"
        words.append(f"train.epochs={epochs}")
        why.append(f"train.epochs={epochs} (--epochs)")
    else:
        epochs = cfg.train.epochs
        ewhere = source("train.epochs") + (f"; --epochs {args.epochs} ignored" if args.epochs is not None else "")
    if args.mode == "weak" and "optim.scale_lr" not in mine | in_file:
        words.append("optim.scale_lr=true")
        why.append("optim.scale_lr=true (weak scaling grows the global batch: lr x ranks)")
    if args.mode == "strong":
        why.append(f"train.batch_size={batch}/ranks (strong scaling)")
    words += ["log.console=plain", "train.resume=never"]
    why += ["log.console=plain", "train.resume=never"]
    what = "batch per rank" if args.mode == "weak" else "global batch"
    notes.append(f"{what} {batch} ({where}), epochs {epochs} ({ewhere})")
    return Sweep(batch, epochs, words, why, notes)


def _flat_keys(file: str) -> set[str]:
    data = yaml.safe_load(Path(file).read_text()) or {}
    return {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values}


def plan(args: argparse.Namespace, sweep_dir: Path) -> list[Point]:
    """The sweep's points: (nodes, ranks) per size, repeated, each with its trainer command."""
    sweep = resolve(args)
    file, overrides = _trainer_words(args.trainer_args)  # the trainer wants --config before any key=value
    points = []
    sizes = [(n, n * args.ppn) for n in args.nodes] if args.nodes else [(1, r) for r in args.ranks]
    for nodes, ranks in sizes:
        # The sweep's settings first, the user's words after them (last wins), then the run directory.
        words = list(sweep.words)
        if args.mode == "strong":
            if sweep.batch % ranks:
                raise UserError(f"strong scaling splits the global batch {sweep.batch} across ranks, but {ranks} "
                                "does not divide it: choose --batch as a multiple of every rank count")
            words.insert(0, f"train.batch_size={sweep.batch // ranks}")
        for repeat in range(1, args.repeats + 1):
            name = f"{args.mode}-n{nodes}-r{ranks}-{repeat}"
            launch = [sys.executable, "-m", "hpc_mnist.launch", *(["--system", args.system] if args.system else []),
                      "--nodes", str(nodes), "--ppn", str(args.ppn if args.nodes else ranks)]
            train = [sys.executable, "-m", "hpc_mnist.train", *(["--config", file] if file else []), *words,
                     *overrides, f"log.dir={sweep_dir}", f"log.name={name}"]
            points.append(Point(nodes, ranks, repeat, str(sweep_dir / name), [*launch, "--", *train]))
    return points


def check_nodes(args: argparse.Namespace) -> list[str] | None:
    """With --nodes: the allocation's hosts (PBS) or None (Slurm picks hosts), after checking the sizes fit."""
    if not args.nodes:
        return None
    name = args.system or systems.detect_system()
    system = systems.SYSTEMS.get(name)
    if system is None:
        raise UserError(f"unknown system {name!r}; choose one of {', '.join(systems.SYSTEMS)}")
    if system.scheduler == "local":
        raise UserError(f"--nodes {','.join(map(str, args.nodes))} needs a batch allocation, and this shell is "
                        "not inside a batch job (PBS or Slurm): use --ranks 1,2 on a workstation, or run inside "
                        "qsub/sbatch")
    hosts = systems.allocated_hosts(system)
    if max(args.nodes) > len(hosts):
        raise UserError(f"--nodes {','.join(map(str, args.nodes))} asks for {max(args.nodes)} nodes but the job "
                        f"has {len(hosts)}")
    return hosts if system.scheduler == "pbs" else None


def threads_per_rank(args: argparse.Namespace, points: list[Point]) -> tuple[int, str]:
    """One thread count for every point, so that the points differ in ranks alone: --threads, else the user's
    OMP_NUM_THREADS, else this node's cores shared among the most ranks any point puts on a node. (Left to each
    point, a 1-rank point took both cores of a 2-core machine and a 2-rank point one each: 'speedup 21.25'.)"""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give 1 or more CPU threads per rank")
        return args.threads, "--threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "your OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = max(args.ppn if args.nodes else p.ranks for p in points)
    return max(1, cores // per_node), f"{cores} core(s) here / {per_node} rank(s) per node at the largest point"


def _point_env(point: Point, hosts: list[str] | None, folder: Path, threads: int) -> dict[str, str]:
    """The point's environment: the sweep's threads per rank; on part of a PBS job, a node file naming the
    point's first hosts, so the launcher writes no temporary hostfile of its own (those were left in /tmp)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if hosts is None or point.nodes == len(hosts):
        return env
    nodefile = folder / f"hostfile-n{point.nodes}.txt"
    nodefile.write_text("\n".join(hosts[:point.nodes]) + "\n")
    return {**env, "PBS_NODEFILE": str(nodefile)}


def run(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir or f"runs/scaling-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    hosts = check_nodes(args)
    points = plan(args, sweep_dir)
    sweep = resolve(args)
    threads, threads_why = threads_per_rank(args, points)
    sizes = ", ".join(dict.fromkeys(str(p.nodes if args.nodes else p.ranks) for p in points))
    print(f"# {args.mode} scaling at {sizes} {'node(s)' if args.nodes else 'rank(s)'}: " + "; ".join(sweep.notes))
    print("# the sweep sets: " + ", ".join(sweep.why) + f", log.dir={sweep_dir}, log.name=<mode>-n<nodes>-r<ranks>"
          "-<repeat> (words after -- win over all but the last two)", flush=True)
    print(f"# threads per rank at every point: {threads} ({threads_why})", flush=True)
    if args.dry_run:
        failed = 0
        with tempfile.TemporaryDirectory(prefix="hpc_mnist-dry-") as folder:
            for p in points:
                cut = p.command.index("--")
                dry = subprocess.run([*p.command[:cut], "--dry-run", *p.command[cut:]], capture_output=True,
                                     text=True, env=_point_env(p, hosts, Path(folder), threads))
                print(dry.stdout.strip().splitlines()[-1] if dry.returncode == 0 else dry.stderr.strip(),
                      file=sys.stdout if dry.returncode == 0 else sys.stderr)
                failed += dry.returncode != 0
        return 1 if failed else 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = sweep_dir / "sweep.json"
    meta = {"mode": args.mode, "batch": sweep.batch, "epochs": sweep.epochs, "target": args.target,
            "threads_per_rank": threads}
    for p in points:
        print(f"[{p.ranks} rank(s) on {p.nodes} node(s), repeat {p.repeat}] {p.run_dir}", flush=True)
        with open(Path(p.run_dir + ".log"), "w") as log:
            p.exit_code = subprocess.run(p.command, stdout=log, stderr=subprocess.STDOUT,
                                         env=_point_env(p, hosts, sweep_dir, threads)).returncode
        if p.exit_code:
            print(f"  failed with exit code {p.exit_code}: see {p.run_dir}.log", flush=True)
        manifest.write_text(json.dumps({**meta, "points": [asdict(q) for q in points]}, indent=2) + "\n")
    comm_json = measure_network(points, sweep_dir, hosts, threads) if args.predict else None
    return report_paths([sweep_dir], args.target, sweep_dir, comm_json=comm_json)


def measure_network(points: list[Point], sweep_dir: Path, hosts: list[str] | None, threads: int) -> Path | None:
    """The all-reduce benchmark (hpc_mnist.comm) through the largest point's launch, on the hosts the sweep
    ran on: the report then puts the scaling model's prediction and its error beside each measured point."""
    largest = max(points, key=lambda p: (p.ranks, p.nodes))
    if largest.ranks < 2:
        print("# no prediction: the sweep's largest point has one rank, no all-reduce to measure", flush=True)
        return None
    out = sweep_dir / "comm.json"
    command = [*largest.command[:largest.command.index("--") + 1], sys.executable, "-m", "hpc_mnist.comm",
               "--json", str(out)]
    print(f"[all-reduce benchmark on {largest.ranks} rank(s), {largest.nodes} node(s)] {out}", flush=True)
    with open(sweep_dir / "comm.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env=_point_env(largest, hosts, sweep_dir, threads)).returncode
    if code or not out.exists():
        print(f"  failed with exit code {code}: see {sweep_dir / 'comm.log'}; the report has no predictions",
              flush=True)
        return None
    return out


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
    if key not in row:
        return "-"
    value = row[key]
    if value is None:
        return "not reached" if key == "time_to_target_s" else "-"
    if key == "test_acc":
        return f"{value:.2%}"
    if key in ("speedup", "efficiency"):
        return f"{value:.2f}"
    if key == "model_error":
        return f"{value:+.1%}"
    if key in ("samples_per_s", "predicted_samples_per_s", "predicted_overlap_samples_per_s"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _columns(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The report's columns; the model's predictions when `report --comm` made them."""
    return COLUMNS + (PREDICTED if any("predicted_samples_per_s" in r for r in table) else [])


def write_outputs(table: list[dict[str, Any]], mode: str, target: float, out: Path, note: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    columns = _columns(table)
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    lines = [f"{mode.capitalize()} scaling; time to target = training time until validation accuracy >= "
             f"{target:.1%}.", "", "| " + " | ".join(h for _, h in columns) + " |",
             "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, k) for k, _ in columns) + " |" for row in table]
    lines += ["", note] if note else []
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


def _model_config(table: list[dict[str, Any]], given: str | None):
    """The model the runs trained: --model's preset, else the model section of a run's saved config.yaml (its
    channels, widths and layers decide the bytes DDP all-reduces)."""
    from hpc_mnist.core import config

    if given:
        return config.ModelConfig(name=given)
    for row in table:
        saved = Path(row.get("run_dir", "")) / "config.yaml"
        if saved.exists():
            return config.build(str(saved)).model
    raise UserError("report --comm needs the model: no config.yaml in the run directories, so give --model")


def predictions(table: list[dict[str, Any]], comm_json: Path, model: str | None) -> str:
    """The scaling model's samples/s beside the measured ones, from an all-reduce benchmark's fit."""
    from hpc_mnist.core.models import allreduce_bytes, build
    from hpc_mnist.perf import step

    try:
        fit = json.loads(comm_json.read_text())["fit"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{comm_json} is not an all-reduce benchmark's JSON (python -m hpc_mnist.comm "
                        "--json FILE)") from None
    net = build(_model_config(table, model))
    return step.annotate_measured(table, step.network_from_dict(fit), allreduce_bytes(net),
                                           step.ddp_buckets(net))


def report_folder(first: Path) -> Path:
    """Where a report goes by default: a sweep's own folder, never a training run's directory."""
    if not (first / "sweep.json").exists():
        raise UserError(f"{first} is not a sweep folder (no sweep.json): say where the report goes with --out, "
                        "so that it never lands in a training run's directory")
    return first


def report_paths(paths: list[Path], target: float, out: Path, comm_json: Path | None = None,
                 model: str | None = None) -> int:
    rows, mode = collect(paths, target)
    table = aggregate(rows)
    for row in table:  # the run directory of the median's first repeat, for its saved config
        row.setdefault("run_dir", next((r["run_dir"] for r in rows if r["ranks"] == row["ranks"]), ""))
    note = predictions(table, comm_json, model) if comm_json else ""
    warning = unlike_threads(table)
    note = "\n\n".join(n for n in (warning, note) if n)
    written = write_outputs(table, mode, target, out, note)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist scaling", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run a sweep, then report it", usage="%(prog)s [options] [-- trainer arguments]",
                       description="Train the same configuration at each size. The trainer's arguments after -- "
                       "win over the sweep's own settings; the sweep prints what it sets.")
    sizes = r.add_mutually_exclusive_group()
    sizes.add_argument("--ranks", type=_csv_ints, default=[1, 2], help="world sizes on this machine (default: 1,2)")
    sizes.add_argument("--nodes", type=_csv_ints, help="node counts inside a batch allocation, e.g. 1,2,4,8 "
                       "(default: none; --ranks is used)")
    r.add_argument("--ppn", type=int, default=1, help="ranks per node with --nodes, one per GPU (default: 1)")
    r.add_argument("--system", help="passed to hpc_mnist.launch (default: detected)")
    r.add_argument("--mode", choices=["weak", "strong"], default="weak",
                   help="weak: fixed batch per rank; strong: fixed global batch (default: weak)")
    r.add_argument("--batch", type=int, help="batch per rank (weak) or global batch (strong) "
                   "(default: the configuration's train.batch_size)")
    r.add_argument("--epochs", type=int, help="epochs per point (default: the configuration's train.epochs)")
    r.add_argument("--repeats", type=int, default=1, help="runs per size; the report takes the median (default: 1)")
    r.add_argument("--threads", type=int, help="CPU threads per rank at every point (default: OMP_NUM_THREADS, "
                   "else this node's cores / the most ranks per node of any point)")
    r.add_argument("--target", type=float, default=0.9,
                   help="validation accuracy for 'time to target' (default: 0.9)")
    r.add_argument("--sweep-dir", default="", help="folder of the sweep (default: runs/scaling-<date>-<time>)")
    r.add_argument("--predict", action="store_true",
                   help="after the points, time the all-reduce across the largest point's ranks (hpc_mnist.comm) "
                   "and put the scaling model's predicted samples/s and its error beside each point")
    r.add_argument("--dry-run", action="store_true", help="print each point's launch line, run nothing")
    r.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: arguments for hpc_mnist.train")
    rep = sub.add_parser("report", help="tables and plots from sweep or run directories")
    rep.add_argument("paths", nargs="+", type=Path)
    rep.add_argument("--target", type=float, default=0.9,
                     help="validation accuracy for 'time to target' (default: 0.9)")
    rep.add_argument("--out", type=Path, help="output folder (default: the first path when it is a sweep folder; "
                     "run directories need --out)")
    rep.add_argument("--comm", type=Path, help="an all-reduce benchmark's JSON (hpc_mnist.comm --json): add the "
                     "scaling model's predicted samples/s and its error on each measured point (default: none)")
    rep.add_argument("--model", choices=["linear", "mlp", "cnn"],
                     help="the model trained, for --comm: that preset's defaults (default: the model section of the "
                     "runs' config.yaml)")
    args = p.parse_args(argv)
    if args.verb == "run" and args.trainer_args[:1] == ["--"]:
        args.trainer_args = args.trainer_args[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["comm"]:
        return report(UserError("the all-reduce benchmark has one home now: python -m hpc_mnist.comm under the "
                                "launcher (torchrun ... -m hpc_mnist.comm, mpiexec ... python -m hpc_mnist.comm)"))
    args = parse_args(argv)
    try:
        if args.verb == "run":
            return run(args)
        return report_paths(args.paths, args.target, args.out or report_folder(args.paths[0]), args.comm, args.model)
    except UserError as e:
        return report(e)


if __name__ == "__main__":
    sys.exit(main())

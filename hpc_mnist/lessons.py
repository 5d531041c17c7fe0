"""Reproduce the lessons this project grew from, then train the same networks with this project's defaults.

    hpc-mnist lessons                        # all five (about 50 min on 2 CPU cores; the CNN's two runs: 44)
    hpc-mnist lessons --only linear,mlp      # the fast ones (about 2 min)
    hpc-mnist lessons --recipe-only          # skip the runs with this project's defaults

For each lesson it prints the published figure, ours with the lesson's recipe (configs/lessons/*.yaml),
ours with this project's defaults, and the wall time of each run. Every run is an ordinary
`python -m hpc_mnist.train` process on the bundled full MNIST, so the figures are what a user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from hpc_mnist import resources
from hpc_mnist.errors import ArgumentParser, UserError, comma_list, one_line, report, writable_file
from hpc_mnist.runtime.logger import make_console


@dataclass(frozen=True)
class Lesson:
    name: str
    title: str
    published: str  # as the lesson states it
    published_value: float  # the figure to compare with (the middle of a published range)
    metric: str  # val_acc or test_acc: what the lesson reported
    recipe: str  # its preset under configs/lessons/
    defaults: tuple[str, ...]  # config file and overrides: the same network with this project's recipe
    note: str = ""


LESSONS = {lesson.name: lesson for lesson in [
    Lesson("linear", "ALCF intro, linear 784-10", "val 90.24%", 0.9024, "val_acc", "alcf_linear.yaml",
           ("linear.yaml",)),
    Lesson("mlp", "ALCF intro, MLP 784-50-50-50-10", "val 93.66%", 0.9366, "val_acc", "alcf_mlp.yaml",
           ("mlp.yaml",)),
    Lesson("cnn", "ALCF CNN conv32-conv64-pool-fc128", "val 96.4-96.9%", 0.9665, "val_acc", "alcf_cnn.yaml",
           ("cnn.yaml",), "recipe keeps the lesson's double softmax (model.softmax_before_loss=true)"),
    Lesson("keras", "Keras MNIST in 17 lines, 784-256-128-10 sigmoid", "test 91.06%", 0.9106, "test_acc",
           "keras_17_lines.yaml",
           ("mlp.yaml", "model.hidden=[256,128]", "model.activation=sigmoid", "model.dropout=0.0")),
    Lesson("fastai", "fastai-style from scratch, 784-500-10", "34.81%", 0.3481, "val_acc", "fastai_scratch.yaml",
           ("mlp.yaml", "model.hidden=[500]", "model.dropout=0.0"),
           "recipe trains with the lesson's sigmoid one-vs-rest loss (model.loss=sigmoid_one_vs_rest)"),
]}
DEFAULTS_NOTE = ("this project's defaults: normalised inputs, reshuffled every epoch, logits into cross-entropy, "
                 "PyTorch's initialisation, and the shipped config's optimizer, batch and epochs")


def train_once(config_file: Path, overrides: list[str], log_dir: Path, name: str) -> dict[str, Any]:
    """One `python -m hpc_mnist.train` process; its summary.json plus the process's wall time."""
    cmd = [sys.executable, "-m", "hpc_mnist.train", "--config", str(config_file), *overrides,
           f"log.dir={log_dir}", f"log.name={name}", "log.console=plain", "log.tensorboard=false", "log.failures=0",
           "train.checkpoint_every=0"]
    began = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - began
    summary_path = log_dir / name / "summary.json"
    if result.returncode != 0 or not summary_path.exists():
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "exit_code": result.returncode, "error": why, "process_wall_s": wall,
                "command": cmd}
    return {**json.loads(summary_path.read_text()), "process_wall_s": wall, "command": cmd}


def run_lesson(lesson: Lesson, log_dir: Path, recipe_only: bool, overrides: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"lesson": lesson.name, "title": lesson.title, "published": lesson.published,
                           "published_value": lesson.published_value, "metric": lesson.metric, "note": lesson.note}
    configs = resources.folder("configs")
    row["recipe"] = train_once(configs / "lessons" / lesson.recipe, overrides, log_dir, f"{lesson.name}-recipe")
    if not recipe_only:
        config_file, *extra = lesson.defaults
        row["defaults"] = train_once(configs / config_file, [*extra, *overrides], log_dir, f"{lesson.name}-defaults")
    return row


def _figure(run: dict[str, Any] | None, metric: str) -> str:
    if run is None:
        return "-"
    if run.get("status") != "completed":
        return f"failed ({run.get('error', '')[:60]})"
    return f"{run[metric]:.2%} ({run['wall_time_s']:.0f} s)"


@one_line
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="hpc-mnist lessons", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--only", type=comma_list(), default=",".join(LESSONS), help=f"comma list of {', '.join(LESSONS)}")
    p.add_argument("--recipe-only", action="store_true", help="skip the runs with this project's defaults")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable), e.g. train.seed=1")
    p.add_argument("--log-dir", default="", help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    names = args.only
    unknown = [n for n in names if n not in LESSONS]
    if unknown:
        return report(UserError(f"unknown lesson {unknown[0]} (choose from {', '.join(LESSONS)})"))
    json_out = writable_file(args.json) if args.json else None  # before the runs, not after them
    console = make_console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(args.log_dir or tmp).resolve()
        for name in names:
            console.print(f"{name}: {LESSONS[name].title} ...")
            rows.append(run_lesson(LESSONS[name], log_dir, args.recipe_only, args.override))
            console.print(f"  recipe {_figure(rows[-1]['recipe'], LESSONS[name].metric)}; defaults "
                          f"{_figure(rows[-1].get('defaults'), LESSONS[name].metric)}")
    table = Table(title=f"lessons on full MNIST, {os.cpu_count()} CPU core(s); wall time of each run in brackets")
    for col in ("lesson", "published", "ours, lesson's recipe", "ours, project defaults", "note"):
        table.add_column(col)
    for row in rows:
        lesson = LESSONS[row["lesson"]]
        table.add_row(lesson.title, lesson.published, _figure(row["recipe"], lesson.metric),
                      _figure(row.get("defaults"), lesson.metric), lesson.note)
    console.print(table)
    if not args.recipe_only:
        console.print(f"Defaults: {DEFAULTS_NOTE}.")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
    failed = [r["lesson"] for r in rows for key in ("recipe", "defaults")
              if key in r and r[key].get("status") != "completed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What a sweep runs: its points (nodes, ranks, repeat) and each one's launch and trainer command, with the
sweep's settings resolved the way the trainer resolves its own (defaults < config file < words after --)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc_mnist.core import config
from hpc_mnist.errors import UserError


@dataclass
class Point:
    """One run of a sweep."""

    nodes: int
    ranks: int
    repeat: int
    run_dir: str
    command: list[str]
    exit_code: int | None = None


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
    in_file = set(config.read_file(file)) if file else set()
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

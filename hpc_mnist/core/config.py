"""Typed run configuration: defaults in code < a YAML file (`--config`) < dotted command-line overrides.

Every key is a field of one of the section dataclasses below, with its default, its meaning and its
allowed range next to it, so `--help`, validation and the saved `config.yaml` all come from one place.
Invalid input raises `UserError` before any process group or data work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from hpc_mnist import resources
from hpc_mnist.errors import ArgumentParser, UserError


def opt(default: Any, help: str, **bounds: float) -> Any:
    """A config field: its default, one line of help, and optional bounds (gt, ge, lt, le)."""
    meta = {"help": help, **bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: Literal["mnist", "fashion_mnist", "kmnist", "synthetic"] = opt(
        "mnist", "dataset; synthetic needs no files (offline smoke runs, benchmarks)")
    root: str = opt("", "dataset folder (must exist); empty: $HPC_MNIST_DATA, else the bundled MNIST (others ./data)")
    download: bool = opt(True, "download missing files on rank 0 (compute nodes often have no internet)")
    val_fraction: float = opt(0.2, "share of the training split held out for validation; 0: train on all of "
                              "it, the test set stands in for validation", ge=0, lt=1)
    normalize: bool = opt(True, "standardise inputs by the dataset's mean and std; false: [0, 1] (ToTensor)")
    shuffle: bool = opt(True, "reshuffle the training split every epoch; false: its fixed order (the lessons)")
    split_seed: int = opt(55, "seed of the train/validation split (55, as in the tutorials)")
    resident: bool = opt(True, "keep each split as one uint8 tensor on the training device")
    synthetic_train: int = opt(60000, "synthetic training-split size (before validation split)", ge=2)
    synthetic_test: int = opt(10000, "synthetic test-split size", ge=1)


@dataclass
class ModelConfig:
    name: Literal["linear", "mlp", "cnn"] = opt("mlp", "linear (784-10), mlp, or cnn")
    hidden: list[int] = opt([50, 50, 50], "mlp hidden layer sizes", ge=1)
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = opt("relu", "mlp activation")
    dropout: float = opt(0.2, "mlp dropout after the first hidden layer", ge=0, lt=1)
    channels: list[int] = opt([32, 64], "cnn: output channels of each convolution (default: the tutorial's)", ge=1)
    kernels: list[int] = opt([3, 3], "cnn: kernel size of each convolution", ge=1)
    pools: list[int] = opt([1, 2], "cnn: max-pool factor after each convolution (1: none)", ge=1)
    strides: list[int] = opt([], "cnn: stride of each convolution (empty: 1 for every one)", ge=1)
    padding: Literal["valid", "same"] = opt("valid", "cnn: convolution padding (valid: none, as the tutorial)")
    batch_norm: bool = opt(False, "cnn: batch normalisation after each convolution")
    fc: int = opt(128, "cnn: width of the hidden dense layer (0: none, convolutions straight to the 10 logits)",
                  ge=0)
    conv_dropout: float = opt(0.25, "cnn: dropout after the convolutions", ge=0, lt=1)
    fc_dropout: float = opt(0.5, "cnn: dropout after the hidden dense layer", ge=0, lt=1)
    init: Literal["default", "normal", "glorot"] = opt(
        "default", "weights: PyTorch's default, N(0, 1) (a lesson's), or Glorot-uniform with zero biases (Keras's)")
    softmax_before_loss: bool = opt(
        False, "lesson fidelity only: output softmax probabilities, so cross-entropy applies a second softmax "
        "(the CNN tutorial's bug)")
    loss: Literal["cross_entropy", "sigmoid_one_vs_rest"] = opt(
        "cross_entropy", "lesson fidelity only: sigmoid_one_vs_rest is the fastai from-scratch lesson's loss "
        "(mean over the 10 outputs of sigmoid(logit), or 1 - sigmoid(logit) for the true class)")
    label_smoothing: float = opt(
        0.0, "cross-entropy's label smoothing: the target puts this much probability evenly on every class "
        "(0.1 made one epoch of the lean CNN reach 99%); the reported train and val losses are smoothed too",
        ge=0, lt=1)
    channels_last: bool = opt(True, "cnn: channels_last memory format (faster with bf16/tensor cores)")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = opt("sgd", "optimizer")
    lr: float = opt(0.05, "learning rate (times world size when optim.scale_lr=true)", gt=0)
    momentum: float = opt(0.0, "sgd momentum", ge=0, lt=1)
    nesterov: bool = opt(False, "sgd Nesterov momentum (needs momentum > 0)")
    weight_decay: float = opt(0.0, "weight decay (decoupled for adamw)", ge=0)
    scheduler: Literal["none", "step", "cosine", "onecycle"] = opt("none", "learning-rate schedule")
    step_size: int = opt(1, "step scheduler: epochs between decays", ge=1)
    gamma: float = opt(0.7, "step scheduler: decay factor", gt=0, le=1)
    scale_lr: bool = opt(False, "multiply lr by world size (linear scaling rule)")


@dataclass
class TrainConfig:
    epochs: int = opt(5, "training epochs", ge=1)
    batch_size: int = opt(128, "batch size per rank (global batch = this x world size)", ge=1)
    eval_batch_size: int = opt(2048, "batch size per rank for validation and test", ge=1)
    seed: int = opt(0, "seed for weights, dropout and shuffling", ge=0)
    device: Literal["auto", "cuda", "xpu", "mps", "cpu"] = opt("auto", "auto: cuda, xpu, mps, then cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "auto: bf16 on GPUs that have it (else fp16), bf16 cnn on CPUs with native bf16, else fp32")
    checkpoint_every: int = opt(1, "epochs between checkpoints (0: only at the end and when stopped)", ge=0)
    checkpoint_minutes: float = opt(0.0, "also checkpoint inside an epoch once this many minutes have passed since "
                                    "the last checkpoint, so a crash loses at most that much (0: off)", ge=0)
    keep_checkpoints: int = opt(3, "newest checkpoints kept in the run directory", ge=1)
    resume: str = opt("auto", "auto: continue the run in the run directory if there is one; never: a new run "
                               "only (refused where a run exists); or a checkpoint path to start a new run from")
    time_limit: float = opt(0.0, "seconds after the process started at which to stop with a checkpoint (0: none)",
                            ge=0)
    deadline: float = opt(0.0, "unix time by which to have stopped with a checkpoint (0: none)", ge=0)
    deadline_margin: float = opt(60.0, "seconds before train.deadline or the job's end time to stop", ge=0)
    job_deadline: bool = opt(True, "read the batch job's end time from the scheduler (squeue/scontrol, qstat)")


@dataclass
class DistConfig:
    init: Literal["auto", "torchrun", "mpi", "slurm", "none"] = opt(
        "auto", "auto: torchrun variables, else an MPI launcher's (mpi4py), else an srun step's, else one process")
    backend: Literal["auto", "nccl", "xccl", "gloo"] = opt("auto", "auto: nccl on cuda, xccl on xpu, else gloo")
    timeout: float = opt(600.0, "seconds a collective may wait for a dead peer before the job fails", gt=0)
    init_timeout: float = opt(300.0, "seconds to wait at start-up for every rank to join", gt=0)
    quiet_after: float = opt(10.0, "seconds a rank's heartbeat may stand still (a frozen process, a silent host) "
                             "before it is named quiet and the job ends; 0: not watched", ge=0)


@dataclass
class LogConfig:
    dir: str = opt("runs", "parent folder of run directories")
    name: str = opt("", "run directory name; empty: the batch job id, else the config file's name (\"default\" "
                    "without one) and a digest of the settings the command line changes")
    console: Literal["auto", "rich", "plain"] = opt(
        "auto", "auto: progress bars on a terminal, plain lines in job logs")
    tensorboard: bool = opt(True, "write TensorBoard event files into the run directory")
    failures: int = opt(36, "misclassified test digits shown in TensorBoard", ge=0)
    timing: bool = opt(True, "per-rank step timing (data, forward, backward, waiting, optimizer) in metrics.jsonl")
    straggler_margin: float = opt(0.25, "a rank whose own work exceeds the others' median by this fraction is "
                                  "named a straggler", gt=0)
    debug: bool = opt(False, "NCCL_DEBUG=INFO (a file per host in the run directory), TORCH_DISTRIBUTED_DEBUG=DETAIL")
    profile: bool = opt(False, "torch.profiler trace of a few steady-state steps into <run>/profile (NVTX on CUDA)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every setting by its dotted key, `section.key`, as the command line names it."""
        return flat(self.to_dict())


def flat(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{section: {key: value}} (a Config's to_dict(), a config file's YAML) as {'section.key': value}."""
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def _keys() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every dotted key -> (its dataclass field, its resolved type)."""
    keys = {}
    for section in dataclasses.fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys[f"{section.name}.{f.name}"] = (f, hints[f.name])
    return keys


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "|".join(get_args(tp))
    if get_origin(tp) is list:
        return "list of int"
    return tp.__name__


def _check(key: str, value: Any, f: dataclasses.Field, tp: Any) -> Any:
    """Return `value` converted to the field's type, or raise UserError saying what is wrong."""
    def bad(what: str) -> UserError:
        return UserError(f"config key {key} must be {what} (got {value!r})")

    if get_origin(tp) is Literal:
        choices = list(get_args(tp))
        if value not in choices:
            raise UserError(f"config key {key} must be one of {', '.join(choices)} (got {value!r})"
                            + _suggest(str(value), choices))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if get_origin(tp) is list:
        if isinstance(value, str):
            value = [int(v) if v.strip().lstrip("-").isdigit() else v for v in value.split(",")]
        may_be_empty = f.default is dataclasses.MISSING and f.default_factory() == []  # model.strides: "all 1"
        if not isinstance(value, list) or not (value or may_be_empty) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers, e.g. [2,1], or [] for the default" if may_be_empty else
                      "a non-empty list of integers, e.g. [64,64]")
        for v in value:
            _check_bounds(key, v, f)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        value = float(value)
    _check_bounds(key, value, f)
    return value


def _check_bounds(key: str, value: float, f: dataclasses.Field) -> None:
    tests = {"gt": (lambda a, b: a > b, ">"), "ge": (lambda a, b: a >= b, ">="),
             "lt": (lambda a, b: a < b, "<"), "le": (lambda a, b: a <= b, "<=")}
    for name, (ok, sign) in tests.items():
        bound = f.metadata.get(name)
        if bound is not None and not ok(value, bound):
            raise UserError(f"config key {key} must be {sign} {bound} (got {value!r})")


def _set(cfg: Config, key: str, value: Any, where: str) -> None:
    keys = _keys()
    if key not in keys:
        raise UserError(f"unknown config key '{key}' in {where}" + _suggest(key, list(keys)))
    f, tp = keys[key]
    section, name = key.split(".", 1)
    setattr(getattr(cfg, section), name, _check(key, value, f, tp))


def _config_path(path: str) -> Path:
    """The file as given; `configs/...` that is not here is the package's own preset (an installed package)."""
    p = Path(path)
    if not p.exists() and p.parts[:1] == ("configs",):
        shipped = resources.folder("configs").joinpath(*p.parts[1:])
        if shipped.exists():
            return shipped
    return p


def read_file(path: str) -> dict[str, Any]:
    """The settings a config file sets, by dotted key (`configs/...` not here is the package's own preset); one
    line for a file that is missing, not YAML, or not sections of keys."""
    p = _config_path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of sections (data, model, ...)")
    for section, values in data.items():
        if not isinstance(values, dict):
            sections = [f.name for f in dataclasses.fields(Config)]
            known = section in sections  # a known section given a value: show its form, suggest no other name
            first_key = next(iter(dataclasses.asdict(Config())[section])) if known else ""
            example = f"e.g. '{section}: {{{first_key}: ...}}', " if known else ""
            raise UserError(f"config file {path}: section '{section}' must be a mapping of keys, {example}not "
                            f"{values!r}" + ("" if known else _suggest(str(section), sections)))
    return flat(data)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override '{item}' must look like section.key=value, e.g. train.epochs=3")
    f_tp = _keys().get(key)
    if f_tp is not None and f_tp[1] is str:
        return key, raw
    try:
        return key, yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return key, raw


def _cross_checks(cfg: Config) -> None:
    _check_cnn(cfg.model)
    _check_run_name(cfg.log.name)
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum <= 0):
        raise UserError("config key optim.nesterov=true needs optim.name=sgd and optim.momentum > 0")


def _check_run_name(name: str) -> None:
    """A run name is one folder inside log.dir: never a path that leads out of it, onto it, or elsewhere."""
    if name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"log.name={name!r} is not a run name: use a plain name (letters, digits, - _ .), and "
                        "log.dir=FOLDER for where run directories go")


def _check_cnn(m: ModelConfig) -> None:
    """The per-convolution lists agree in length and leave at least a 1x1 feature map."""
    if m.name != "cnn":
        return
    if not len(m.channels) == len(m.kernels) == len(m.pools) == len(m.strides or m.pools):
        given = f", {len(m.pools)} and {len(m.strides)}" if m.strides else f" and {len(m.pools)}"
        raise UserError(f"config keys model.channels, model.kernels, model.pools (and model.strides, if given) need "
                        f"one entry per convolution (got {len(m.channels)}, {len(m.kernels)}{given})")
    size = 28
    for i, (k, p, s) in enumerate(zip(m.kernels, m.pools, m.strides or [1] * len(m.pools), strict=True), 1):
        size = conv_output_size(size, k, s, m.padding) // p
        if size < 1:
            raise UserError(f"cnn convolution {i} (kernel {k}, stride {s}, pool {p}) leaves no feature map of the "
                            "28x28 digit: use smaller kernels, strides or pools, fewer convolutions, or "
                            "model.padding=same")


def conv_padding(kernel: int, stride: int, padding: str) -> int | str:
    """nn.Conv2d's padding: none (valid); else "same", or, where PyTorch allows "same" only at stride 1,
    (kernel - 1) // 2 on each side: a stride-2 convolution then halves an even map (28x28 -> 14x14 for kernels
    3 and 4; an odd map of 7 gives 4 with kernel 3 but 3 with kernel 4)."""
    if padding == "valid":
        return 0
    return "same" if stride == 1 else (kernel - 1) // 2


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    pad = conv_padding(kernel, stride, padding)
    return size if pad == "same" else (size + 2 * pad - kernel) // stride + 1


def help_text() -> str:
    lines = ["configuration keys (section.key=value on the command line):"]
    for key, (f, tp) in _keys().items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"  {key:<24} {_type_name(tp):<34} default {default!r}")
        lines.append(f"  {'':<24} {f.metadata['help']}")
    return "\n".join(lines)


def build(config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve defaults < config file < overrides into a validated Config."""
    cfg = Config()
    if config_file:
        for key, value in read_file(config_file).items():
            _set(cfg, key, value, config_file)
    for item in overrides:
        key, value = _parse_override(item)
        _set(cfg, key, value, "the command line")
    _cross_checks(cfg)
    return cfg


class _Once(argparse.Action):
    """An option given at most once: with two --config files the last would win silently."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)}, {values}): give one file "
                         "and put changes after it as section.key=value")
        setattr(namespace, self.dest, values)


def parser(prog: str, description: str, notes: str = "") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=description, epilog=help_text() + "\n\n" + notes,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", action=_Once,
                   help="YAML file with sections data, model, optim, train, dist, log")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides, applied last")
    return p


def save(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

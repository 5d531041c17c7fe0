"""Every input a user can get wrong: exit code 2, one clear line, no traceback, no checkpoint."""

from pathlib import Path

import pytest

from helpers.commands import torchrun
from helpers.data import write_mnist_root
from helpers.processes import run_train
from hpc_mnist import train

SMOKE = ["--config", "configs/smoke.yaml", "log.console=plain"]


def _yaml(tmp: Path, text: str) -> list[str]:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return ["--config", str(path)]


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _mnist(tmp: Path, damage) -> list[str]:
    root = write_mnist_root(tmp / "mnist", train_count=9000)
    damage(root / "MNIST" / "raw")
    return [f"data.root={root}", "data.download=false", "data.name=mnist"]


def _truncate(raw: Path) -> None:
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])


def _swap_labels(raw: Path) -> None:
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())


def _bad_magic(raw: Path) -> None:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])


def _not_writable(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("")
    return [f"log.dir={tmp / 'afile'}"]


CASES = {  # name: (arguments built in a temporary folder, message the one line contains)
    "malformed yaml": (lambda t: _yaml(t, "train: {epochs: 2\n"), "is not valid YAML"),
    "python object tag": (lambda t: _yaml(t, "train: !!python/object/apply:os.system [id]\n"), "is not valid YAML"),
    "section not a mapping": (lambda t: _yaml(t, "optim: 0.1\n"),
                              "section 'optim' must be a mapping of keys, e.g. 'optim: {name: ...}', not 0.1"),
    "unknown key": (lambda t: ["train.epocs=2"], "unknown config key 'train.epocs' in the command line (did you mean"),
    "wrong type": (lambda t: ["train.batch_size=big"], "config key train.batch_size must be an integer"),
    "zero batch": (lambda t: ["train.batch_size=0"], "config key train.batch_size must be >= 1 (got 0)"),
    "negative epochs": (lambda t: ["train.epochs=-3"], "config key train.epochs must be >= 1 (got -3)"),
    "nan lr": (lambda t: ["optim.lr=nan"], "config key optim.lr must be a finite number"),
    "infinite lr": (lambda t: ["optim.lr=.inf"], "config key optim.lr must be a finite number"),
    "unknown model": (lambda t: ["model.name=resnet50"], "config key model.name must be one of linear, mlp, cnn"),
    "unknown dataset": (lambda t: ["data.name=cifar10"], "config key data.name must be one of mnist"),
    "unknown optimizer": (lambda t: ["optim.name=lion"], "config key optim.name must be one of sgd, adam, adamw"),
    "empty validation split": (lambda t: ["data.synthetic_train=2", "data.val_fraction=0.1"],
                               "leave an empty train or validation split"),
    "missing data offline": (lambda t: [f"data.root={_empty(t)}", "data.download=false", "data.name=mnist"],
                             "mnist files not found: no train-images-idx3-ubyte"),
    "data root that does not exist": (lambda t: [f"data.root={t / 'none'}", "data.name=mnist"],
                                      "does not exist: check the path (nothing was created there)"),
    "truncated file": (lambda t: _mnist(t, _truncate), "t10k-images-idx3-ubyte is truncated or corrupt"),
    "label count mismatch": (lambda t: _mnist(t, _swap_labels), "holds 9000 images but"),
    "wrong magic": (lambda t: _mnist(t, _bad_magic), "is not an IDX images file"),
    "run directory not writable": (_not_writable, "cannot write the run directory"),
    "missing resume checkpoint": (lambda t: [f"train.resume={t / 'nope.pt'}"], "nope.pt does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input(case, tmp_path, capsys, request):
    make_args, message = CASES[case]
    if case in ("truncated file", "label count mismatch", "wrong magic"):
        request.getfixturevalue("mnist_root")  # skips when the real digits are absent
    args = make_args(tmp_path)
    base = SMOKE[2:] if "--config" in args else SMOKE  # one --config: a bad file instead of the smoke preset
    code = train.main([*base, f"log.dir={tmp_path / 'runs'}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("hpc_mnist: error: ") and message in err[0], err
    assert not list(tmp_path.rglob("checkpoint-*.pt"))


@pytest.mark.slow
def test_more_ranks_than_training_samples(tmp_path):
    result = run_train([*SMOKE, "data.synthetic_train=2", "data.val_fraction=0.5", f"log.dir={tmp_path}"],
                       launcher=torchrun())
    assert result.returncode != 0
    assert "hpc_mnist: error: 2 ranks but only 1 training samples: use fewer ranks" in result.stderr
    assert result.stderr.count("hpc_mnist: error") == 1  # said once, by rank 0
    assert not list(Path(tmp_path).rglob("checkpoint-*.pt"))

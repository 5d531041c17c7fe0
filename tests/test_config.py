import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers.processes import REPO, run_train
from hpc_mnist.core import config, models, optim
from hpc_mnist.errors import UserError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_tutorial():
    cfg = config.build()
    assert (cfg.model.name, cfg.model.hidden, cfg.model.dropout) == ("mlp", [50, 50, 50], 0.2)
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size) == ("sgd", 0.05, 128)
    assert (cfg.data.val_fraction, cfg.data.split_seed) == (0.2, 55)


def test_precedence_defaults_then_file_then_command_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 7\n  batch_size: 32\noptim:\n  lr: 0.1\n")
    cfg = config.build(path, ["train.epochs=3", "model.name=cnn", "optim.lr=1e-3"])
    assert cfg.train.epochs == 3  # command line beats file
    assert cfg.train.batch_size == 32  # file beats default
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1's string "1e-3" still parses as a number
    assert cfg.model.name == "cnn"
    assert cfg.train.seed == 0  # default untouched


def test_override_value_types():
    cfg = config.build(None, ["model.hidden=[64,32]", "data.download=false", "log.name=123", "optim.lr=2"])
    assert cfg.model.hidden == [64, 32] and cfg.data.download is False
    assert cfg.log.name == "123" and isinstance(cfg.optim.lr, float)
    assert config.build(None, ["model.hidden=16,8"]).model.hidden == [16, 8]


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr' in the command line (did you mean 'optim.lr'?)"),
    (["train.epochs=2.5"], "config key train.epochs must be an integer (got 2.5)"),
    (["train.epochs=0"], "config key train.epochs must be >= 1 (got 0)"),
    (["train.batch_size=-4"], "config key train.batch_size must be >= 1 (got -4)"),
    (["optim.lr=nan"], "config key optim.lr must be a finite number"),
    (["optim.lr=inf"], "config key optim.lr must be a finite number"),
    (["optim.lr=0"], "config key optim.lr must be > 0 (got 0.0)"),
    (["optim.lr=fast"], "config key optim.lr must be a number (got 'fast')"),
    (["data.val_fraction=1"], "config key data.val_fraction must be < 1"),
    (["data.download=maybe"], "config key data.download must be true or false"),
    (["model.name=resnet"], "config key model.name must be one of linear, mlp, cnn (got 'resnet')"),
    (["model.name=mpl"], "(did you mean 'mlp'?)"),
    (["model.hidden=[]"], "config key model.hidden must be a non-empty list of integers"),
    (["model.hidden=[64,0]"], "config key model.hidden must be >= 1 (got 0)"),
    (["train.epochs"], "override 'train.epochs' must look like section.key=value"),
    (["optim.nesterov=true"], "optim.nesterov=true needs optim.name=sgd and optim.momentum > 0"),
])
def test_invalid_overrides(overrides, message):
    with pytest.raises(UserError) as err:
        config.build(None, overrides)
    assert message in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: [1\n", "is not valid YAML (line"),
    ("model: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping of sections"),
    ("trian:\n  epochs: 1\n", "unknown config key 'trian.epochs'"),
    ("train: 3\n", "section 'train' must be a mapping of keys"),
    ("train:\n  epoch: 3\n", "(did you mean 'train.epochs'?)"),
    ("optim:\n  lr: .nan\n", "config key optim.lr must be a finite number"),
])
def test_invalid_files(tmp_path, text, message):
    with pytest.raises(UserError) as err:
        config.build(write(tmp_path, text))
    assert message in str(err.value)


def test_missing_file():
    with pytest.raises(UserError, match="cannot read config file /no/such.yaml"):
        config.build("/no/such.yaml")


def test_save_round_trips(tmp_path):
    cfg = config.build(None, ["model.name=cnn", "model.hidden=[8]", "optim.lr=0.3"])
    config.save(cfg, tmp_path / "config.yaml")
    assert config.build(str(tmp_path / "config.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.3


def test_every_preset_is_built_as_written_round_trips_and_trains_a_step(tmp_path):
    """Every preset (configs/ and configs/lessons/): each key it sets is the built config's value (none ignored or
    overridden), config.save round-trips it, and its model, loss, optimizer and schedule take one step on a batch
    of digits with a finite loss that moves the weights."""
    presets = sorted((REPO / "configs").rglob("*.yaml"))
    assert {p.parent.name for p in presets} == {"configs", "lessons"} and len(presets) >= 11, presets
    torch.manual_seed(0)
    images, labels = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    for path in presets:
        cfg = config.build(str(path))
        built = cfg.to_dict()
        for section, keys in yaml.safe_load(path.read_text()).items():
            for key, value in keys.items():
                assert built[section][key] == value, f"{path.name}: {section}.{key} is {built[section][key]!r}"
        config.save(cfg, tmp_path / path.name)
        assert config.build(str(tmp_path / path.name)) == cfg, path.name

        model = models.build(cfg.model)
        optimizer = optim.build_optimizer(cfg.optim, model, cfg.optim.lr)
        schedule = optim.build_scheduler(cfg.optim, optimizer, cfg.optim.lr, 1, cfg.train.epochs)
        before = [p.detach().clone() for p in model.parameters()]
        loss = models.loss_function(cfg.model)(model(images), labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        assert torch.isfinite(loss), f"{path.name}: loss {loss}"
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), path.name


@pytest.mark.slow
def test_help_lists_every_key_with_default():
    result = run_train(["--help"])
    assert result.returncode == 0
    for key in config._keys():
        assert key in result.stdout
    assert "default 0.05" in result.stdout and "default 'mlp'" in result.stdout


@pytest.mark.slow
def test_bad_config_exits_2_with_one_line_before_any_work(tmp_path):
    result = run_train(["optim.lr=-1", f"log.dir={tmp_path / 'runs'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hpc_mnist: error: config key optim.lr must be > 0 (got -1.0)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before creating anything


def test_docs_list_every_key_with_its_default():
    readme = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and "." in cells[0]:
            rows[cells[0].strip("`")] = cells[1].strip("`")
    defaults = config.Config().to_dict()
    for key in config._keys():
        section, name = key.split(".")
        value = defaults[section][name]
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        assert key in rows, f"docs/configuration.md misses {key}"
        assert yaml.safe_load(rows[key].replace('""', "''")) == yaml.safe_load(shown), key


def test_docs_list_every_environment_variable():
    """Environment variables are a second way in: each one the code, site files or job scripts read is in the
    one table in docs/configuration.md (the review found 18, of which the README named 7)."""
    root = Path(__file__).parents[1]
    sources = [*root.glob("hpc_mnist/*.py"), *root.glob("launch/*.sh"), *root.glob("jobscripts/*.sh")]
    used = {m for p in sources for m in re.findall(r"HPC_MNIST_[A-Z_]+[A-Z]", p.read_text())}
    table = (root / "docs" / "configuration.md").read_text().split("## Environment variables", 1)[1]
    listed = set(re.findall(r"`(HPC_MNIST_[A-Z_]+)`", table))
    assert len(used) >= 15 and used <= listed, sorted(used - listed)

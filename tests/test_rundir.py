"""Which run directory a command meets: the same command its own run, another command another run."""

import shlex

import pytest

from helpers.processes import REPO
from hpc_mnist.core import config
from hpc_mnist.runtime import rundir


def name_of(words: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    for var in ("PBS_JOBID", "PBS_ARRAY_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    args = config.parser("t", "", "").parse_args(words)
    return rundir.path_for(config.build(args.config, args.overrides), args.config).name


def test_a_run_is_named_for_its_config_and_the_settings_that_change_its_result(monkeypatch):
    name = lambda *words: name_of([*words], monkeypatch)  # noqa: E731
    assert name("--config", "configs/cnn.yaml") == "cnn"
    assert name() == "default"  # not "mlp", which configs/mlp.yaml's run is called
    changed = name("--config", "configs/cnn.yaml", "optim.lr=3e-4")
    assert changed.startswith("cnn-") and len(changed) == len("cnn-") + 6
    assert name("--config", "configs/cnn.yaml", "optim.lr=0.0003") == changed  # the same setting, spelt otherwise
    assert name("--config", "configs/cnn.yaml", "train.seed=1") not in ("cnn", changed)
    # Not part of a run's identity: more epochs continue it; paths, logging and deadlines are per command.
    for words in (["train.epochs=9"], ["data.root=/elsewhere"], ["log.console=plain"], ["train.deadline_margin=5"],
                  ["optim.lr=0.001"]):  # the file's own value
        assert name("--config", "configs/cnn.yaml", *words) == "cnn", words
    assert name("--config", "configs/cnn.yaml", "log.name=mine") == "mine"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert rundir.path_for(config.build("configs/cnn.yaml", ["optim.lr=3e-4"]), "configs/cnn.yaml").name == "77"


def test_the_readme_examples_each_land_in_their_own_run(monkeypatch):
    """Found by a review, in the README's order: after the main job `python -m hpc_mnist.train` said "finished
    already", and the torchrun CNN example silently continued the earlier `train.epochs=3 optim.lr=3e-4` run."""
    readme = (REPO / "README.md").read_text()
    set_up, running = readme.split("## Running\n", 1)
    blocks = [block.split("```")[0] for block in set_up.split("```bash\n")[1:]]  # the main job's is among them
    blocks.append(running.split("```bash\n", 1)[1].split("```")[0])
    commands = [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if "hpc_mnist.train" in line]
    words = [shlex.split(c.split("hpc_mnist.train", 1)[1]) for c in commands]
    assert len(words) >= 4, commands
    names = [name_of(w, monkeypatch) for w in words]
    assert len(set(names)) == len(names), dict(zip(commands, names, strict=True))


@pytest.mark.slow
def test_a_finished_run_still_checks_its_data_root(mnist_root, tmp_path, train_here):
    """A typo'd data.root on a finished run used to exit 0 ('would apply only to further epochs')."""
    args = ["--config", "configs/mlp.yaml", "train.epochs=1", "data.download=false", f"log.dir={tmp_path}",
            "log.name=r", "log.console=plain"]
    assert train_here([*args, f"data.root={mnist_root}"]).code == 0
    typo = tmp_path / "mnsit"
    result = train_here([*args, f"data.root={typo}"])
    assert result.code == 2 and result.err == (f"hpc_mnist: error: data.root {typo} does not exist: check "
                                               "the path (nothing was created there); unset it to use "
                                               "the MNIST copy bundled with hpc_mnist\n")

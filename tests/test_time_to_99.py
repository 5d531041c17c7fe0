"""The time-to-99% protocol of `python -m hpc_mnist.bench --time-to-99`: it runs end to end on the bundled full
MNIST and its reference loop is pytorch/examples' recipe. (The 99% figures themselves are measured, not
tested: benchmarks/RESULTS.md.)"""

import json

import pytest
import torch

from helpers.processes import run_train
from hpc_mnist import resources
from hpc_mnist.bench.reference import TutorialLoop
from hpc_mnist.core import config, models
from hpc_mnist.core.datasets import BUNDLED, read_idx, write_idx_split

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)


def test_protocol_runs_every_seed_to_the_end_then_tests_once(tmp_path):
    out = tmp_path / "t99.json"
    result = run_train(["--time-to-99", "--seeds", "2", "--reference-seeds", "0", "--json", str(out),
                        "--override", "train.epochs=1", "--override", "model.channels=[4,8]"],
                       program=["-m", "hpc_mnist.bench"], env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"].endswith("configs/lean.yaml") and report["split"] == "all 60,000 training digits"
    ours = report["ours"]
    assert [r["seed"] for r in ours["runs"]] == [0, 1] and ours["epochs"] == 1
    assert all(r["train_seconds"] > 0 and 0.9 < r["test_acc"] < 1 for r in ours["runs"])
    assert ours["runs"][0]["test_acc"] != ours["runs"][1]["test_acc"]  # seeds differ
    assert ours["test_acc_mean"] == sum(r["test_acc"] for r in ours["runs"]) / 2
    assert "time to 99% test accuracy under the fixed protocol" in result.stdout


def test_lean_preset_is_much_cheaper_than_the_tutorial_cnn():
    lean = models.build(config.build(str(resources.folder("configs") / "lean.yaml")).model)
    tutorial = models.build(config.ModelConfig(name="cnn"))
    assert models.flops_per_sample(lean) * 5 < models.flops_per_sample(tutorial)


def test_examples_recipe_is_the_tutorial_cnn_with_adadelta(tmp_path):
    torch.set_num_threads(1)
    images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz", "images")
    labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz", "labels")
    write_idx_split(tmp_path, "train", images[:2000], labels[:2000])
    write_idx_split(tmp_path, "t10k", images[2000:3000], labels[2000:3000])
    recipe = TutorialLoop.pytorch_examples(tmp_path, seed=0, device=torch.device("cpu"))
    assert models.parameter_count(recipe.model) == 1_199_882
    assert isinstance(recipe.optimizer, torch.optim.Adadelta) and recipe.train_loader.batch_size == 64
    recipe.epoch(1)
    assert recipe.scheduler.get_last_lr() == [0.7]
    assert recipe.test_accuracy() > 0.8  # one epoch of 2,000 real digits, tested on 1,000 others

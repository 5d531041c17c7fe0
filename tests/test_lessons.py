"""The fast lessons reproduce their published figures on the bundled full MNIST (real processes)."""

import json

import pytest

from helpers.processes import run_train
from hpc_mnist import lessons, resources
from hpc_mnist.core import config

TOLERANCE = 0.007  # points of accuracy: seeds 0-2 of both lessons fell within 0.3 of the published figures


def test_every_lesson_preset_is_a_valid_config():
    for lesson in lessons.LESSONS.values():
        config.build(str(resources.folder("configs") / "lessons" / lesson.recipe))
        config.build(str(resources.folder("configs") / lesson.defaults[0]), list(lesson.defaults[1:]))
    cnn = config.build(str(resources.folder("configs") / "lessons" / "alcf_cnn.yaml"))
    assert cnn.model.softmax_before_loss and not cnn.data.normalize and not cnn.data.shuffle
    assert not config.build(str(resources.folder("configs") / "cnn.yaml")).model.softmax_before_loss
    fastai = config.build(str(resources.folder("configs") / "lessons" / "fastai_scratch.yaml"))
    assert fastai.model.loss == "sigmoid_one_vs_rest" and fastai.optim.lr == 50.0 and fastai.model.init == "normal"


@pytest.mark.slow
def test_fast_lessons_reproduce_the_published_figures(tmp_path):
    out = tmp_path / "lessons.json"
    result = run_train(["--only", "linear,mlp", "--recipe-only", "--json", str(out), "--log-dir", str(tmp_path)],
                       program=["-m", "hpc_mnist.lessons"], env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["lesson"]: row for row in json.loads(out.read_text())}
    for name in ("linear", "mlp"):
        run = rows[name]["recipe"]
        assert run["status"] == "completed" and run["dataset"] == "mnist"
        got, published = run["val_acc"], lessons.LESSONS[name].published_value
        assert abs(got - published) <= TOLERANCE, f"{name}: {got:.4f} against published {published:.4f}"
    assert "val 90.24%" in result.stdout and "val 93.66%" in result.stdout


def test_unknown_lesson_is_one_line():
    assert lessons.main(["--only", "resnet"]) == 2


def test_lessons_command_names_its_presets():
    assert {lesson.recipe for lesson in lessons.LESSONS.values()} == {
        p.name for p in (resources.folder("configs") / "lessons").glob("*.yaml")}

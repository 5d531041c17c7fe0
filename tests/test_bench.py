"""A quick smoke run of the benchmark command: it runs end to end and writes sane figures.

(Speed targets are checked by running the benchmark itself, not here: see benchmarks/RESULTS.md.)
"""

import json
import subprocess
import sys

import pytest

from helpers.processes import REPO, clean_env

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = clean_env()
    result = subprocess.run(
        [sys.executable, "-m", "hpc_mnist.bench", "--models", "mlp", "--steps", "3", "--warmup", "1", "--repeats",
         "2", "--synthetic-train", "1000", "--synthetic-test", "200", "--target", "0.3", "--seeds", "1",
         "--max-epochs", "2", "--ranks", "1,2", "--scaling-rounds", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["throughput"]
    assert row["model"] == "mlp" and row["ours"] > 0 and row["reference"] > 0
    assert row["ratio"] == row["ours"] / row["reference"]
    assert row["dataset_mb"] == (1000 + 200) * 784 / 2**20  # uint8 training file (train + val) and test, once
    assert {r["path"] for r in report["time_to_target"]} == {"ours", "reference"}
    assert [r["ranks"] for r in report["scaling"]] == [1, 2] and report["scaling"][0]["efficiency"] == 1.0
    assert "ours/reference" in result.stdout and "weak scaling" in result.stdout


def test_bench_without_the_reference_shows_dashes_not_nan(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "hpc_mnist.bench", "--models", "mlp", "--steps", "2", "--warmup", "1", "--repeats",
         "1", "--synthetic-train", "512", "--synthetic-test", "128", "--target", "0", "--no-reference",
         "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1", COLUMNS="200"), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (row,) = json.loads(out.read_text())["throughput"]
    assert "reference" not in row and row["ours"] > 0
    assert "nan" not in result.stdout

"""The all-reduce benchmark under a real launcher, and its use in the scaling report."""

import json
import shutil
import subprocess
import sys

import pytest

from helpers.commands import torchrun
from helpers.processes import REPO, clean_env
from helpers.runs import fake_run
from hpc_mnist import comm
from hpc_mnist.errors import UserError
from hpc_mnist.perf.allreduce import bus_factor
from hpc_mnist.scaling import command as scaling_command
from hpc_mnist.scaling.report import report_paths


def test_bus_bandwidth_factor_and_gradient_sizes():
    assert bus_factor(2) == 1.0 and bus_factor(8) == pytest.approx(1.75)
    assert comm.gradient_bytes() == {"linear": 4 * 7850, "mlp": 4 * 44860, "cnn": 4 * 1199882}
    assert comm.sweep_sizes()[0] == 4 and comm.sweep_sizes()[-1] == 64 * 2**20 and len(comm.sweep_sizes()) == 25


@pytest.mark.slow
def test_allreduce_benchmark_on_two_ranks(tmp_path):
    out = tmp_path / "comm.json"
    result = subprocess.run([*torchrun(), "-m", "hpc_mnist.comm", "--max-bytes", "4096", "--budget", "0.02",
                             "--validate", "mlp", "--batch", "16", "--json", str(out)], capture_output=True,
                            text=True, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1", COLUMNS="160"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["ranks"] == 2 and report["backend"] == "gloo"
    sweep = [r for r in report["rows"] if r["what"] == "sweep"]
    assert [r["bytes"] for r in sweep] == [4 * 2**k for k in range(11)]
    assert [r["what"] for r in report["rows"][11:]] == ["linear gradients", "mlp gradients", "cnn gradients"]
    for r in report["rows"]:
        assert r["time_us"] > 0
        assert r["algbw_gbs"] == pytest.approx(r["bytes"] / (r["time_us"] * 1e-6) / 1e9)
        assert r["busbw_gbs"] == pytest.approx(r["algbw_gbs"])  # 2(n-1)/n = 1 for two ranks
    assert report["fit"]["alpha_s"] >= 0 and report["fit"]["busbw"] > 0
    [check] = report["validation"]
    assert check["model"] == "mlp" and check["compute_s"] > 0 and check["step_s"] > 0
    assert check["predicted_step_s"] == pytest.approx(check["compute_s"] + check["allreduce_s"])
    assert check["predicted_overlap_step_s"] == pytest.approx(check["predicted_step_s"])  # one bucket
    assert check["error"] == pytest.approx(check["predicted_step_s"] / check["step_s"] - 1)
    assert "Polaris" in result.stdout and "busbw GB/s" in result.stdout and "alpha-beta fit" in result.stdout


@pytest.mark.slow
def test_allreduce_benchmark_needs_peers():
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.comm"], capture_output=True, text=True,
                            cwd=REPO, env=clean_env(), timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("hpc_mnist: error: the all-reduce benchmark needs 2")
    assert result.stderr.count("\n") == 1


def test_the_benchmark_has_one_home(capsys):
    """`scaling comm` was a second way in; it now says in one line where the benchmark is."""
    assert scaling_command.main(["comm", "--json", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hpc_mnist: error: the all-reduce benchmark has one home now: "
                                                   "python -m hpc_mnist.comm"), err


def _comm_file(path, ranks: int = 2):
    """A comm JSON whose sweep follows t = 1 ms x (n - 1) + 2(n-1)/n x S / 100 MB/s exactly."""
    rows = [{"what": "sweep", "bytes": 2**k, "time_us": 1e3 * (ranks - 1) + bus_factor(ranks) * 2**k / 1e8 * 1e6}
            for k in range(2, 23)]
    path.write_text(json.dumps({"ranks": ranks, "hosts": ranks, "rows": rows}))
    return path


def test_report_shows_predicted_beside_measured(tmp_path):
    """Fitted on the 1-rank point, the comm sweep at 2 ranks and the 2-rank point; the 4-rank point is predicted."""
    a = fake_run(tmp_path, "r1", 1, 1000.0, [(4.0, 0.9)])  # global batch 64: 64 ms per step
    b = fake_run(tmp_path, "r2", 2, 1800.0, [(2.2, 0.9)])  # 71.1 ms per step
    c = fake_run(tmp_path, "r4", 4, 3000.0, [(2.2, 0.9)])
    comm_json = _comm_file(tmp_path / "comm.json")
    assert scaling_command.main(["report", str(a), str(b), str(c), "--out", str(tmp_path / "out"), "--comm",
                                 str(comm_json), "--model", "mlp"]) == 0
    md = (tmp_path / "out" / "scaling.md").read_text()
    grad = 179_440
    exposed = (128 / 1800 - 0.064) / (1e-3 + grad / 1e8)  # what the 2-rank step paid of its all-reduce
    predicted = 256 / (0.064 + exposed * (3e-3 + 1.5 * grad / 1e8))
    assert "| predicted samples/s | model error | fit or predicted | regime | comm share |" in md
    assert f"| {predicted:,.0f} | {predicted / 3000 - 1:+.1%} | predicted | compute |" in md, md
    assert f"a step pays {exposed:.2f} x the all-reduce" in md
    assert f"points the model was not fitted on: 4 ranks {predicted / 3000 - 1:+.1%}" in md
    with pytest.raises(UserError, match="give --model"):
        report_paths([a, b], 0.9, tmp_path / "o2", [comm_json])


def test_report_predicts_with_the_model_the_runs_saved(tmp_path):
    """The bytes all-reduced are those of the model in the runs' config.yaml (lean.yaml's CNN: 155,738
    parameters), not of the preset its name has (the tutorial CNN: 1,199,882)."""
    runs = [fake_run(tmp_path, f"r{n}", n, 1000.0 * n, [(4.0, 0.9)]) for n in (1, 2)]
    for run in runs:
        shutil.copy(REPO / "configs" / "lean.yaml", run / "config.yaml")
    assert scaling_command.main(["report", *map(str, runs), "--out", str(tmp_path / "out"), "--comm",
                                 str(_comm_file(tmp_path / "comm.json"))]) == 0
    assert "gradients 622,952 bytes" in (tmp_path / "out" / "scaling.md").read_text()

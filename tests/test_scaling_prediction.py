"""The scaling model fitted on small runs (scaling/fitted.py, perf/ring.py): it recovers what made the numbers,
predicts the sizes it was not fitted on, and the report shows one prediction, its error, the overlap it measured,
each point's regime, and the model's line past the measured sizes in markdown, CSV and the figure."""

import csv
import json
import re

import pytest

from helpers.runs import fake_run
from hpc_mnist.core.config import ModelConfig
from hpc_mnist.core.models import allreduce_bytes, build
from hpc_mnist.perf import ring
from hpc_mnist.perf.allreduce import Sweep
from hpc_mnist.scaling import command

SIZES = [2**k for k in range(2, 23)]
TRUE = ring.Ring(a_s=200e-6, step_s=150e-6, busbw=12.5e6, fitted_ranks=(2, 3))  # a 100 Mbit/s ring
MLP_BYTES = allreduce_bytes(build(ModelConfig(name="mlp")))


def comm_json(path, ranks: int, validation: list | None = None):
    rows = [{"what": "sweep", "bytes": s, "time_us": TRUE.allreduce_s(s, ranks) * 1e6} for s in SIZES]
    path.write_text(json.dumps({"ranks": ranks, "hosts": ranks, "rows": rows, "validation": validation or []}))
    return path


def test_ring_fit_recovers_latency_steps_and_bandwidth():
    sweeps = [Sweep(n, tuple(SIZES), tuple(TRUE.allreduce_s(s, n) * 1e6 for s in SIZES), "synthetic")
              for n in (2, 3)]
    fitted = ring.fit(sweeps)
    assert fitted.a_s == pytest.approx(TRUE.a_s, rel=1e-3) and fitted.step_s == pytest.approx(TRUE.step_s, rel=1e-3)
    assert fitted.busbw == pytest.approx(TRUE.busbw, rel=1e-3) and fitted.max_rel_error < 1e-3
    # one rank count cannot separate the two latency terms: the latency then grows from nothing at one rank
    one = ring.fit(sweeps[:1])
    assert one.a_s == 0 and one.latency_s(2) == pytest.approx(TRUE.latency_s(2), rel=1e-3)


def test_a_sweep_without_bandwidth_is_one_error():
    flat = Sweep(2, tuple(SIZES[:5]), (300.0,) * 5, "flat")
    with pytest.raises(Exception, match="do not grow with the message size"):
        ring.fit([flat])


def sweep_of(tmp_path, compute_s: float, exposed: float, sizes: list[int], spread: float = 0.02):
    """A 1-host-per-rank sweep at `sizes` whose samples/s follow the model exactly (median of 3 repeats)."""
    points = []
    for n in sizes:
        step = compute_s + exposed * TRUE.allreduce_s(MLP_BYTES, n)
        for repeat, factor in enumerate((1 - spread, 1.0, 1 + spread), 1):
            run = fake_run(tmp_path, f"n{n}-{repeat}", n, 64 * n / step * factor, [(1.0, 0.9)])
            points.append({"nodes": n, "ranks": n, "repeat": repeat, "run_dir": str(run), "command": [],
                           "exit_code": 0})
    (tmp_path / "sweep.json").write_text(json.dumps({"mode": "weak", "points": points}))
    return tmp_path


def test_the_report_predicts_the_sizes_it_was_not_fitted_on(tmp_path):
    sweep = sweep_of(tmp_path / "s", compute_s=0.7e-3, exposed=1.08, sizes=[1, 2, 3, 4, 5, 6])
    files = [comm_json(tmp_path / f"c{n}.json", n) for n in (2, 3)]
    assert command.main(["report", str(sweep), "--model", "mlp", *(f"--comm={f}" for f in files)]) == 0
    with open(sweep / "scaling.csv") as f:
        rows = {int(r["ranks"]): r for r in csv.DictReader(f)}
    assert [rows[n]["fit"] for n in range(1, 7)] == ["fit"] * 3 + ["predicted"] * 3
    for n in (4, 5, 6):  # the numbers were made by the model, so it predicts them
        assert abs(float(rows[n]["model_error"])) < 1e-3, rows[n]
        assert rows[n]["regime"] == "bandwidth"  # 179 kB at 100 Mbit/s: ~20 ms against 0.7 ms of compute
    assert rows[1]["regime"] == "compute" and float(rows[1]["comm_share"]) == 0
    assert float(rows[6]["samples_per_s_min"]) < float(rows[6]["samples_per_s"]) < float(rows[6]["samples_per_s_max"])
    md = (sweep / "scaling.md").read_text()
    assert "overlap, measured on the sweep's points at those ranks: a step pays 1.08 x the all-reduce (none of it " \
           "hidden; the step paid 8% more than the all-reduce alone; 1.08 at 2 ranks, 1.08 at 3 ranks)" in md
    assert re.search(r"Error of the predicted samples/s on the points the model was not fitted on: 4 ranks [-+]0\.0%, "
                     r"5 ranks [-+]0\.0%, 6 ranks [-+]0\.0% \(largest 0\.0%\)", md), md
    with open(sweep / "model.csv") as f:
        line = list(csv.DictReader(f))
    assert [int(r["nodes"]) for r in line] == [1, 2, 3, 4, 5, 6, 12, 24]  # the next doublings
    assert line[-1]["measured"] == "" and float(line[-1]["comm_share"]) > float(line[5]["comm_share"])
    assert "| 24 | 24 |" in md and (sweep / "scaling.png").stat().st_size > 10_000


def test_overlap_from_the_comm_runs_when_the_sweep_has_no_point_there(tmp_path):
    """A sweep of 1, 4 and 8 hosts, comm sweeps at 2 and 3: the overlap comes from the comm runs' DDP steps."""
    sweep = sweep_of(tmp_path / "s", compute_s=5e-3, exposed=0.5, sizes=[1, 4, 8])
    ddp = [{"model": "mlp", "batch": 64, "compute_s": 5e-3, "step_s": 5e-3 + 0.5 * TRUE.allreduce_s(MLP_BYTES, n)}
           for n in (2, 3)]
    files = [comm_json(tmp_path / f"c{n}.json", n, [v]) for n, v in zip((2, 3), ddp, strict=True)]
    assert command.main(["report", str(sweep), "--model", "mlp", *(f"--comm={f}" for f in files)]) == 0
    md = (sweep / "scaling.md").read_text()
    assert "overlap, measured on the comm runs' DDP steps (--validate mlp --batch 64): a step pays 0.50 x the " \
           "all-reduce (50% of it hidden behind backward" in md
    assert re.search(r"4 ranks [-+]0\.0%, 8 ranks [-+]0\.0%", md), md


def test_nothing_to_measure_the_overlap_is_one_line(tmp_path, capsys):
    sweep = sweep_of(tmp_path / "s", compute_s=5e-3, exposed=1.0, sizes=[1, 4])
    files = [comm_json(tmp_path / "c2.json", 2)]
    assert command.main(["report", str(sweep), "--model", "mlp", f"--comm={files[0]}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing measures the overlap" in err and "--validate mlp --batch 64" in err


def test_a_sweep_of_whole_nodes_fits_compute_and_overlap_together(tmp_path):
    """No 1-rank point (2 ranks per node): compute and overlap come from the 2- and 4-rank points together, and
    the 8- and 16-rank points are predicted."""
    sweep = sweep_of(tmp_path / "s", compute_s=4e-3, exposed=0.8, sizes=[2, 4, 8, 16])
    files = [comm_json(tmp_path / f"c{n}.json", n) for n in (2, 4)]
    assert command.main(["report", str(sweep), "--model", "mlp", *(f"--comm={f}" for f in files)]) == 0
    with open(sweep / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fit"] for r in rows] == ["fit", "fit", "predicted", "predicted"]
    assert all(abs(float(r["model_error"])) < 1e-3 for r in rows), rows
    assert "compute 4.00 ms a step" in (sweep / "scaling.md").read_text()


def test_a_sweeps_own_report_without_a_fit_still_reports_and_says_why(tmp_path):
    """`scaling run --predict` writes its report even where the model cannot be fitted (noise on a loaded
    machine can leave two points no compute); a user's `report --comm` says so in one line instead (above)."""
    from hpc_mnist.scaling.report import report_paths

    sweep = sweep_of(tmp_path / "s", compute_s=5e-3, exposed=1.0, sizes=[1, 4])
    files = [comm_json(tmp_path / "c2.json", 2)]
    assert report_paths([sweep], 0.5, sweep, files, "mlp", fit_optional=True) == 0
    assert "No prediction: nothing measures the overlap" in (sweep / "scaling.md").read_text()

"""Scaling studies: the report's arithmetic, a real local sweep, and the scaling job scripts."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.processes import REPO, clean_env
from helpers.runs import fake_run
from hpc_mnist.errors import UserError
from hpc_mnist.scaling import command, plan, report, run

STUBS = REPO / "tests" / "stubs"


@pytest.fixture
def sweep(tmp_path):
    """Throughputs 1000 / 1800 / 3000 at 1 / 2 / 4 ranks, and an 8-rank point that failed."""
    points = [
        (fake_run(tmp_path, "r1", 1, 1000.0, [(4.0, 0.85), (4.0, 0.93)], 0.96), 1, 0),
        (fake_run(tmp_path, "r2", 2, 1800.0, [(2.0, 0.88), (2.0, 0.91)], 0.95), 2, 0),
        (fake_run(tmp_path, "r4", 4, 3000.0, [(1.5, 0.80), (1.5, 0.86)], 0.90), 4, 0),
        (tmp_path / "r8", 8, 1),  # never wrote a summary
    ]
    (tmp_path / "sweep.json").write_text(json.dumps({"mode": "weak", "points": [
        {"nodes": 1, "ranks": r, "repeat": 1, "run_dir": str(d), "command": [], "exit_code": code}
        for d, r, code in points]}))
    return tmp_path


def test_report_arithmetic(sweep):
    rows, mode = report.collect([sweep], target=0.9)
    table = {row["ranks"]: row for row in report.aggregate(rows)}
    assert mode == "weak"
    assert table[1]["speedup"] == 1.0 and table[1]["efficiency"] == 1.0
    assert table[2]["speedup"] == pytest.approx(1.8) and table[2]["efficiency"] == pytest.approx(0.9)
    assert table[4]["speedup"] == pytest.approx(3.0) and table[4]["efficiency"] == pytest.approx(0.75)
    assert table[1]["time_to_target_s"] == 8.0  # reached in epoch 2 (0.93)
    assert table[2]["time_to_target_s"] == 4.0
    assert table[4]["time_to_target_s"] is None  # never reached 0.9
    assert table[1]["epoch_time_s"] == 4.0 and table[4]["test_acc"] == 0.90
    assert table[8]["status"] == "failed (exit code 1)" and "speedup" not in table[8]


def test_report_files_show_failed_points(sweep, capsys):
    assert command.main(["report", str(sweep), "--target", "0.9"]) == 1  # a point failed
    with open(sweep / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["ranks"] for r in rows] == ["1", "2", "4", "8"]
    assert float(rows[2]["efficiency"]) == pytest.approx(0.75)
    assert rows[3]["status"] == "failed (exit code 1)" and rows[3]["samples_per_s"] == ""
    md = (sweep / "scaling.md").read_text()
    assert ("| 1 | 4 | - | 256 | 3,000 | 3,000-3,000 (0%) | 3.00 | 0.75 | 1.50 | not reached | 90.00% | none | ok |"
            in md)
    assert "| 1 | 8 | - | - | - | - | - | - | - | - | - | - | failed (exit code 1) |" in md
    assert "failed (exit code 1)" in md
    assert {"throughput.png", "efficiency.png", "accuracy.png", "scaling.png"} <= {p.name for p in sweep.iterdir()}
    assert "failed (exit code 1)" in capsys.readouterr().out


def test_strong_scaling_speedup_is_the_time_ratio(tmp_path):
    """Fixed global work: speedup = T(1) / T(N), which for equal samples is the throughput ratio."""
    a = fake_run(tmp_path, "s1", 1, 500.0, [(10.0, 0.9)])
    b = fake_run(tmp_path, "s2", 2, 900.0, [(10.0 * 500 / 900, 0.9)])
    table = report.aggregate(report.collect([a, b], 0.5)[0])
    assert table[1]["speedup"] == pytest.approx(table[0]["epoch_time_s"] / table[1]["epoch_time_s"])
    assert table[1]["efficiency"] == pytest.approx(0.9)


def test_report_without_matplotlib_still_writes_tables(sweep):
    shim = sweep / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    out = sweep / "out"
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "report", str(sweep), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(shim.parent)})
    assert "plots skipped: matplotlib is not installed (pip install 'hpc_mnist[plot]')" in result.stdout
    assert (out / "scaling.csv").exists() and (out / "scaling.md").exists()
    assert not list(out.glob("*.png"))


def test_strong_mode_needs_a_divisible_global_batch(capsys):
    assert command.main(["run", "--mode", "strong", "--ranks", "1,3", "--batch", "64", "--dry-run"]) == 2
    assert "3 does not divide it" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_prints_each_launch_line():
    env = clean_env()
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "run", "--ranks", "1,2", "--mode", "strong",
                             "--batch", "64", "--dry-run", "--sweep-dir", "/tmp/x", "--", "--config",
                             "configs/smoke.yaml"], capture_output=True, text=True, cwd=REPO, env=env)
    lines = [line.split(maxsplit=1) for line in result.stdout.strip().splitlines() if not line.startswith("#")]
    assert result.returncode == 0 and len(lines) == 2
    assert lines[0][0].endswith("torchrun") and lines[1][0].endswith("torchrun")
    assert lines[0][1].startswith("--standalone --nproc_per_node=1 -m hpc_mnist.train --config configs/smoke.yaml "
                                  "train.batch_size=64 log.console=plain train.resume=never log.dir=/tmp/x ")
    assert lines[1][1].startswith("--standalone --nproc_per_node=2 -m hpc_mnist.train --config configs/smoke.yaml "
                                  "train.batch_size=32 ")


@pytest.mark.slow
def test_local_weak_sweep_of_one_and_two_ranks(tmp_path):
    env = clean_env("OMP_NUM_THREADS")
    result = subprocess.run(
        [sys.executable, "-m", "hpc_mnist.scaling", "run", "--ranks", "1,2", "--batch", "64", "--epochs", "2",
         "--target", "0.5", "--sweep-dir", str(tmp_path / "sweep"), "--", "--config", "configs/smoke.yaml",
         "train.precision=fp32", "log.tensorboard=false"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert {"sweep.json", "scaling.csv", "scaling.md", "throughput.png", "efficiency.png", "accuracy.png"} <= {
        p.name for p in sweep.iterdir()}
    with open(sweep / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["ranks"], r["global_batch"], r["status"]) for r in rows] == [("1", "64", "ok"), ("2", "128", "ok")]
    assert float(rows[0]["efficiency"]) == 1.0 and float(rows[1]["samples_per_s"]) > 0
    # One thread count at both points (the 1-rank point used to take every core, the 2-rank one half each).
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"# threads per rank at every point: {threads} (" in result.stdout
    assert [r["threads_per_rank"] for r in rows] == [str(threads)] * 2
    summaries = [json.loads((sweep / f"weak-n1-r{n}-1" / "summary.json").read_text()) for n in (1, 2)]
    assert [s["threads_per_rank"] for s in summaries] == [threads, threads]
    assert "different threads per rank" not in (sweep / "scaling.md").read_text()
    config = (sweep / "weak-n1-r2-1" / "config.yaml").read_text()
    assert "scale_lr: true" in config  # weak scaling grows the global batch: linear lr scaling


def _trainer_sees(point: plan.Point) -> "object":
    """The configuration the trainer of one point resolves from its command line."""
    from hpc_mnist.core import config

    args = config.parser("train", "").parse_args(point.command[point.command.index("hpc_mnist.train") + 1:])
    return config.build(args.config, args.overrides)


def _plan(argv: list[str], tmp_path: Path) -> list[plan.Point]:
    args = command.parse_args(["run", *argv])
    return plan.plan(args, tmp_path / "sweep")


def test_users_settings_win_over_the_sweeps(tmp_path):
    """`-- train.epochs=5 train.batch_size=32 optim.scale_lr=false` and the config file's values are kept."""
    points = _plan(["--ranks", "1,2", "--epochs", "1", "--", "--config", "configs/smoke.yaml", "train.epochs=5",
                    "train.batch_size=32", "optim.scale_lr=false"], tmp_path)
    for p in points:
        cfg = _trainer_sees(p)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.scale_lr) == (5, 32, False)
        assert cfg.log.dir == str(tmp_path / "sweep") and cfg.train.resume == "never"
    # Without words after --, the config file's batch and epochs stand; weak scaling adds scale_lr.
    cfg = _trainer_sees(_plan(["--", "--config", "configs/smoke.yaml"], tmp_path)[1])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.scale_lr) == (2, 64, True)
    # --batch and --epochs, given explicitly, beat the config file.
    cfg = _trainer_sees(_plan(["--batch", "16", "--epochs", "1", "--", "--config", "configs/smoke.yaml"],
                              tmp_path)[1])
    assert (cfg.train.epochs, cfg.train.batch_size) == (1, 16)


def test_a_shipped_preset_is_found_from_any_folder(tmp_path, monkeypatch):
    """`-- --config configs/smoke.yaml` where there is no configs/ folder is the package's preset, for the sweep as
    for the trainer (the sweep read the path as given: a traceback)."""
    monkeypatch.chdir(tmp_path)
    cfg = _trainer_sees(_plan(["--", "--config", "configs/smoke.yaml"], tmp_path)[1])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.scale_lr) == (2, 64, True)


def test_strong_mode_splits_the_configured_global_batch(tmp_path):
    points = _plan(["--mode", "strong", "--ranks", "1,2", "--", "--config", "configs/smoke.yaml"], tmp_path)
    assert [_trainer_sees(p).train.batch_size for p in points] == [64, 32]
    with pytest.raises(UserError, match="give the global batch with --batch"):
        _plan(["--mode", "strong", "--", "train.batch_size=64"], tmp_path)


@pytest.mark.slow
def test_sweep_prints_what_it_sets(capsys):
    env = clean_env()
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "run", "--dry-run", "--sweep-dir", "/tmp/x",
                             "--", "--config", "configs/smoke.yaml", "train.epochs=3"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    head = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert "# weak scaling at 1, 2 rank(s): batch per rank 64 (configs/smoke.yaml), epochs 3 (yours)" in head
    assert any(line.startswith("# the sweep sets: optim.scale_lr=true (weak scaling") for line in head)


def test_help_shows_the_defaults():
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "run", "--help"], capture_output=True,
                            text=True, cwd=REPO, env=clean_env(COLUMNS="200"), timeout=60)
    text = " ".join(result.stdout.split())
    for expected in ("(default: 1,2)", "(default: weak)", "(default: 1)", "(default: 0.9)",
                     "(default: the configuration's train.batch_size)", "(default: the configuration's train.epochs)"):
        assert expected in text


def test_dry_run_with_nodes_outside_an_allocation_is_one_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "run", "--nodes", "1,2,4", "--dry-run"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env=clean_env("HPC_MNIST_", TMPDIR=str(tmp_path)))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hpc_mnist: error: --nodes ")
    assert "not inside a batch job" in result.stderr


def test_dry_run_on_part_of_a_pbs_job_leaves_no_hostfile(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("node-a\nnode-a\nnode-b\nnode-c\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env("HPC_MNIST_", TMPDIR=str(tmp), PBS_JOBID="7.pbs", PBS_NODEFILE=str(nodefile))
    result = subprocess.run([sys.executable, "-m", "hpc_mnist.scaling", "run", "--system", "pbs", "--nodes",
                             "1,2,3", "--dry-run", "--sweep-dir", str(tmp_path / "sweep")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("mpiexec")]
    assert [line.split()[2] for line in lines] == ["1", "2", "3"]
    assert str(nodefile) in lines[2]  # the whole job: PBS's own file
    assert not list(tmp.iterdir()) and not (tmp_path / "sweep").exists()
    with pytest.raises(UserError, match="asks for 4 nodes but the job has 3"):
        os.environ.update(PBS_JOBID="7.pbs", PBS_NODEFILE=str(nodefile))
        try:
            run.check_nodes(command.parse_args(["run", "--system", "pbs", "--nodes", "1,4"]))
        finally:
            del os.environ["PBS_JOBID"], os.environ["PBS_NODEFILE"]


def test_report_warns_when_points_ran_with_different_threads(tmp_path):
    """The README's first workstation sweep, as it ran before: 2 threads at 1 rank, 1 each at 2 ranks."""
    for name, ranks, threads, rate in (("a", 1, 2, 1000.0), ("b", 2, 1, 42500.0)):
        run_dir = fake_run(tmp_path, name, ranks, rate, [(1.0, 0.9)])
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "threads_per_rank": threads}))
    assert command.main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "scaling.md").read_text()
    assert "| threads/rank |" in text and "different threads per rank (1, 2)" in text


def test_threads_must_be_positive(tmp_path, capsys):
    assert command.main(["run", "--threads", "0", "--sweep-dir", str(tmp_path / "s"), "--", "--config",
                         "configs/smoke.yaml"]) == 2
    assert capsys.readouterr().err.startswith("hpc_mnist: error: --threads 0")

"""Every verb keeps the one-line promise: a mistake a user can make (arguments, paths, output files, missing
backends, mismatched packages) is one `hpc_mnist: error:` line and a non-zero exit, never a traceback, and a
bad output path is refused before anything is measured. The trainer's own inputs: test_hostile_input.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.processes import REPO, clean_env
from hpc_mnist import cli, train
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import launchers, rundir

BENCH = ["bench", "--steps", "1", "--warmup", "0", "--repeats", "1", "--synthetic-train", "256",
         "--synthetic-test", "64", "--no-reference"]


def run_verb(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own exit (--help, and its mistakes through errors.ArgumentParser)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _file(tmp: Path) -> Path:
    """A plain file where a user typed a folder."""
    (tmp / "notes.txt").write_text("")
    return tmp / "notes.txt"


def _run_dir(tmp: Path) -> Path:
    """A finished training run's directory (what scaling report must never write into)."""
    run = tmp / "runs" / "mlp"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "world_size": 1}))
    return run


CASES = {  # name: (argv built in a temporary folder, what the one line says)
    "unknown verb": (lambda t: ["nope"], "unknown verb 'nope'"),
    "argparse mistake": (lambda t: ["launch", "--bogus"], "hpc-mnist launch: unrecognized arguments: --bogus"),
    "argparse choice": (lambda t: ["data", "download", "--name", "cifar"], "invalid choice: 'cifar'"),
    "doctor outside torchrun": (lambda t: ["doctor", "--init", "torchrun"], "dist.init=torchrun but RANK/WORLD_SIZE"),
    "doctor outside srun": (lambda t: ["doctor", "--init", "slurm"], "dist.init=slurm but SLURM_STEP_ID"),
    "doctor nccl without a GPU": (lambda t: ["doctor", "--backend", "nccl", "--device", "cpu"], "no GPU visible"),
    "doctor json unwritable": (lambda t: ["doctor", "--json", "/proc/nope/d.json"], "cannot write /proc/nope/d.json"),
    "bench unknown model": (lambda t: ["bench", "--models", "resnet"], "--models takes linear, mlp, cnn, not resnet"),
    "bench zero batch": (lambda t: ["bench", "--batch-sizes", "0"], "--batch-sizes: expected positive integers"),
    "bench unknown precision": (lambda t: ["bench", "--precisions", "fp64"], "--precisions takes auto, fp32"),
    "bench batch not a number": (lambda t: ["bench", "--batch-sizes", "x"], "invalid comma list of int value"),
    "bench data root missing": (lambda t: [*BENCH, "--data-root", str(t / "none"), "--json", str(t / "b.json")],
                                "does not exist"),
    "bench json unwritable": (lambda t: [*BENCH, "--json", "/proc/nope/x.json"], "cannot write /proc/nope/x.json"),
    "launch zero nodes": (lambda t: ["launch", "--nodes", "0", "--dry-run"], "--nodes must be at least 1 (got 0)"),
    "launch zero ppn": (lambda t: ["launch", "--ppn", "0", "--dry-run"], "--ppn must be at least 1 (got 0)"),
    "train two configs": (lambda t: ["train", "--config", "configs/mlp.yaml", "--config", "configs/cnn.yaml"],
                          "--config given twice (configs/mlp.yaml, configs/cnn.yaml)"),
    "run name with ..": (lambda t: ["train", "log.name=..", f"log.dir={t}"], "log.name='..' is not a run name"),
    "run name with /": (lambda t: ["train", "log.name=a/b", f"log.dir={t}"], "log.name='a/b' is not a run name"),
    "absolute run name": (lambda t: ["train", "log.name=/tmp/x", f"log.dir={t}"], "is not a run name"),
    "scaling report into a run": (lambda t: ["scaling", "report", str(_run_dir(t))], "is not a sweep folder"),
    "model bad argument": (lambda t: ["model", "--bogus"], "hpc-mnist model: unrecognized arguments: --bogus"),
    "model json under a file": (lambda t: ["model", "--max-nodes", "2", "--json", f"{_file(t)}/m.json"],
                                "is a file, not a folder"),
    "scaling report out under a file": (lambda t: ["scaling", "report", str(t), "--out", f"{_file(t)}/report"],
                                        "is a file, not a folder"),
    "init into a file": (lambda t: ["init", str((t / "f").touch() or t / "f")], "cannot write"),
    "hosts of no run": (lambda t: ["hosts", str(t / "none")], "no run directory"),
    "hosts clear a host not recorded": (lambda t: ["hosts", str(t), "--clear", "n9"], "n9 is not recorded as bad"),
    "hosts damaged record": (lambda t: ["hosts", str((t / "bad-hosts.json").write_text("[]") and t)],
                             "is not a record of bad hosts"),
    "lessons json unwritable": (lambda t: ["lessons", "--only", "linear", "--json", "/proc/nope/l.json"],
                                "cannot write /proc/nope/l.json"),
    "status of no folder": (lambda t: ["status", str(t / "none")], "is not a directory: name a run directory"),
    "status every zero": (lambda t: ["status", "--watch", "--every", "0"], "--every must be more than 0 seconds"),
    "stop a run without status.json": (lambda t: ["stop", str(_run_dir(t))], "is not running (unknown: no status.json"),
    "stop a folder of runs": (lambda t: ["stop", str(t)], "is not a run directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a verb writes by default lands here (configs/... is the package's)
    argv, message = CASES[case]
    args = argv(tmp_path)
    before = set(tmp_path.rglob("*"))
    code, _, err = run_verb(args, capsys)
    lines = err.strip().splitlines()
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("hpc_mnist: error: ") and message in lines[0], err
    assert set(tmp_path.rglob("*")) == before  # nothing written: no figures, no report, no run directory


def test_a_preview_never_exports_an_empty_path(capsys, monkeypatch):
    """Frontier's site file builds LD_LIBRARY_PATH from Cray's; where neither is set, pasting the preview's
    `export LD_LIBRARY_PATH=''` would clear what the user's shell has."""
    for name in ("LD_LIBRARY_PATH", "CRAY_LD_LIBRARY_PATH", "HPC_MNIST_SITE"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run_verb(["launch", "--system", "frontier", "--nodes", "2", "--dry-run"], capsys)
    assert code == 0, err
    assert "export LD_LIBRARY_PATH" not in out and "srun" in out, out


def test_a_batch_larger_than_a_ranks_data_is_said(tmp_path, capsys):
    code = train.main(["--config", "configs/smoke.yaml", "log.console=plain", "train.epochs=1",
                       "train.batch_size=100000", f"log.dir={tmp_path}", "log.name=big"])
    out = capsys.readouterr().out
    assert code == 0
    assert "train.batch_size=100000 is more than this rank's" in out and "each epoch is one step of" in out, out


def test_version(capsys):
    code, out, _ = run_verb(["--version"], capsys)
    assert code == 0 and out.startswith("hpc-mnist ") and out.split()[1][0].isdigit(), out


def test_the_menu_offers_only_real_choices(capsys):
    _, out, _ = run_verb([], capsys)
    assert "check" not in out.split("data", 1)[1].splitlines()[0], out  # `data check` is no choice


@pytest.mark.parametrize("verb", ["data", "bench"])
def test_a_torchvision_that_does_not_fit_torch_is_one_line(verb, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision then fails, as a mismatched one does
    argv = {"data": ["data", "download", "--name", "kmnist", "--root", str(tmp_path)],
            "bench": [*BENCH[:-1], "--models", "mlp"]}[verb]  # with the tutorials' loop, which reads torchvision
    code, _, err = run_verb(argv, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("hpc_mnist: error: torchvision cannot be imported beside torch "), err


def test_a_launcher_with_dist_init_none_is_named(monkeypatch):
    """torchrun's two processes with dist.init=none would each train alone, racing in one run directory."""
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match=r"dist.init=none, but this process is rank 1 of 2 started by torchrun"):
        launchers.detect("none")


def test_a_live_run_is_named_live_before_any_other_advice(tmp_path, capsys):
    """Started again while the first run is still in start-up (no checkpoint yet): 'in use', never advice to
    remove the directory of a run that a process is using."""
    import fcntl
    import os

    run_dir = tmp_path / "live"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "host": "elsewhere"}))
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the running process holds it (another open file: a conflict here too)
    try:
        code = train.main(["--config", "configs/smoke.yaml", f"log.dir={tmp_path}", "log.name=live"])
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert code == 2 and "is in use by another run" in err and "remove" not in err, err
    assert rundir.read_status(run_dir)["state"] == "running"  # untouched


@pytest.mark.slow
def test_a_closed_stdout_does_not_end_the_run(tmp_path):
    """`python -m hpc_mnist.train ... | head -1`: the reader leaves after one line; the run trains on, writes
    status.json and its files, and exits 0."""
    cmd = [sys.executable, "-m", "hpc_mnist.train", "--config", "configs/smoke.yaml", "log.console=plain",
           "log.tensorboard=false", "train.epochs=2", f"log.dir={tmp_path}", "log.name=piped"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert json.loads((tmp_path / "piped" / "status.json").read_text())["state"] == "completed"
    assert (tmp_path / "piped" / "model.pt").exists()

"""Shared fixtures: a real-digits MNIST root, and helpers to run the trainer as real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hpc_mnist import train
from hpc_mnist.core.datasets import BUNDLED, read_idx, write_idx_split
from hpc_mnist.runtime import dist

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "PMI", "PALS_", "MPI_LOCAL", "OMPI_", "SLURM_", "PBS_")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
TRAIN_DIGITS = 8000  # of the 10,000 real test digits: the first 8,000 act as train, the last 2,000 as test


def write_mnist_root(root: Path, train_count: int = TRAIN_DIGITS) -> Path:
    """Write a small MNIST-layout root (MNIST/raw/*-ubyte) from the real test digits bundled with hpc_mnist,
    for unit tests that need real digits fast; the full set is the bundled copy itself (data.root unset)."""
    images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz", "images")
    labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz", "labels")
    write_idx_split(root, "train", images[:train_count], labels[:train_count])
    write_idx_split(root, "t10k", images[train_count:], labels[train_count:])
    return root


# Each lab's tests run on one xdist worker, in order (pytest -n 4, the default in pyproject.toml): each lab starts
# once per run and a test that kills one of its hosts never meets another test's jobs, while the other workers run
# the rest of the suite beside the labs' waiting jobs. The groups go by file, which is what xdist's controller
# sees (pytest 9.2 ignores the node-id suffix that --dist loadgroup relies on); collection refuses a test that
# uses a lab's fixture outside its lab's files.
LAB_FILES = {"tests/cluster/test_slurm.py": "lab", "tests/cluster/test_stops.py": "lab",
             "tests/cluster/test_launchers.py": "lab", "tests/cluster/test_pbs.py": "pbs_lab",
             "tests/cluster/test_pbs_lab.py": "pbs_lab"}


def pytest_configure(config: pytest.Config) -> None:
    """One CPU thread per process unless a test says otherwise (it then sets or clears OMP_NUM_THREADS itself):
    the workers' processes share 2 cores with the labs' ranks, and a process that takes every core spins against
    the others (an MLP epoch 10x slower, benchmarks/threads-under-load.md)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class LabScheduling(LoadScopeScheduling):
        """A lab's files are one unit of work (the largest, so they start first); every other test is its own."""

        def _split_scope(self, nodeid: str) -> str:
            return LAB_FILES.get(nodeid.split("::")[0], nodeid)

    return LabScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        lab = LAB_FILES.get(item.nodeid.split("::")[0])
        for fixture in {"lab", "pbs_lab"} & set(getattr(item, "fixturenames", ())) - {lab}:
            raise pytest.UsageError(f"{item.nodeid} uses the {fixture} fixture: list its file in LAB_FILES "
                                    "(tests/conftest.py), so that its lab's tests share one worker")


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return write_mnist_root(tmp_path_factory.mktemp("mnist"))


def free_port() -> int:
    """A port the OS has just handed out: fixed ports collided when tests ran side by side."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(*more_prefixes: str, **values: str) -> dict[str, str]:
    """This environment without launcher or scheduler variables (and `more_prefixes`), plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((*LAUNCH_VARS, *more_prefixes))}
    env.update(values)
    return env


def run_train(args: list[str], *, launcher: list[str] | None = None, program: list[str] | None = None,
              env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer (or `program`) in fresh processes under `launcher`, as a user would."""
    cmd = (launcher or [sys.executable]) + (program or ["-m", "hpc_mnist.train"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**(env or {})),
                          cwd=REPO)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(row: dict) -> dict:
    """An epoch row less what clocks measure (times, rates, per-rank timing): what two equal runs share."""
    return {k: v for k, v in row.items()
            if not (k.endswith("_s") or "_s_" in k or k.startswith("slowest_") or k == "stragglers")}


# --- training runs as real processes: shared by the resume, stop-contract and hang tests ---

# Small but not instant: a CNN epoch takes ~1-2 s here, so signals land mid-run.
BASE = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false", "train.precision=fp32",
        "data.synthetic_train=1500", "data.synthetic_test=200", "train.batch_size=32", "model.name=cnn",
        "optim.name=adam", "optim.lr=1e-3", "train.eval_batch_size=256"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def ranks(n: int) -> list[str]:
    """A launch of n ranks where the launcher is not what the test is about: MPICH's mpiexec, a small program
    that starts in milliseconds (torchrun's agent imports torch first: 2.3-2.6 s more per launch here), else
    torchrun."""
    if MPIEXEC:
        return [MPIEXEC, "-n", str(n), sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def stop_file(tmp_path: Path) -> dict[str, str]:
    """An existing stop file: the deadline has passed, so the ranks stop at their first check (step 16)."""
    path = tmp_path / "stop-now"
    path.touch()
    return {"HPC_MNIST_STOP_FILE": str(path)}


def lrs(run_dir: Path) -> list[float]:
    """Each epoch's learning rate, from metrics.jsonl."""
    return [row["lr"] for row in read_jsonl(run_dir / "metrics.jsonl")]


def metrics(run_dir: Path) -> list[dict]:
    return [without_timing(row) for row in read_jsonl(run_dir / "metrics.jsonl")]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt")


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (sa["status"], sa["test_acc"], sa["test_loss"]) == (sb["status"], sb["test_acc"], sb["test_loss"])


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def popen(args: list[str], launcher: list[str]) -> subprocess.Popen:
    env = clean_env()
    return subprocess.Popen([*launcher, "-m", "hpc_mnist.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_rows(run_dir: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows in {timeout} s")


def worker_pids(agent_pid: int) -> dict[int, int]:
    """torchrun's worker processes by rank, read from their environments."""
    found = {}
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(child)
    return found


def fake_run(root: Path, name: str, ranks: int, samples_per_s: float, epochs: list[tuple[float, float]],
             test_acc: float = 0.95, status: str = "completed") -> Path:
    """A run directory as the trainer writes it, with known numbers."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "world_size": ranks, "num_nodes": 1, "global_batch": 64 * ranks,
        "samples_per_s": samples_per_s, "test_acc": test_acc}))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "epoch_time_s": t, "val_acc": acc}) + "\n" for i, (t, acc) in enumerate(epochs)))
    return run_dir


# --- the trainer in this process (the quick tier's way to run it) ---

@dataclass
class Outcome:
    code: int
    out: str
    err: str


def as_a_user_would(m: pytest.MonkeyPatch) -> None:
    """No launcher, scheduler or HPC_MNIST_* variables from this test's environment; the repository as cwd."""
    for key in list(os.environ):
        if key.startswith((*LAUNCH_VARS, "HPC_MNIST_")):
            m.delenv(key)
    m.chdir(REPO)


@pytest.fixture
def train_here(monkeypatch, capsys):
    """Run `python -m hpc_mnist.train ARGS` in this process, optionally beside a fake peer rank (the agreement's
    all-reduce, `dist.any_rank`, replaced by `peer`: test_stop_rules.PeerRank)."""
    as_a_user_would(monkeypatch)

    def run(args: list[str], env: dict[str, str] | None = None, peer=None) -> Outcome:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            if peer:
                m.setattr(dist, "any_rank", peer)
            code = train.main(args)
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return run

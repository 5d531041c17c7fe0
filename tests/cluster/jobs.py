"""Jobs on the labs and the runs they leave: the trainer's settings there, the straight run every stop and resume
must equal bit for bit, waiting for a run's epochs, and Slurm's job script as a user edits it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster.labs import Job, Lab, SlurmLab
from helpers import commands
from helpers.processes import REPO, clean_env

PY = sys.executable
SMOKE = [*commands.SMOKE, "log.tensorboard=false"]
# The smoke MLP on more synthetic digits: 2-5 s an epoch for 4 ranks on the lab (188 steps of 10-25 ms, so
# the ranks look at stop requests every 0.2-0.4 s), so a stop lands mid-run.
SLOW = "train.batch_size=32 data.synthetic_train=30000 data.synthetic_test=256"
EPOCHS = 6  # 12-30 s of training on 4 ranks: far more than the 5 s a 2-minute job leaves with a 115 s margin


def straight_run(tmp_path_factory: pytest.TempPathFactory, *settings: str) -> Path:
    """model.pt of the uninterrupted run the labs' results must equal bit for bit: `torchrun --standalone` with 4
    ranks of one thread on this machine, the smoke config and `settings`. Made once per test run: the Slurm and
    PBS labs' workers share it (a lock file in the run's shared temporary folder)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder of every worker of this run, not of earlier runs
    folder = shared / "straight-runs"
    folder.mkdir(exist_ok=True)
    name = hashlib.sha1(" ".join(settings).encode()).hexdigest()[:12]
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / name / "model.pt").exists():
            subprocess.run([*commands.torchrun(4), "-m", "hpc_mnist.train", *SMOKE, *settings, f"log.dir={folder}",
                            f"log.name={name}"],
                           check=True, capture_output=True, timeout=600, env=clean_env(OMP_NUM_THREADS="1"), cwd=REPO)
    return folder / name / "model.pt"


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different}"


def assert_whole_checkpoint(run_dir: Path, st: dict) -> None:
    assert st["checkpoint"] and Path(st["checkpoint"]).exists(), st
    assert Path(st["checkpoint"]).parent == run_dir
    state = load_weights(Path(st["checkpoint"]))  # a torn file would not load
    assert state, st


def epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_epoch(lab: Lab, job: str, run_dir: Path, epoch: int = 1, timeout: float = 150) -> None:
    """Until the run has logged `epoch` (training is under way on every rank)."""
    deadline = time.monotonic() + timeout
    while len(epochs_logged(run_dir)) < epoch:
        now = lab.job(job)
        assert now.state in lab.ALIVE, f"job {job} is {now.state} before epoch {epoch}:\n{now.log}"
        assert time.monotonic() < deadline, f"job {job} logged no epoch {epoch} within {timeout} s"
        time.sleep(0.2)


# --- Slurm ---

def user_edited_job_script(dest: Path, nodes: int = 2, tasks_per_node: int = 2, time: str = "00:05:00",
                           name: str = "slurm.sh", source: str = "slurm.sh") -> Path:
    """jobscripts/slurm.sh (or another Slurm script, `source`) changed only where its header tells a user to:
    account, partition, nodes, tasks per node, time limit; no GPUs on the lab."""
    text = (REPO / "jobscripts" / source).read_text()
    edits = [(r"#SBATCH -A \S+", "#SBATCH -A lab"), (r"#SBATCH -p \S+", "#SBATCH -p debug"),
             (r"#SBATCH -N \d+", f"#SBATCH -N {nodes}"),
             (r"#SBATCH --ntasks-per-node=\d+", f"#SBATCH --ntasks-per-node={tasks_per_node}"),
             (r"#SBATCH --gpus-per-node=\d+\n", ""), (r"#SBATCH -t \S+", f"#SBATCH -t {time}")]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"jobscripts/{source} no longer has one line matching {pattern!r}"
    path = dest / name
    path.write_text(text)
    return path


def job_variables(work: Path, overrides: str, **more: str) -> dict[str, str]:
    """What a user exports to the Slurm job script, the trainer's `overrides` included."""
    return {"CONFIG": "configs/smoke.yaml", "PYTHON": PY, "HPC_MNIST_JOB_FILES": str(work / "jobfiles"),
            "DOCTOR": "0",  # the pre-flight check runs in the 2 x 2 job-script test only
            "OVERRIDES": f"log.console=plain train.precision=fp32 log.tensorboard=false "
                         f"log.dir={work / 'runs'} {overrides}", **more}


def segments(job: Job) -> int:
    """Trainer starts in the job's log (--open-mode=append keeps every segment)."""
    return len(re.findall(r"4 on 2 node", job.log))


def wait_gone(lab: SlurmLab, job: str, timeout: float = 60) -> None:
    """Until Slurm has finished the job's clean-up (no longer COMPLETING): the ranks are gone."""
    deadline = time.monotonic() + timeout
    while lab.run(["squeue", "-h", "-j", job, "-o", "%t"], timeout=15, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still listed after {timeout} s"
        time.sleep(0.5)


def finished(lab: SlurmLab, job: str, out: Path, timeout: float) -> Job:
    result = lab.wait(job, timeout, out)
    wait_gone(lab, job)
    return result

"""The lab cluster (tests/cluster/lab.sh) as a session fixture, and helpers to submit and watch jobs on it.

One lab per test session: brought up on first use, taken down at the end if this session started it.
Where the machine cannot host it (not root, no network namespaces, Slurm not installable) the tests skip
with the reason; with CI=true any other failure to start it fails them, so a broken harness cannot hide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from helpers.processes import REPO, clean_env
from hpc_mnist.runtime import pbs

HERE = Path(__file__).resolve().parent
LAB_SH = HERE / "lab.sh"
ONNODE = HERE / "onnode"
NETNS_SSH = HERE / "netns-ssh"
LAB_DIR = Path(os.environ.get("HM_LAB_DIR", "/tmp/hm-lab"))
PY = sys.executable
SMOKE = ["--config", "configs/smoke.yaml", "log.console=plain", "train.precision=fp32", "log.tensorboard=false"]
_counter = itertools.count()
# The smoke MLP on more synthetic digits: 2-5 s an epoch for 4 ranks on the lab (188 steps of 10-25 ms, so
# the ranks look at stop requests every 0.2-0.4 s), so a stop lands mid-run.
SLOW = "train.batch_size=32 data.synthetic_train=30000 data.synthetic_test=256"
EPOCHS = 6  # 12-30 s of training on 4 ranks: far more than the 5 s a 2-minute job leaves with a 115 s margin


@dataclass
class Job:
    """A finished (or given-up-on) batch job: its final state and its output file."""

    id: str
    state: str
    restarts: int
    exit_code: str
    out: Path
    info: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.out.read_text() if self.out.exists() else ""


@dataclass
class Lab:
    dir: Path
    hosts: list[str]
    env: dict[str, str]

    def workdir(self, name: str) -> Path:
        """A fresh folder on the lab's shared file system (the hosts' /tmp is their own)."""
        path = self.dir / "shared" / f"{os.getpid()}-{next(_counter)}-{name}"
        path.mkdir(parents=True)
        return path

    def job_env(self, **values: str) -> dict[str, str]:
        return {**self.env, **values}

    def run(self, cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
            cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or self.env, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def onnode(self, host: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return self.run([str(ONNODE), host, *cmd], **kwargs)

    def popen_onnode(self, host: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen([str(ONNODE), host, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env or self.env, cwd=REPO)

    def sbatch(self, script: Path | str, *args: str, out: Path, env: dict[str, str] | None = None) -> str:
        """Submit as a user would, from the repository (jobs start in the submit directory)."""
        cmd = ["sbatch", "--parsable", "-o", str(out), *args, str(script)]
        return self.run(cmd, timeout=30, env=env).stdout.strip().split(";")[0]

    def show(self, job: str) -> dict[str, str]:
        out = self.run(["scontrol", "-o", "show", "job", job], timeout=15, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_state(self, job: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Poll until the job is in one of `states`; cancel it and fail when that takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.show(job)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        self.run(["scancel", job], timeout=15, check=False)
        raise AssertionError(f"job {job} not {'/'.join(states)} within {timeout:.0f} s: {self.show(job)}")

    def wait(self, job: str, out: Path, timeout: float) -> Job:
        info = self.wait_state(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
                               timeout)
        return Job(job, info["JobState"], int(info.get("Restarts", 0)), info.get("ExitCode", ""), out, info)

    def submit_and_wait(self, script: Path | str, *args: str, out: Path, timeout: float,
                        env: dict[str, str] | None = None) -> Job:
        return self.wait(self.sbatch(script, *args, out=out, env=env), out, timeout)


def _shared_paths() -> str:
    """Paths under /tmp the lab hosts must see: this Python's environment and the repository (CI's
    fresh venv lives in a temporary folder)."""
    return " ".join(str(p) for p in {Path(sys.prefix), REPO} if str(p).startswith("/tmp/"))


def start_lab(script: Path, name: str, env: dict[str, str], timeout: float) -> bool:
    """`script up`; whether the lab was up already (then the session leaves it up). Where the machine cannot
    host it (exit 3), or outside CI, the tests skip with the reason; under CI=true any other failure fails."""
    already = subprocess.run([str(script), "status"], capture_output=True, text=True, env=env).returncode == 0
    started = time.monotonic()
    try:
        up = subprocess.run([str(script), "up"], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        up = subprocess.CompletedProcess([], 1, "", f"{script.name} up took more than {timeout / 60:.0f} minutes")
    if up.returncode != 0:
        reason = (up.stderr.strip().splitlines() or [f"{script.name} up failed"])[-1]
        if up.returncode == 3 or os.environ.get("CI") != "true":
            pytest.skip(f"{name} unavailable: {reason}")
        pytest.fail(f"{name} failed to start (CI=true): {up.stdout}\n{up.stderr}")
    print(f"\n{name} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return already


@pytest.fixture(scope="session")
def lab() -> Lab:
    if os.geteuid() != 0:
        pytest.skip("cluster lab needs root (network namespaces, mounts, Slurm daemons)")
    env = clean_env("HM_LAB_", SLURM_CONF=str(LAB_DIR / "slurm" / "slurm.conf"), HM_LAB_DIR=str(LAB_DIR),
                    HM_LAB_SHARED=_shared_paths(), OMP_NUM_THREADS="1",
                    PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    already = start_lab(LAB_SH, "cluster lab", env, timeout=600)
    nodes = int(os.environ.get("HM_LAB_NODES", "2"))
    yield Lab(LAB_DIR, [f"hm-n{i}" for i in range(1, nodes + 1)], env)
    if not already:
        subprocess.run([str(LAB_SH), "down"], capture_output=True, env=env, timeout=300)


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


def job_env(lab: Lab, work: Path, overrides: str, **more: str) -> dict[str, str]:
    return lab.job_env(**{"CONFIG": "configs/smoke.yaml", "PYTHON": PY, "HPC_MNIST_JOB_FILES": str(work / "jobfiles"),
                          "DOCTOR": "0",  # the pre-flight check runs in the 2 x 2 job-script test only
                          "OVERRIDES": f"log.console=plain train.precision=fp32 log.tensorboard=false "
                                       f"log.dir={work / 'runs'} {overrides}", **more})


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
            subprocess.run([str(Path(PY).parent / "torchrun"), "--standalone", "--nproc_per_node=4", "-m",
                            "hpc_mnist.train", *SMOKE, *settings, f"log.dir={folder}", f"log.name={name}"],
                           check=True, capture_output=True, timeout=600, env=clean_env(OMP_NUM_THREADS="1"), cwd=REPO)
    return folder / name / "model.pt"


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    """The straight run of the labs' stop and resume tests: SLOW, EPOCHS epochs."""
    return straight_run(tmp_path_factory, *SLOW.split(), f"train.epochs={EPOCHS}")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different}"


def epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_epoch(lab: Lab, job: str, run_dir: Path, epoch: int = 1, timeout: float = 150) -> None:
    """Until the run has logged `epoch` (training is under way on every rank)."""
    deadline = time.monotonic() + timeout
    while len(epochs_logged(run_dir)) < epoch:
        state = lab.show(job).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job} is {state} before epoch {epoch}"
        assert time.monotonic() < deadline, f"job {job} logged no epoch {epoch} within {timeout} s"
        time.sleep(0.2)


def wait_gone(lab: Lab, job: str, timeout: float = 60) -> None:
    """Until Slurm has finished the job's clean-up (no longer COMPLETING): the ranks are gone."""
    deadline = time.monotonic() + timeout
    while lab.run(["squeue", "-h", "-j", job, "-o", "%t"], timeout=15, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still listed after {timeout} s"
        time.sleep(0.5)


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def assert_whole_checkpoint(run_dir: Path, st: dict) -> None:
    assert st["checkpoint"] and Path(st["checkpoint"]).exists(), st
    assert Path(st["checkpoint"]).parent == run_dir
    state = load_weights(Path(st["checkpoint"]))  # a torn file would not load
    assert state, st


def segments(job: Job) -> int:
    """Trainer starts in the job's log (--open-mode=append keeps every segment)."""
    return len(re.findall(r"4 on 2 node", job.log))


def finished(lab: Lab, job: str, out: Path, timeout: float) -> Job:
    result = lab.wait(job, out, timeout)
    wait_gone(lab, job)
    return result


def crash(host: str) -> int:
    """A host dies: SIGKILL to every process in its network namespace at once (its slurmd or pbs_mom, the job's
    processes). Unlike a powered-off host its sockets close, so peers see resets, not silence."""
    pids = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True, check=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return len(pids)


# The PBS lab (tests/cluster/pbs_lab.sh): a real OpenPBS server on hp-head and a pbs_mom on hp-n1 and hp-n2,
# sharing this machine's whole file system. Jobs are submitted from hp-head (tests/cluster/onpbs), as root or as
# PbsLab.job_user.
PBS_LAB_SH = HERE / "pbs_lab.sh"
ONPBS = HERE / "onpbs"
PBS_TMRSH = HERE / "pbs-tmrsh"  # HYDRA_LAUNCHER=rsh HYDRA_LAUNCHER_EXEC=PBS_TMRSH: Hydra through PBS's task manager
PBS_LAB_DIR = Path(os.environ.get("HP_LAB_DIR", "/tmp/hp-lab"))
PBS_HEAD = "hp-head"
PBS_JOB_USER = os.environ.get("HP_LAB_USER", "hpuser")


@dataclass
class PbsLab:
    """The PBS lab. Jobs run as `user`, the ordinary account pbs_lab.sh up creates, as users' jobs do: pbs_mom
    does not track root-owned processes, so a root job's qdel, qsig and walltime kills reach only the top
    shell's process group and the job ends as soon as that group is gone, leaving the rest running."""

    dir: Path
    hosts: list[str]
    env: dict[str, str]
    user: str = PBS_JOB_USER

    def workdir(self, name: str) -> Path:
        """A fresh folder for a test's files, writable by any job user (every host sees the whole file system)."""
        path = self.dir / "shared" / f"{os.getpid()}-{next(_counter)}-{name}"
        path.mkdir(parents=True)
        path.chmod(0o777)
        return path

    def run(self, cmd: list[str], *, host: str = PBS_HEAD, timeout: float = 30, cwd: Path = REPO,
            check: bool = True) -> subprocess.CompletedProcess:
        """`cmd` on a lab host (PBS's commands first on PATH)."""
        full = [str(ONPBS), host, *cmd]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(full)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def qsub(self, script: Path | str, *qsub_args: str, variables: dict[str, str] | None = None,
             cwd: Path = REPO, user: str | None = None) -> str:
        """Submit from hp-head in `cwd` (the job's PBS_O_WORKDIR; the job starts in $HOME, as PBS jobs do) as
        `user` (default self.user); `variables` go to the job with -v. Returns the job id (`12.hp-head`)."""
        user = user or self.user
        args = ["-v", pbs.variable_list(variables)] if variables else []
        as_user = [] if user == "root" else ["runuser", "-u", user, "--"]
        return self.run([*as_user, "qsub", *args, *qsub_args, str(script)], cwd=cwd).stdout.strip()

    def info(self, job: str) -> dict:
        """`qstat -x -f -F json JOB`: the job's attributes (job_state, Exit_status, exec_host, ...)."""
        out = self.run(["qstat", "-x", "-f", "-F", "json", job]).stdout
        return json.loads(out)["Jobs"][job]

    def wait(self, job: str, timeout: float) -> dict:
        """Until the job has finished (job_state F); qdel it and fail when that takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info(job)
            if info.get("job_state") == "F":
                return info
            time.sleep(0.5)
        self.qdel(job, check=False)
        raise AssertionError(f"job {job} not finished within {timeout:.0f} s: {json.dumps(self.info(job), indent=1)}")

    def qdel(self, job: str, *args: str, check: bool = True) -> None:
        self.run(["qdel", *args, job], check=check)

    def qsig(self, job: str, sig: str) -> None:
        self.run(["qsig", "-s", sig, job])

    def qrerun(self, job: str) -> None:
        self.run(["qrerun", job])


def _reachable_by(user: str, env: dict[str, str]) -> str:
    """Let the job user reach this Python, its environment and the repository (only the folders' search bit for
    others is added: pyenv's Python lives under /root, mode 700, and CI's venv in a mktemp -d folder, mode 700);
    returns what still fails, or ''."""
    for path in {Path(os.path.realpath(PY)), Path(sys.prefix), REPO}:
        for folder in [*reversed(path.parents), path]:
            if folder.is_dir() and not folder.stat().st_mode & 0o001:
                folder.chmod(folder.stat().st_mode | 0o001)
    probe = subprocess.run(["runuser", "-u", user, "--", PY, "-c", "import torch, hpc_mnist"], capture_output=True,
                           text=True, env=env, cwd="/", timeout=120)
    return "" if probe.returncode == 0 else f"job user {user} cannot run {PY}: {probe.stderr.strip()[-300:]}"


@pytest.fixture(scope="session")
def pbs_lab() -> PbsLab:
    if os.geteuid() != 0:
        pytest.skip("PBS lab needs root (network namespaces, PBS daemons)")
    env = clean_env("HP_LAB_", HP_LAB_DIR=str(PBS_LAB_DIR), HP_LAB_USER=PBS_JOB_USER, OMP_NUM_THREADS="1",
                    PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    already = start_lab(PBS_LAB_SH, "PBS lab", env, timeout=900)  # a fresh machine builds OpenPBS first (~5 min)
    reachable = _reachable_by(PBS_JOB_USER, env)
    if reachable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PBS lab: {reachable}")
        pytest.skip(f"PBS lab: {reachable}")
    yield PbsLab(PBS_LAB_DIR, ["hp-n1", "hp-n2"], env)
    if not already:
        subprocess.run([str(PBS_LAB_SH), "down"], capture_output=True, env=env, timeout=300)

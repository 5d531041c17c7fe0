"""The two lab clusters behind one interface: a real Slurm (lab.sh) and a real OpenPBS (pbs_lab.sh) on network-
namespace hosts of this machine. A test starts, submits, waits, signals, cancels, requeues and kills hosts with
the same calls on either; what only one scheduler has stays in that lab's class."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from helpers.processes import REPO
from hpc_mnist.runtime import pbs

HERE = Path(__file__).resolve().parent
NETNS_SSH = HERE / "netns-ssh"  # an ssh stand-in for launchers that reach other hosts by ssh (MPICH Hydra)
PBS_TMRSH = HERE / "pbs-tmrsh"  # HYDRA_LAUNCHER=rsh HYDRA_LAUNCHER_EXEC=PBS_TMRSH: Hydra through PBS's task manager
_counter = itertools.count()


@dataclass
class Job:
    """A batch job as its scheduler records it (finished, given up on, or still going) and its output file."""

    id: str
    state: str  # Slurm's JobState (COMPLETED, ...); PBS's job_state (F once finished)
    restarts: int  # Slurm's Restarts; PBS's run_count less the first run
    exit_code: str  # Slurm's ExitCode ("3:0": status and signal); PBS's Exit_status
    out: Path
    info: dict = field(default_factory=dict)  # everything the scheduler said (scontrol show job, qstat -f)

    @property
    def log(self) -> str:
        return self.out.read_text() if self.out.is_file() else ""


def _checked(cmd: list[str], *, timeout: float, env: dict[str, str], check: bool) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Lab(ABC):
    """A lab cluster as its tests use it. `env` is the environment its commands and jobs start from (this
    machine's, less launcher and scheduler variables, plus the lab's settings); `variables` add to it."""

    dir: Path
    hosts: list[str]
    env: dict[str, str]

    NAME: ClassVar[str]
    SCRIPT: ClassVar[Path]  # up, down, status
    ON_HOST: ClassVar[Path]  # ON_HOST HOST COMMAND...: COMMAND on that host
    ALIVE: ClassVar[tuple[str, ...]]  # the states of a job that may still train
    ENDED: ClassVar[tuple[str, ...]]  # the states of a job that has ended

    def up(self, timeout: float) -> bool:
        """`SCRIPT up`; whether the lab was up already (then the session leaves it up). Where the machine cannot
        host it (exit 3), or outside CI, the tests skip with the reason; under CI=true any other failure fails."""
        script, env = str(self.SCRIPT), self.env
        already = subprocess.run([script, "status"], capture_output=True, text=True, env=env).returncode == 0
        started = time.monotonic()
        try:
            up = subprocess.run([script, "up"], capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            up = subprocess.CompletedProcess([], 1, "", f"{self.SCRIPT.name} up took more than {timeout / 60:.0f} "
                                                        "minutes")
        if up.returncode != 0:
            reason = (up.stderr.strip().splitlines() or [f"{self.SCRIPT.name} up failed"])[-1]
            if up.returncode == 3 or os.environ.get("CI") != "true":
                pytest.skip(f"{self.NAME} unavailable: {reason}")
            pytest.fail(f"{self.NAME} failed to start (CI=true): {up.stdout}\n{up.stderr}")
        print(f"\n{self.NAME} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return already

    def down(self) -> None:
        subprocess.run([str(self.SCRIPT), "down"], capture_output=True, env=self.env, timeout=300)

    def workdir(self, name: str) -> Path:
        """A fresh folder on the lab's shared file system (what every host sees alike)."""
        path = self.dir / "shared" / f"{os.getpid()}-{next(_counter)}-{name}"
        path.mkdir(parents=True)
        return path

    @abstractmethod
    def run(self, cmd: list[str], *, timeout: float = 30, check: bool = True,
            variables: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`cmd` where users type the scheduler's commands, from the repository; fails the test if it fails
        (unless check=False)."""

    def on_host(self, host: str, cmd: list[str], *, timeout: float = 30, check: bool = True,
                variables: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`cmd` on one of the lab's hosts, from the repository."""
        return _checked([str(self.ON_HOST), host, *cmd], timeout=timeout, env={**self.env, **(variables or {})},
                        check=check)

    def popen_on_host(self, host: str, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen([str(self.ON_HOST), host, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.env, cwd=REPO)

    @abstractmethod
    def submit(self, script: Path | str, *args: str, out: Path, variables: dict[str, str] | None = None) -> str:
        """Submit as a user would, from the repository, the job's output to `out`, `variables` set for the job;
        the job's id."""

    @abstractmethod
    def info(self, job: str) -> dict:
        """The scheduler's record of the job (scontrol show job, qstat -f)."""

    @abstractmethod
    def job(self, job: str, out: Path | None = None) -> Job:
        """The job as its scheduler records it now; its output in `out` where the record does not say."""

    def state(self, job: str) -> str:
        return self.job(job).state

    def wait(self, job: str, timeout: float, out: Path | None = None) -> Job:
        """Until the job has ended; cancel it and fail when that takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.job(job, out)
            if now.state in self.ENDED:
                return now
            time.sleep(0.5)
        self.cancel(job, check=False)
        raise AssertionError(f"job {job} not ended ({'/'.join(self.ENDED)}) within {timeout:.0f} s: "
                             f"{json.dumps(self.info(job), indent=1)}")

    def submit_and_wait(self, script: Path | str, *args: str, out: Path, timeout: float,
                        variables: dict[str, str] | None = None) -> Job:
        return self.wait(self.submit(script, *args, out=out, variables=variables), timeout, out)

    @abstractmethod
    def cancel(self, job: str, check: bool = True) -> None:
        """A user's cancel: scancel, qdel."""

    @abstractmethod
    def send_signal(self, job: str, sig: str) -> None:
        """A signal to the job, the scheduler's way: scancel --signal (every step's tasks), qsig (the job's top
        processes)."""

    @abstractmethod
    def requeue(self, job: str) -> None:
        """The job ended and started again under the same id: scontrol requeue, qrerun."""

    @abstractmethod
    def revive(self, host: str) -> None:
        """A host that died is back: its scheduler daemon starts again."""

    def crash(self, host: str) -> int:
        """A host dies: SIGKILL to every process in its network namespace at once (its slurmd or pbs_mom, the
        job's processes). Unlike a powered-off host its sockets close, so peers see resets, not silence."""
        pids = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True, check=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        return len(pids)


@dataclass
class SlurmLab(Lab):
    """The Slurm lab (lab.sh): slurmctld on hm-head, a slurmd on each of hm-n1 .. hm-nN. Its commands run on
    this machine with the lab's SLURM_CONF; jobs run as root and start in the submit directory."""

    NAME = "cluster lab"
    SCRIPT = HERE / "lab.sh"
    ON_HOST = HERE / "onnode"
    ALIVE = ("PENDING", "RUNNING", "CONFIGURING")
    ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

    def run(self, cmd: list[str], *, timeout: float = 30, check: bool = True,
            variables: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return _checked(cmd, timeout=timeout, env={**self.env, **(variables or {})}, check=check)

    def submit(self, script: Path | str, *args: str, out: Path, variables: dict[str, str] | None = None) -> str:
        """sbatch: the job gets the submitting environment, so `variables` go with it."""
        cmd = ["sbatch", "--parsable", "-o", str(out), *args, str(script)]
        return self.run(cmd, timeout=30, variables=variables).stdout.strip().split(";")[0]

    def info(self, job: str) -> dict[str, str]:
        out = self.run(["scontrol", "-o", "show", "job", job], timeout=15, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def job(self, job: str, out: Path | None = None) -> Job:
        info = self.info(job)
        return Job(job, info.get("JobState", ""), int(info.get("Restarts", 0)), info.get("ExitCode", ""),
                   out or Path(info.get("StdOut", "")), info)

    def cancel(self, job: str, check: bool = True) -> None:
        self.run(["scancel", job], timeout=15, check=check)

    def send_signal(self, job: str, sig: str) -> None:
        self.run(["scancel", f"--signal={sig}", job], timeout=15)

    def requeue(self, job: str) -> None:
        self.run(["scontrol", "requeue", job], timeout=15)

    def revive(self, host: str) -> None:
        self.on_host(host, ["slurmd", "-f", self.env["SLURM_CONF"], "-N", host], timeout=30)


PBS_HEAD = "hp-head"
PBS_JOB_USER = os.environ.get("HP_LAB_USER", "hpuser")


@dataclass
class PbsLab(Lab):
    """The PBS lab (pbs_lab.sh): a real OpenPBS server on hp-head and a pbs_mom on each of hp-n1 .. hp-nN, sharing this
    machine's whole file system. Its commands run on hp-head (onpbs). Jobs run as `user`, the ordinary account
    pbs_lab.sh up creates, as users' jobs do: pbs_mom does not track root-owned processes, so a root job's
    qdel, qsig and walltime kills reach only the top shell's process group and the job ends as soon as that
    group is gone, leaving the rest running."""

    user: str = PBS_JOB_USER

    NAME = "PBS lab"
    SCRIPT = HERE / "pbs_lab.sh"
    ON_HOST = HERE / "onpbs"  # PBS's commands first on PATH
    ALIVE = ("Q", "R", "E", "H")
    ENDED = ("F",)

    def workdir(self, name: str) -> Path:
        """A fresh folder for a test's files, writable by any job user (every host sees the whole file system)."""
        path = super().workdir(name)
        path.chmod(0o777)
        return path

    def run(self, cmd: list[str], *, timeout: float = 30, check: bool = True,
            variables: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.on_host(PBS_HEAD, cmd, timeout=timeout, check=check, variables=variables)

    def submit(self, script: Path | str, *args: str, out: Path, variables: dict[str, str] | None = None) -> str:
        """qsub from hp-head in the repository (the job's PBS_O_WORKDIR; the job starts in $HOME, as PBS jobs
        do) as `user`; `variables` go to the job with -v. The job id: `12.hp-head`."""
        as_user = [] if self.user == "root" else ["runuser", "-u", self.user, "--"]
        passed = ["-v", pbs.variable_list(variables)] if variables else []
        return self.run([*as_user, "qsub", *passed, "-o", str(out), *args, str(script)]).stdout.strip()

    def info(self, job: str) -> dict:
        """`qstat -x -f -F json JOB`: the job's attributes (job_state, Exit_status, exec_host, ...)."""
        return json.loads(self.run(["qstat", "-x", "-f", "-F", "json", job]).stdout)["Jobs"][job]

    def job(self, job: str, out: Path | None = None) -> Job:
        info = self.info(job)
        return Job(job, info.get("job_state", ""), max(int(info.get("run_count", 0)) - 1, 0),
                   str(info.get("Exit_status", "")), out or Path(info.get("Output_Path", ":").split(":", 1)[1]), info)

    def cancel(self, job: str, check: bool = True) -> None:
        self.run(["qdel", job], check=check)

    def send_signal(self, job: str, sig: str) -> None:
        self.run(["qsig", "-s", sig, job])

    def requeue(self, job: str) -> None:
        self.run(["qrerun", job])

    def revive(self, host: str) -> None:
        self.on_host(host, ["pbs_mom"])  # onpbs puts /opt/pbs/sbin on PATH

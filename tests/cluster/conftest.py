"""The lab clusters (tests/cluster/lab.sh, pbs_lab.sh) as session fixtures, and the straight run their stop and
resume tests compare with.

One lab of each kind per test session: brought up on first use, taken down at the end if this session started
it. Where the machine cannot host it (not root, no network namespaces, Slurm not installable) the tests skip
with the reason; with CI=true any other failure to start it fails them, so a broken harness cannot hide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.jobs import EPOCHS, PY, SLOW, straight_run
from cluster.labs import PBS_JOB_USER, PbsLab, SlurmLab
from helpers.processes import REPO, clean_env

LAB_DIR = Path(os.environ.get("HM_LAB_DIR", "/tmp/hm-lab"))
PBS_LAB_DIR = Path(os.environ.get("HP_LAB_DIR", "/tmp/hp-lab"))
# Hosts and link speed (lab.sh, pbs_lab.sh): 3 hosts, unshaped links unless the environment says otherwise.
LAB_NODES = int(os.environ.get("HM_LAB_NODES") or 3)
PBS_LAB_NODES = int(os.environ.get("HP_LAB_NODES") or 3)


def _shared_paths() -> str:
    """Paths under /tmp the lab hosts must see: this Python's environment and the repository (CI's
    fresh venv lives in a temporary folder)."""
    return " ".join(str(p) for p in {Path(sys.prefix), REPO} if str(p).startswith("/tmp/"))


@pytest.fixture(scope="session")
def lab() -> SlurmLab:
    if os.geteuid() != 0:
        pytest.skip("cluster lab needs root (network namespaces, mounts, Slurm daemons)")
    env = clean_env("HM_LAB_", SLURM_CONF=str(LAB_DIR / "slurm" / "slurm.conf"), HM_LAB_DIR=str(LAB_DIR),
                    HM_LAB_SHARED=_shared_paths(), HM_LAB_NODES=str(LAB_NODES),
                    HM_LAB_LINK=os.environ.get("HM_LAB_LINK", ""), OMP_NUM_THREADS="1",
                    PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    slurm = SlurmLab(LAB_DIR, [f"hm-n{i}" for i in range(1, LAB_NODES + 1)], env)
    already = slurm.up(timeout=600)
    yield slurm
    if not already:
        slurm.down()


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
    env = clean_env("HP_LAB_", HP_LAB_DIR=str(PBS_LAB_DIR), HP_LAB_USER=PBS_JOB_USER,
                    HP_LAB_NODES=str(PBS_LAB_NODES), HP_LAB_LINK=os.environ.get("HP_LAB_LINK", ""), OMP_NUM_THREADS="1",
                    PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    pbs = PbsLab(PBS_LAB_DIR, [f"hp-n{i}" for i in range(1, PBS_LAB_NODES + 1)], env)
    already = pbs.up(timeout=900)  # a fresh machine builds OpenPBS first (~5 min)
    reachable = _reachable_by(PBS_JOB_USER, env)
    if reachable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PBS lab: {reachable}")
        pytest.skip(f"PBS lab: {reachable}")
    yield pbs
    if not already:
        pbs.down()


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    """The straight run of the labs' stop and resume tests: SLOW, EPOCHS epochs."""
    return straight_run(tmp_path_factory, *SLOW.split(), f"train.epochs={EPOCHS}")

"""The package as users install it: a non-editable wheel carries MNIST, the sites' settings, the presets and the
job scripts, and the one `hpc-mnist` command finds them from any folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers.processes import REPO, clean_env
from hpc_mnist import cli, resources
from hpc_mnist.core import datasets as data


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from the repository's files and installed (`pip install --target`) into a folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "hpc_mnist", *resources.FOLDERS],
                           capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    for name in files:
        (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp / "src" / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp / "dist"), str(tmp / "src")], capture_output=True, text=True, timeout=300)
    # setuptools warns of what it will stop building (the table form of `license` from 2027-02-18)
    assert build.returncode == 0 and "Warning" not in build.stdout + build.stderr, build.stdout + build.stderr
    wheel = next((tmp / "dist").glob("hpc_mnist-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT AND CC-BY-SA-3.0" in metadata  # the code's licence and the bundled MNIST's
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    (tmp / "elsewhere").mkdir()
    return tmp / "site"


def run_installed(site: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m hpc_mnist ARGS` (what the hpc-mnist script runs) with only the installed package importable,
    from a folder that is not a project folder."""
    return subprocess.run([sys.executable, "-m", "hpc_mnist", *args], capture_output=True, text=True, timeout=120,
                          cwd=site.parent / "elsewhere", env=clean_env("PBS_", "SLURM_", PYTHONPATH=str(site)))


@pytest.mark.slow
def test_the_wheel_carries_mnist_and_reads_it_from_its_own_folder(installed):
    out = subprocess.run([sys.executable, "-c", "from hpc_mnist.core import datasets; print(datasets.BUNDLED); "
                          "print(len(datasets.read_idx(datasets.BUNDLED / 't10k-labels-idx1-ubyte.gz', 'labels')))"],
                         capture_output=True, text=True, cwd=installed.parent / "elsewhere", check=True,
                         env=clean_env(PYTHONPATH=str(installed))).stdout.split()
    assert out == [str(installed / "hpc_mnist" / "mnist"), "10000"]
    assert {p.name for p in (installed / "hpc_mnist" / "mnist").glob("*.gz")} == {f"{n}.gz" for n in data.BUNDLED_MD5}
    assert (installed / "hpc_mnist" / "mnist" / "README.md").exists()


@pytest.mark.slow
def test_an_installed_package_launches_with_its_sites_settings(installed):
    """Found by a review: the launcher looked for launch/ beside the package, which a wheel did not have, and
    printed a Polaris line without modules or NCCL settings through an affinity wrapper that did not exist."""
    out = run_installed(installed, "launch", "--system", "polaris", "--dry-run", "--", "python", "-m",
                        "hpc_mnist.train")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    site = installed / "hpc_mnist" / "project" / "launch"
    assert lines[0].startswith(f"# system polaris, 1 node(s) x 4 rank(s); site settings {site / 'polaris.sh'}")
    assert "module load conda" in lines and "export NCCL_NET='AWS Libfabric'" in lines, out.stdout
    wrapper = Path(lines[-1].split()[lines[-1].split().index("python") - 1])
    assert wrapper == site / "gpu_affinity_polaris.sh" and os.access(wrapper, os.X_OK)


@pytest.mark.slow
def test_init_writes_a_project_folder_once(installed, tmp_path):
    out = run_installed(installed, "init", str(tmp_path / "proj"))
    assert out.returncode == 0 and "wrote " in out.stdout, out.stderr
    for name in resources.FOLDERS:
        shipped = sorted(p.relative_to(REPO / name) for p in (REPO / name).rglob("*") if p.is_file())
        written = sorted(p.relative_to(tmp_path / "proj" / name) for p in (tmp_path / "proj" / name).rglob("*")
                         if p.is_file())
        assert shipped and written == shipped, name
    assert os.access(tmp_path / "proj" / "launch" / "gpu_affinity_polaris.sh", os.X_OK)
    (tmp_path / "proj" / "launch" / "polaris.sh").write_text("export HPC_MNIST_SITE=polaris EDITED=1\n")
    again = run_installed(installed, "init", str(tmp_path / "proj"))
    assert again.returncode == 2 and again.stderr == f"hpc_mnist: error: {tmp_path / 'proj' / 'launch'} exists " \
        "already: choose an empty folder (nothing was copied)\n"
    assert (tmp_path / "proj" / "launch" / "polaris.sh").read_text().endswith("EDITED=1\n")  # nothing overwritten
    # From the project folder the launcher previews the user's edited settings, the ones its job scripts source.
    edited = subprocess.run([sys.executable, "-m", "hpc_mnist", "launch", "--system", "polaris", "--dry-run"],
                            capture_output=True, text=True, cwd=tmp_path / "proj",
                            env=clean_env("PBS_", "SLURM_", PYTHONPATH=str(installed)), timeout=120)
    assert "export EDITED=1" in edited.stdout and "module load conda" not in edited.stdout, edited.stdout


@pytest.mark.slow
def test_presets_are_found_by_their_usual_path_from_any_folder(installed):
    """`--config configs/smoke.yaml` where there is no configs/ folder: the package's own preset."""
    out = run_installed(installed, "train", "--config", "configs/smoke.yaml", "train.epochs=1", "log.dir=runs")
    assert out.returncode == 0, out.stderr
    config = (installed.parent / "elsewhere" / "runs" / "smoke" / "config.yaml").read_text()
    assert "synthetic_train: 2000" in config


def test_one_command_lists_its_verbs_and_refuses_others_in_one_line(capsys):
    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {verb} " in listing for verb in cli.VERBS)
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err == (f"hpc_mnist: error: unknown verb 'trian': choose one of "
                                       f"{', '.join(cli.VERBS)}\n")

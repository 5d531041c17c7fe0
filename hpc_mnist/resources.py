"""The project's folders that are not Python: site settings (`launch/`), presets (`configs/`), job scripts.

A checkout has them at its top level, where users and job scripts look; a wheel carries the same folders as
package data under `hpc_mnist/project/` (pyproject.toml maps them, so the repository holds one copy). The
launcher takes site settings from the current folder when it is a project folder (a checkout, or a copy that
`hpc-mnist init` wrote and the user edited), so that what `--dry-run` shows is what the job scripts source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hpc_mnist.errors import UserError

FOLDERS = ("launch", "configs", "jobscripts")


def folder(name: str) -> Path:
    """The package's own copy of a project folder: inside an installed package, else in the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "project" / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise UserError(f"this installation of hpc_mnist has no {name}/ folder (looked in {here / 'project'} and "
                    f"{here.parent}): reinstall it")


def site_folder() -> Path:
    """Site settings: ./launch when the current folder is a project folder (it has launch/jobs.sh), else ours."""
    own = Path("launch")
    return own.resolve() if (own / "jobs.sh").is_file() else folder("launch")


def write_project(target: Path) -> list[Path]:
    """Copy the job scripts, site settings and presets into `target` to edit and submit from; never overwrite."""
    existing = [target / name for name in FOLDERS if (target / name).exists()]
    if existing:
        raise UserError(f"{existing[0]} exists already: choose an empty folder (nothing was copied)")
    for name in FOLDERS:
        shutil.copytree(folder(name), target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return [target / name for name in FOLDERS]

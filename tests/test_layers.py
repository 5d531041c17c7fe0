"""The package's folders are its layers, and each imports only those below it (README, "Reading the code").

    base      errors.py, resources.py                       imports nothing of the package but base
    core      config, datasets, models, optim, precision...  base
    runtime   process groups, signals, run directory...     base, core
    perf      the performance models                        base, core
    training  Trainer, RunController, checkpoints           base, core, runtime
    commands  train.py, launch.py, doctor/, ...             any layer, never another command

cli.py (the `hpc-mnist` verbs) names the commands as strings and imports them when a verb runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpc_mnist"
BASE = {"errors", "resources"}
LAYERS = {"core": {"core"}, "runtime": {"core", "runtime"}, "perf": {"core", "perf"},
          "training": {"core", "runtime", "training"}}
NOT_CODE = {"mnist", "sweeps", "project"}  # data folders


def unit(module: str) -> str:
    """The layer or command a dotted module name belongs to: 'hpc_mnist.core.config' -> 'core',
    'hpc_mnist.doctor.checks' -> 'doctor', 'hpc_mnist.errors' -> 'base'."""
    parts = module.split(".")
    if len(parts) < 2:
        return "package"
    return "base" if parts[1] in BASE else parts[1]


def imported(module: str, source: str) -> set[str]:
    """Every hpc_mnist module `source` imports, at any depth (imports inside functions count too)."""
    package = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hpc_mnist")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                base = ".".join(package[:len(package) - node.level] + ([base] if base else []))
            if base.startswith("hpc_mnist"):
                found |= {f"{base}.{a.name}" for a in node.names} if base == "hpc_mnist" else {base}
    return found


def allowed(importer: str, target: str) -> bool:
    """Whether a module of unit `importer` may import one of unit `target`."""
    if target == importer or target == "base":
        return True
    if importer == "base":
        return False
    if importer in LAYERS:
        return target in LAYERS[importer]
    if importer in ("cli", "__main__"):
        return target == "cli"
    return target in LAYERS  # a command: every layer, no other command


def violations(sources: dict[str, str]) -> list[str]:
    """'importer -> imported' for every import that goes the wrong way, from {module name: source}."""
    wrong = []
    for module, source in sources.items():
        for target in sorted(imported(module, source)):
            if not allowed(unit(module), unit(target)):
                wrong.append(f"{module} imports {target} ({unit(module)} -> {unit(target)})")
    return wrong


def package_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        if NOT_CODE & set(relative.parts):
            continue
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        sources[name] = path.read_text()
    return sources


def test_every_import_goes_down_the_layers():
    sources = package_sources()
    assert {"hpc_mnist.core.config", "hpc_mnist.training.trainer", "hpc_mnist.train"} <= set(sources)
    assert violations(sources) == []


@pytest.mark.parametrize(("module", "line"), [
    ("hpc_mnist.core.models", "from hpc_mnist.training.trainer import Trainer"),
    ("hpc_mnist.core.config", "from hpc_mnist.runtime import dist"),
    ("hpc_mnist.runtime.rundir", "import hpc_mnist.training.controller"),
    ("hpc_mnist.runtime.dist", "from hpc_mnist.perf import step"),
    ("hpc_mnist.perf.step", "from hpc_mnist.runtime import dist"),
    ("hpc_mnist.training.trainer", "from hpc_mnist import train"),
    ("hpc_mnist.errors", "from hpc_mnist.core import config"),
    ("hpc_mnist.scaling", "from hpc_mnist import launch"),
    ("hpc_mnist.comm", "from hpc_mnist.model import markdown"),
])
def test_a_wrong_way_import_is_caught(module, line):
    """The check would fail on each of these, placed inside a function as well as at the top."""
    sources = package_sources()
    own = sources.get(module, "")
    for placed in (f"{line}\n{own}", f"{own}\n\ndef _late():\n    {line}\n"):
        assert violations({**sources, module: placed}) != [], placed


def test_relative_imports_are_resolved():
    assert imported("hpc_mnist.doctor.checks", "from . import probe\nfrom ..runtime import dist") == {
        "hpc_mnist.doctor", "hpc_mnist.runtime"}
    assert imported("hpc_mnist.core.models", "from .config import ModelConfig") == {"hpc_mnist.core.config"}

"""How long a fault takes to stop every rank, and what it costs: the figures in the README's fault table.

    python benchmarks/fault_times.py [--json benchmarks/fault-times-DATE.json]

Real processes on this machine (2 ranks, gloo, a small CNN on synthetic data): kill -9 of one rank under
torchrun and under MPICH's mpiexec (with -disable-auto-cleanup, so the survivors live on), timed from the kill
to the survivor's line and to the launcher's exit; SIGSTOP of one rank (quiet: torchrun's rank 1, mpiexec's
rank 0, which holds the store), timed to the line, the launcher's exit and every process gone; one rank stuck
in its own work while its process answers (the tests' stall hook), timed the same way from its first step; a non-finite
loss on one rank, counted in steps from the fault to the stop. `--only quiet` measures one kind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc_mnist.runtime.peers import process_exists

REPO = Path(__file__).resolve().parents[1]
OURS = re.compile(r"(\[rank \d+ \S+\] )?hpc_mnist: error")  # a rank other than 0 labels its lines
ARGS = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false", "model.name=cnn",
        "model.channels=[8,16]", "model.fc=32", "data.synthetic_train=1500", "train.batch_size=32",
        "train.epochs=200"]


def _wait_rows(run_dir: Path, rows: int, proc: subprocess.Popen) -> None:
    path = run_dir / "metrics.jsonl"
    while not (path.exists() and len(path.read_text().splitlines()) >= rows):
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)


def _launched(launcher: list[str], tmp: Path, **env: str) -> subprocess.Popen:
    """The 2-rank run `r` under `launcher`, in `tmp`, with `env` added (the tests' fault hooks)."""
    return subprocess.Popen([*launcher, sys.executable, "-m", "hpc_mnist.train", *ARGS, f"log.dir={tmp}",
                             "log.name=r"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _started(launcher: list[str], tmp: Path, epochs: int) -> tuple[subprocess.Popen, list[int]]:
    """The 2-rank run under `launcher`, once it has logged `epochs` epochs; its ranks' pids."""
    proc = _launched(launcher, tmp)
    _wait_rows(tmp / "r", epochs, proc)
    return proc, json.loads((tmp / "r" / "ranks.json").read_text())["pids"]


def _named_and_gone(proc: subprocess.Popen, run_dir: Path, fault: float) -> dict:
    """Seconds from `fault` (time.monotonic) to the reporter's line, to the launcher's exit and until every
    rank's process is gone; what status.json then says."""
    line_s = _first_line_after(proc, fault)
    exit_s = time.monotonic() - fault
    pids = json.loads((run_dir / "ranks.json").read_text())["pids"]
    while any(process_exists(pid) for pid in pids) and time.monotonic() - fault < 300:
        time.sleep(0.1)
    status = json.loads((run_dir / "status.json").read_text())
    return {"line_s": line_s, "exit_s": exit_s, "all_gone_s": time.monotonic() - fault, "status": status["state"],
            "reason": status["reason"], "quiet_ranks": status.get("quiet_ranks"), "where": status.get("where")}


def _first_line_after(proc: subprocess.Popen, fault: float) -> float | None:
    """Seconds from `fault` to the first of hpc_mnist's error lines; returns when the launcher has exited."""
    line_s = None
    for line in proc.stderr:
        if OURS.match(line) and line_s is None:
            line_s = time.monotonic() - fault
    proc.wait()
    return line_s


def kill_one(launcher: list[str], tmp: Path) -> dict:
    """kill -9 of rank 1 after two epochs; seconds to the survivor's line and to the launcher's exit."""
    run_dir = tmp / "r"
    proc, pids = _started(launcher, tmp, epochs=2)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    line_s = _first_line_after(proc, killed)
    status = json.loads((run_dir / "status.json").read_text())
    return {"line_s": line_s, "exit_s": time.monotonic() - killed, "status": status["state"],
            "reason": status["reason"], "epochs_lost": status["epochs_done"] - int(Path(status["checkpoint"])
                                                                                 .name.split("-")[1])}


def freeze_one(launcher: list[str], tmp: Path, victim: int) -> dict:
    """SIGSTOP of one rank after an epoch (a frozen process: its sockets stay open), default dist.quiet_after;
    seconds to the reporter's line, to the launcher's exit and until every rank's process is gone."""
    proc, pids = _started(launcher, tmp, epochs=1)
    frozen = time.monotonic()
    os.kill(pids[victim], signal.SIGSTOP)
    return _named_and_gone(proc, tmp / "r", frozen)


def stuck_one(launcher: list[str], tmp: Path) -> dict:
    """Rank 1's main thread hung at step 15 of the first epoch (the tests' stall, as a hung kernel would), its
    process and its watch still answering; default settings. Seconds from the launch's first step (the hang
    follows within a fraction of a second) to the reporter's line, the launcher's exit and every process gone."""
    run_dir = tmp / "r"
    proc = _launched(launcher, tmp, HPC_MNIST_TEST_STALL="1:15")
    first = None
    while first is None and proc.poll() is None:
        try:
            first = json.loads((run_dir / "status.json").read_text()).get("first_step_at")
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return _named_and_gone(proc, run_dir, time.monotonic() - (time.time() - first))


def non_finite(tmp: Path, step: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPC_MNIST_TEST_NAN": f"1:2:{step}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "hpc_mnist.train", *ARGS, "train.epochs=3", f"log.dir={tmp}", "log.name=n"]
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    status = json.loads((tmp / "n" / "status.json").read_text())
    return {"fault_step": step, "reported_step": status["at_step"], "rank": status["rank"],
            "kept": Path(status["checkpoint"]).name}


def _seconds(runs: list[dict], key: str) -> str:
    return ", ".join(f"{r[key]:.2f}" for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--only", choices=("kill", "quiet", "stuck", "non-finite"), action="append",
                   help="measure only these faults (repeatable; default: all)")
    p.add_argument("--launcher", choices=("torchrun", "mpiexec"), action="append",
                   help="only under these launchers (repeatable; default: both)")
    args = p.parse_args()
    only = set(args.only or ("kill", "quiet", "stuck", "non-finite"))
    launchers = set(args.launcher or ("torchrun", "mpiexec"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python"]
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher in [("torchrun", torchrun), ("mpiexec", [mpiexec, "-disable-auto-cleanup", "-n", "2"])]:
            if launcher[0] is None or "kill" not in only or name not in launchers:
                continue
            runs = [kill_one(launcher, Path(tmp) / f"{name}{i}") for i in range(3)]
            results[f"kill -9 rank 1 under {name}"] = runs
            print(f"kill -9 of rank 1 under {name}: survivor's line after {_seconds(runs, 'line_s')} s; launcher "
                  f"exited after {_seconds(runs, 'exit_s')} s; status {runs[0]['status']} ({runs[0]['reason']}); "
                  f"epochs trained since the newest checkpoint: {', '.join(str(r['epochs_lost']) for r in runs)}")
        for name, launcher, victim in [("torchrun", torchrun, 1), ("mpiexec", [mpiexec, "-n", "2"], 0)]:
            if launcher[0] is None or "quiet" not in only or name not in launchers:
                continue
            runs = [freeze_one(launcher, Path(tmp) / f"quiet-{name}{i}", victim) for i in range(3)]
            results[f"SIGSTOP rank {victim} under {name}"] = runs
            print(f"SIGSTOP of rank {victim} under {name}: the line after {_seconds(runs, 'line_s')} s; launcher "
                  f"exited after {_seconds(runs, 'exit_s')} s; every process gone after "
                  f"{_seconds(runs, 'all_gone_s')} s; status {runs[0]['status']} ({runs[0]['reason']}, ranks "
                  f"{runs[0]['quiet_ranks']})")
        for name, launcher in [("torchrun", torchrun), ("mpiexec", [mpiexec, "-n", "2"])]:
            if launcher[0] is None or "stuck" not in only or name not in launchers:
                continue
            runs = [stuck_one(launcher, Path(tmp) / f"stuck-{name}{i}") for i in range(3)]
            results[f"rank 1 stuck at step 15 under {name}"] = runs
            print(f"rank 1 stuck in its own work under {name}: the line after {_seconds(runs, 'line_s')} s; "
                  f"launcher exited after {_seconds(runs, 'exit_s')} s; every process gone after "
                  f"{_seconds(runs, 'all_gone_s')} s; status {runs[0]['status']} ({runs[0]['reason']}, "
                  f"{runs[0]['where']})")
        if "non-finite" in only:
            nan = non_finite(Path(tmp), 5)
            results["non-finite loss on rank 1, epoch 2 step 5"] = nan
            print(f"non-finite loss on rank 1 at epoch 2 step 5: named rank {nan['rank']} step "
                  f"{nan['reported_step']}; newest checkpoint kept: {nan['kept']}")
    if args.json:
        args.json.write_text(json.dumps({"host_cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

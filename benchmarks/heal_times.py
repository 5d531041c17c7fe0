"""Seconds from a fault to its line, to every process of the launch gone, and to the first step of the relaunch
inside the job, on both labs (issue 29: a job of 2 hosts + 1 spare, default settings). Runs the labs' healing
tests (tests/cluster/test_heal_slurm.py, test_heal_pbs.py) under their locks, `--tries` times, and writes what
they measured:

    python benchmarks/heal_times.py --json benchmarks/heal-times-2026-12-06.json [--tries 3] [--lab slurm|pbs]

Needs root (the labs). Time it on an idle machine: the figures include the ranks' start-up on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABS = {"slurm": ("tests/cluster/test_heal_slurm.py", "/tmp/hpc_mnist-lab-slurm.lock"),
        "pbs": ("tests/cluster/test_heal_pbs.py", "/tmp/hpc_mnist-lab-pbs.lock")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the figures")
    p.add_argument("--tries", type=int, default=1)
    p.add_argument("--lab", choices=list(LABS), action="append", help="one lab (default: both, one after the other)")
    args = p.parse_args()
    rows: list[dict] = []
    failed = 0
    for lab in args.lab or list(LABS):
        test, lock = LABS[lab]
        for attempt in range(args.tries):
            with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
                env = {**os.environ, "HPC_MNIST_HEAL_TIMES": out.name}
                done = subprocess.run(["flock", "-o", lock, sys.executable, "-m", "pytest", "-q", "-n", "0", "-s",
                                       "-p", "no:randomly", test], cwd=REPO, env=env)
                failed += done.returncode != 0
                for line in out.read().splitlines():
                    rows.append({**json.loads(line), "lab": lab, "try": attempt + 1})
                    print(rows[-1], flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "command": " ".join(sys.argv), "rows": rows, "failed_runs": failed}
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

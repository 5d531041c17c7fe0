"""The Slurm job script and srun steps on the lab's real Slurm: world size, layouts, MPI plugins, results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster.conftest import PY, SMOKE, Lab, assert_same_weights, job_env, user_edited_job_script

pytestmark = pytest.mark.cluster


def test_job_script_two_nodes_equals_torchrun_standalone(lab: Lab):
    work = lab.workdir("slurm-2x2")
    script = user_edited_job_script(work)
    job = lab.submit_and_wait(script, out=work / "job.out", timeout=180,
                              env=job_env(lab, work, "log.name=cluster", RUN_NAME="cluster"))
    assert job.state == "COMPLETED", job.log
    summary = json.loads((work / "runs" / "cluster" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"]) == (4, 2, "slurm"), summary
    assert summary["status"] == "completed"

    local = lab.run([str(Path(PY).parent / "torchrun"), "--standalone", "--nproc_per_node=4", "-m",
                     "hpc_mnist.train", *SMOKE, f"log.dir={work / 'runs'}", "log.name=standalone"], timeout=180)
    assert local.returncode == 0
    assert_same_weights(work / "runs" / "cluster" / "model.pt", work / "runs" / "standalone" / "model.pt")


def test_uneven_srun_step_trains(lab: Lab):
    """srun -N2 -n3: two ranks on the first host, one on the second."""
    work = lab.workdir("uneven")
    script = work / "job.sh"
    script.write_text(f"""#!/bin/bash
srun -N2 -n3 {PY} -m hpc_mnist.train {' '.join(SMOKE)} log.dir={work / 'runs'} log.name=uneven
""")
    job = lab.submit_and_wait(script, "-N2", "-n3", "-t", "5", out=work / "job.out", timeout=180)
    assert job.state == "COMPLETED", job.log
    summary = json.loads((work / "runs" / "uneven" / "summary.json").read_text())
    assert (summary["world_size"], summary["launcher"], summary["status"]) == (3, "slurm", "completed"), summary


RANK_VARS = "^(PMI_RANK|PMIX_RANK|PALS_RANKID)="


@pytest.mark.parametrize("mpi", ["pmi2", "pmix", "cray_shasta"])
def test_srun_mpi_plugins_take_the_slurm_path_without_mpi4py(lab: Lab, mpi: str):
    """Each plugin gives the tasks its own rank variables (PMI_RANK, PMIX_RANK, PALS_RANKID); with mpi4py
    made unimportable, training must still start through the Slurm variables."""
    work = lab.workdir(f"mpi-{mpi}")
    blocker = work / "no_mpi4py"
    blocker.mkdir()
    (blocker / "mpi4py.py").write_text("raise ImportError('mpi4py is blocked in this test')\n")
    script = work / "job.sh"
    script.write_text(f"""#!/bin/bash
srun --mpi={mpi} bash -c 'echo "vars $SLURM_PROCID $(env | grep -oE "{RANK_VARS}" | sort | tr -d "\\n")"'
PYTHONPATH={blocker} srun --mpi={mpi} {PY} -m hpc_mnist.train {' '.join(SMOKE)} train.epochs=1 \\
    log.dir={work / 'runs'} log.name=run
""")
    job = lab.submit_and_wait(script, "-N2", "--ntasks-per-node=1", "-t", "5", out=work / "job.out", timeout=180)
    assert job.state == "COMPLETED", job.log
    expected = {"pmi2": "PMI_RANK=", "pmix": "PMIX_RANK=", "cray_shasta": "PALS_RANKID="}[mpi]
    assert re.findall(r"vars (\d) (\S*)", job.log) and all(
        expected in found for _, found in re.findall(r"vars (\d) (\S*)", job.log)), job.log
    summary = json.loads((work / "runs" / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"]) == (2, 2, "slurm"), summary

"""The Slurm job script and srun steps on the lab's real Slurm: world size, layouts, MPI plugins, results."""

from __future__ import annotations

import csv
import json
import os
import re
import signal

import pytest

from cluster.jobs import (
    PY,
    SLOW,
    SMOKE,
    assert_same_weights,
    job_variables,
    straight_run,
    user_edited_job_script,
    wait_for_epoch,
)
from cluster.labs import SlurmLab

pytestmark = pytest.mark.cluster


def test_job_script_two_nodes_equals_torchrun_standalone(lab: SlurmLab, tmp_path_factory):
    work = lab.workdir("slurm-2x2")
    script = user_edited_job_script(work)
    job = lab.submit_and_wait(script, out=work / "job.out", timeout=180,
                              variables=job_variables(work, "log.name=cluster", RUN_NAME="cluster", DOCTOR="1"))
    assert job.state == "COMPLETED", job.log
    assert "healthy" in job.log and "rank" in job.log  # the pre-flight check ran first, on both nodes
    summary = json.loads((work / "runs" / "cluster" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"]) == (4, 2, "slurm"), summary
    assert summary["status"] == "completed"
    assert_same_weights(work / "runs" / "cluster" / "model.pt", straight_run(tmp_path_factory))  # torchrun x 4


def test_uneven_srun_step_trains(lab: SlurmLab):
    """srun -N2 -n3: two ranks on the first host, one on the second."""
    work = lab.workdir("uneven")
    script = work / "job.sh"
    script.write_text(f"""#!/bin/bash
srun -N2 -n3 {PY} -m hpc_mnist.train {' '.join(SMOKE)} log.dir={work / 'runs'} log.name=uneven
""")
    job = lab.submit_and_wait(script, "-N2", "-n3", "-t", "5", out=work / "job.out", timeout=180)
    assert job.state == "COMPLETED", job.log
    summary = json.loads((work / "runs" / "uneven" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["launcher"], summary["status"]) == (
        3, 2, "slurm", "completed"), summary


RANK_VARS = "^(PMI_RANK|PMIX_RANK|PALS_RANKID)="


@pytest.mark.parametrize("mpi", ["pmi2", "pmix", "cray_shasta"])
def test_srun_mpi_plugins_take_the_slurm_path_without_mpi4py(lab: SlurmLab, mpi: str):
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


REQUEUE_ONCE = """#!/bin/bash
# Stands in for the launch: the first segment stops for the deadline (as the trainer reports it), the
# requeued one finishes: task 1 with exit status 0, task 2 with 3. What the job script asks the package after
# the launch (python -m hpc_mnist.job) goes to the real Python.
case "$*" in "-m hpc_mnist.job "*) exec PY "$@" ;; esac
echo "segment ${SLURM_RESTART_COUNT:-0} of task $SLURM_ARRAY_TASK_ID, job $SLURM_JOB_ID"
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
    sleep 2
    printf '{"state": "stopped", "reason": "deadline", "requeue": true}' > "$HPC_MNIST_STATUS_FILE"
    exit 75
fi
exit $(( SLURM_ARRAY_TASK_ID == 2 ? 3 : 0 ))
""".replace("exec PY", f"exec {PY}")


def test_array_tasks_requeue_themselves_and_end_with_the_launch_status(lab: SlurmLab):
    """On the real Slurm: each array task's deadline stop requeues that task only (`<array job>_<task>`;
    one task's own job id is the array's, and requeueing that would restart every task), its second
    segment runs, and each task's state follows the launch's exit status."""
    work = lab.workdir("array")
    fake = work / "python"
    fake.write_text(REQUEUE_ONCE)
    fake.chmod(0o755)
    script = user_edited_job_script(work, nodes=1, tasks_per_node=1)
    array_job = lab.submit(script, "--array=1-2", out=work / "job-%A_%a.out",
                           variables=job_variables(work, "", PYTHON=str(fake)))
    for task, state, code in [(1, "COMPLETED", "0:0"), (2, "FAILED", "3:0")]:
        job = lab.wait(f"{array_job}_{task}", timeout=120, out=work / f"job-{array_job}_{task}.out")
        assert (job.state, job.restarts, job.exit_code) == (state, 1, code), (job.info, job.log)
        assert f"requeueing job {array_job}_{task}" in job.log
        assert job.log.count("segment") == 2, job.log  # --open-mode=append kept the first segment's lines


def test_a_rank_killed_in_an_srun_step_is_named_by_a_survivor_on_the_other_host(lab: SlurmLab):
    """kill -9 of rank 1 (hm-n2) mid-run, as the OOM killer would: rank 0 on hm-n1 cannot see that host's
    processes, so rank 1 is gone when it does not answer in the rendezvous store within 5 s; one line names it
    with its host and pid, the job fails with the trainer's exit 5, and status.json says so."""
    work = lab.workdir("dead-rank")
    run_dir = work / "runs" / "r"
    script = work / "job.sh"
    script.write_text(f"""#!/bin/bash
srun -N2 -n2 {PY} -m hpc_mnist.train {' '.join(SMOKE)} {SLOW} train.epochs=300 log.dir={work / 'runs'} log.name=r
""")
    job = lab.submit(script, "-N2", "-n2", "-t", "5", out=work / "job.out")
    wait_for_epoch(lab, job, run_dir, epoch=2)
    ranks = json.loads((run_dir / "ranks.json").read_text())
    assert ranks["hosts"] == ["hm-n1", "hm-n2"]
    os.kill(ranks["pids"][1], signal.SIGKILL)  # the lab's hosts share this machine's process table
    finished = lab.wait(job, timeout=120, out=work / "job.out")
    ours = [line for line in finished.log.splitlines() if line.startswith("hpc_mnist: error")]
    assert len(ours) == 1 and ours[0].startswith(
        f"hpc_mnist: error: rank 1 (pid {ranks['pids'][1]}) on hm-n2 is gone: no answer within 5 s. Rank 0 stopped "
        "in epoch "), finished.log[-3000:]
    assert finished.state == "FAILED", finished.info
    st = json.loads((run_dir / "status.json").read_text())
    assert (st["state"], st["reason"], st["rank"], st["rank_host"], st["exit_code"]) == (
        "failed", "rank lost", 1, "hm-n2", 5)


def test_scaling_sweep_of_one_and_two_hosts_with_the_models_prediction_beside_each_point(lab: SlurmLab):
    """jobscripts/scaling_slurm.sh as a user edits it, 2 hosts x 1 rank: the sweep (1 and 2 hosts, gloo across
    them), the all-reduce benchmark on both hosts, and the report with the scaling model fitted there (the 1-host
    point's compute, the all-reduce, the overlap the 2-host point paid) beside each measured point: the loop a user
    runs at a centre, on real hosts. Predicting sizes the model was not fitted on: benchmarks/scaling_prediction.py."""
    work = lab.workdir("scaling")
    script = user_edited_job_script(work, nodes=2, tasks_per_node=1, time="00:10:00", name="scaling.sh",
                                    source="scaling_slurm.sh")
    job = lab.submit_and_wait(script, out=work / "job.out", timeout=300, variables=dict(
        CONFIG="configs/smoke.yaml", PYTHON=PY, HPC_MNIST_JOB_FILES=str(work / "jobfiles"), EPOCHS="1",
        SWEEP_DIR=str(work / "sweep"), OVERRIDES="log.console=plain train.precision=fp32 log.tensorboard=false "
        "data.synthetic_train=8000"))
    assert job.state == "COMPLETED", job.log[-3000:]
    comm = json.loads((work / "sweep" / "comm-r2.json").read_text())
    assert comm["ranks"] == 2 and comm["hosts"] == 2 and comm["rows"], comm.keys()
    with open(work / "sweep" / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["nodes"], r["ranks"], r["status"], r["fit"]) for r in rows] == [("1", "1", "ok", "fit"),
                                                                               ("2", "2", "ok", "fit")]
    for row in rows:  # compute from the 1-host point, the overlap from the 2-host one
        assert float(row["model_error"]) == pytest.approx(0, abs=1e-9) and row["regime"], row
    report = (work / "sweep" / "scaling.md").read_text()
    assert "overlap, measured on the sweep's points at those ranks: a step pays " in report
    assert "Error of the predicted samples/s on the points the model was not fitted on: none measured" in report
    assert "Model fitted on the smallest point" in job.log  # the report's note, printed in the job's log

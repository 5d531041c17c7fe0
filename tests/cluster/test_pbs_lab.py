"""The PBS lab itself (tests/cluster/pbs_lab.sh): a real OpenPBS job on two hosts runs the venv's MPICH mpiexec,
whose Hydra reaches the second host through PBS's task manager (tests/cluster/pbs-tmrsh)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cluster.jobs import PY
from cluster.labs import PBS_TMRSH, PbsLab

pytestmark = pytest.mark.cluster
# Each rank appends its host name to $OUT in one O_APPEND write (whole lines, whatever the interleaving).
SHOW_HOST = ("import os, socket\n"
             "fd = os.open(os.environ['OUT'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
             "os.write(fd, f'{socket.gethostname()}\\n'.encode())")
JOB = """#!/bin/bash
set -eu
cd "$PBS_O_WORKDIR"
echo "job $PBS_JOBID on $(hostname), nodes: $(tr '\\n' ' ' < "$PBS_NODEFILE")"
"$MPIEXEC" -n 4 -ppn 2 "$PY" "$SHOW_HOST"
"""


def test_mpiexec_on_two_pbs_hosts_through_the_task_manager(pbs_lab: PbsLab):
    work = pbs_lab.workdir("hydra-tm")
    script = work / "job.sh"
    script.write_text(JOB)
    (work / "show_host.py").write_text(SHOW_HOST)
    out = work / "hosts.txt"
    job = pbs_lab.submit(script, "-N", "hydra-tm", "-l", "select=2:ncpus=2", "-l", "place=scatter",
                         "-l", "walltime=00:02:00", "-j", "oe", out=work / "job.log",
                         variables={"MPIEXEC": str(Path(PY).parent / "mpiexec"), "PY": PY, "OUT": str(out),
                                    "SHOW_HOST": str(work / "show_host.py"), "HYDRA_LAUNCHER": "rsh",
                                    "HYDRA_LAUNCHER_EXEC": str(PBS_TMRSH)})
    result = pbs_lab.wait(job, timeout=120, out=work / "job.log")
    log = result.log or "(no job log)"
    assert result.info["Exit_status"] == 0, log
    hosts = [chunk.split("/")[0] for chunk in result.info["exec_host"].split("+")]  # hp-n1/0*2+hp-n3/0*2
    assert len(set(hosts)) == 2, result.info["exec_host"]
    assert Counter(out.read_text().split()) == {host: 2 for host in hosts}, log

"""hpc_mnist.runtime.pbs without a server: the walltime's end and the continuation's qsub line, from `qstat -f -F json`
as OpenPBS 23.06 prints it (recorded on the lab). The same on the lab's real server: tests/cluster/test_pbs_jobs.py."""

from __future__ import annotations

import datetime

import pytest

from hpc_mnist.runtime import pbs

# A running job of the lab, trimmed: numbers in Variable_List come back as JSON numbers.
INFO = {
    "Job_Name": "long1", "job_state": "R", "stime": "Wed Dec  2 04:03:04 2026", "Account_Name": "proj",
    "Output_Path": "hp-head:/tmp/hp-lab/shared/long/pbs.sh.0.out",
    "Resource_List": {"ncpus": 4, "nodect": 2, "place": "scatter", "select": "2:ncpus=2", "walltime": "00:01:30"},
    "Variable_List": {"PBS_O_HOME": "/root", "PBS_O_WORKDIR": "/work/main", "CONFIG": "configs/smoke.yaml",
                      "RANKS_PER_NODE": 2, "OVERRIDES": "train.epochs=12 log.dir=/tmp/x", "RUN_NAME": "",
                      "PBS_O_QUEUE": "workq"},
}


def test_end_time_is_start_plus_walltime():
    started = datetime.datetime(2026, 12, 2, 4, 3, 4).timestamp()
    assert pbs.end_time(INFO) == started + 90
    assert pbs.end_time({**INFO, "stime": 1000}) == 1090
    assert pbs.end_time({k: v for k, v in INFO.items() if k != "stime"}) is None  # queued: not started


@pytest.mark.parametrize("hms, seconds", [("00:01:30", 90), ("01:00:00", 3600), ("72:00:00", 259200), ("45", 45)])
def test_walltime_in_seconds(hms, seconds):
    assert pbs.seconds(hms) == seconds


def test_the_continuation_is_the_same_job_held_until_this_one_ends():
    cmd = pbs.continuation(INFO, "35.hp-head", "/var/spool/pbs/mom_priv/jobs/35.hp-head.SC", "35", 1)
    assert cmd == [
        "qsub", "-W", "depend=afterany:35.hp-head",
        "-v", 'CONFIG=configs/smoke.yaml,RANKS_PER_NODE=2,OVERRIDES="train.epochs=12 log.dir=/tmp/x",RUN_NAME=35,'
              "RESUBMIT_COUNT=1",
        "-l", "select=2:ncpus=2", "-l", "place=scatter", "-l", "walltime=00:01:30", "-A", "proj", "-N", "long1",
        "-o", "hp-head:/tmp/hp-lab/shared/long/pbs.sh.0.out.1", "/var/spool/pbs/mom_priv/jobs/35.hp-head.SC"]


def test_a_value_with_commas_stays_whole_and_one_with_quotes_is_refused():
    assert pbs.variable_list({"OVERRIDES": "model.hidden=[64,32]", "A": "1"}) == 'OVERRIDES="model.hidden=[64,32]",A=1'
    for value in ('say "hi"', "it's", "a\\b"):
        with pytest.raises(pbs.UserError, match="cannot pass"):
            pbs.variable_list({"A": value})


def test_the_logs_of_a_chain_are_numbered_after_the_first_jobs():
    second = {**INFO, "Output_Path": "login1:/home/u/hpc_mnist.o1234.1"}
    assert pbs.continuation(second, "1235.pbs", "job.sh", "1234", 2)[-2] == "login1:/home/u/hpc_mnist.o1234.2"
    eleventh = {**INFO, "Output_Path": "login1:/home/u/hpc_mnist.o1234.10"}
    assert pbs.continuation(eleventh, "1244.pbs", "job.sh", "1234", 11)[-2] == "login1:/home/u/hpc_mnist.o1234.11"

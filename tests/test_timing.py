"""Per-rank step timing with real processes: a rank slowed by a busy core is named a straggler, with its host,
in the epoch metrics and in the scaling report; without the load nobody is."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env, free_port, read_jsonl, run_train
from hpc_mnist import scaling
from hpc_mnist.runtime.timing import summarize

pytestmark = pytest.mark.slow  # real processes: the whole module (pytest -m 'not slow' leaves it out)

ARGS = ["--config", "configs/smoke.yaml", "log.console=plain", "log.tensorboard=false", "train.precision=fp32",
        "model.name=cnn", "data.synthetic_train=2500", "data.synthetic_test=100", "train.batch_size=32",
        "train.epochs=2", "optim.name=adam", "optim.lr=1e-3", "train.eval_batch_size=500"]

needs_two_cores = pytest.mark.skipif(
    shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset and two cores")


def two_pinned_ranks(run_dir: Path, busy_core: int | None, port: int) -> None:
    """Ranks 0 and 1 started by hand with torchrun's variables, each pinned to its own core; optionally a
    busy loop on one of the cores."""
    busy = None
    if busy_core is not None:
        busy = subprocess.Popen(["taskset", "-c", str(busy_core), sys.executable, "-c", "while True: pass"])
    try:
        procs = []
        for rank in (0, 1):
            env = clean_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            cmd = ["taskset", "-c", str(rank), sys.executable, "-m", "hpc_mnist.train", *ARGS,
                   f"log.dir={run_dir.parent}", f"log.name={run_dir.name}"]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
    finally:
        if busy:
            busy.kill()
            busy.wait()


@needs_two_cores
def test_a_rank_on_a_loaded_core_is_named_with_its_host_and_nobody_without_load(tmp_path):
    two_pinned_ranks(tmp_path / "loaded", busy_core=1, port=free_port())
    rows = read_jsonl(tmp_path / "loaded" / "metrics.jsonl")
    host = socket.gethostname()
    for row in rows:
        assert [(s["rank"], s["host"]) for s in row["stragglers"]] == [(1, host)], row
        assert row["slowest_rank"] == 1 and row["own_s_max"] > 1.25 * row["own_s_min"]
    summary = json.loads((tmp_path / "loaded" / "summary.json").read_text())
    assert summary["stragglers"] == {f"rank 1 on {host}": 2}

    two_pinned_ranks(tmp_path / "quiet", busy_core=None, port=free_port())
    assert all(row["stragglers"] == [] for row in read_jsonl(tmp_path / "quiet" / "metrics.jsonl"))

    table = scaling.aggregate(scaling.collect([tmp_path / "loaded", tmp_path / "quiet"], 0.5)[0])
    assert table[0]["stragglers"] == f"rank 1 on {host}"


def test_summary_splits_own_work_from_waiting():
    per_rank = [{"data": 0.1, "forward": 1.0, "backward": 2.0, "wait": 3.0, "optimizer": 0.4},
                {"data": 0.1, "forward": 2.0, "backward": 4.0, "wait": 0.1, "optimizer": 0.4}]
    row = summarize(per_rank, ["a", "b"], margin=0.25)
    assert row["own_s_min"] == pytest.approx(3.5) and row["own_s_max"] == pytest.approx(6.5)
    assert (row["slowest_rank"], row["slowest_host"]) == (1, "b")
    assert [s["rank"] for s in row["stragglers"]] == [1]  # waiting longest (rank 0) is not being slow
    assert row["wait_s_max"] == 3.0
    even = summarize([per_rank[0], per_rank[0], per_rank[0]], ["a", "b", "c"], margin=0.25)
    assert even["stragglers"] == []


def test_profile_writes_one_trace_per_rank(tmp_path):
    result = run_train([*ARGS, "model.name=mlp", "train.epochs=1", "log.profile=true", f"log.dir={tmp_path}",
                        "log.name=p"], launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc_per_node=2"])
    assert result.returncode == 0, result.stderr[-2000:]
    traces = sorted((tmp_path / "p" / "profile").glob("*.pt.trace.json"))
    assert [t.name.split(".")[0] for t in traces] == ["rank0", "rank1"]
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in events)

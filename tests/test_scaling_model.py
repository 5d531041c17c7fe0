"""The scaling model's arithmetic: the alpha-beta fit, latency growth, overlap, and the report's error."""

import json
import math
import statistics
from pathlib import Path

import pytest

from hpc_mnist import model as model_cmd
from hpc_mnist.core.config import ModelConfig
from hpc_mnist.core.models import build
from hpc_mnist.perf import allreduce
from hpc_mnist.perf import step as sm


def test_fit_recovers_alpha_and_bus_bandwidth():
    alpha, busbw, n = 50e-6, 10e9, 4
    rows = [{"bytes": s, "time_us": (alpha + s * 2 * (n - 1) / n / busbw) * 1e6} for s in (8, 4096, 2**20, 2**26)]
    net = sm.fit(rows, n)
    assert net.alpha_s == pytest.approx(alpha, rel=1e-6) and net.busbw == pytest.approx(busbw, rel=1e-6)
    assert net.max_rel_error < 1e-6
    with pytest.raises(ValueError):
        sm.fit(rows[:1], n)


def test_latency_grows_with_log2_of_ranks_or_linearly_for_a_ring():
    tree = sm.Network(20e-6, 1e9, ref_ranks=2)
    assert tree.latency_s(1) == 0.0 and tree.allreduce_s(10**6, 1) == 0.0  # one rank: no communication
    assert tree.latency_s(2) == pytest.approx(20e-6) and tree.latency_s(1024) == pytest.approx(200e-6)
    ring = sm.Network(20e-6, 1e9, ref_ranks=2, latency="ring")
    assert ring.latency_s(1024) == pytest.approx(20e-6 * 1023)
    # The bandwidth term levels off at 2 S / busbw.
    assert tree.bandwidth_s(10**6, 2) == pytest.approx(1e-3) and tree.bandwidth_s(10**6, 4096) < 2e-3


def test_polaris_model_follows_the_published_sweeps_it_was_fitted_to():
    net = sm.polaris()
    assert net.fitted_ranks == (8, 32, 2160)
    errors = [abs(e["error"]) for sweep in allreduce.shipped_sweeps() for e in allreduce.errors(net, sweep)]
    assert statistics.median(errors) < 0.15


def test_overlap_hides_the_all_reduce_behind_backward():
    compute, net = sm.Compute(0.0, 1e-6), sm.Network(0.0, 1e9, ref_ranks=2)
    # 1000 samples: 1 ms compute; 2e5 bytes at 2 ranks: 0.2 ms of all-reduce, hidden under 0.67 ms of backward.
    p = sm.predict(compute, net, 200_000, 1000, 2)
    assert p["step_s"] == pytest.approx(1.2e-3) and p["step_overlap_s"] == pytest.approx(1e-3)
    assert p["efficiency"] == pytest.approx(1 / 1.2) and p["samples_per_s"] == pytest.approx(2000 / 1.2e-3)
    big = sm.predict(compute, net, 2_000_000, 1000, 2)  # 2 ms of all-reduce: only 2/3 ms hidden
    assert big["step_overlap_s"] == pytest.approx(1e-3 + 2e-3 - 2e-3 / 3)


def test_flops_of_the_linear_model():
    assert sm.train_flops_per_sample(build(ModelConfig(name="linear"))) == 3 * 2 * 784 * 10
    cnn = sm.train_flops_per_sample(build(ModelConfig(name="cnn")))
    assert 60e6 < cnn < 80e6  # two 3x3 convolutions dominate: about 24 MFLOPs forward


def test_where_scaling_stops_names_the_term():
    net = sm.Network(100e-6, 1e12, ref_ranks=2)
    nodes = [1, 2, 4, 8]
    rows = sm.sweep(sm.Compute(100e-6, 0.0), net, 1000, 1, nodes, 1)
    assert rows[0]["efficiency"] == 1.0 and rows[1]["efficiency"] == pytest.approx(0.5, rel=1e-3)
    assert sm.where_it_stops(rows, nodes, 0.9).startswith("from 2 node(s) (latency: 100 us")
    assert sm.where_it_stops(rows, nodes, 0.1) == "never up to 8 nodes"


def test_polaris_report_finds_the_data_limit():
    report = sm.polaris_report([128], [1, 64, 128], ranks_per_node=4)
    cnn = report["models"]["cnn"]["batches"][128]
    assert cnn["global_batch_exceeds_data_at"] == 128  # 128 x 4 x 128 = 65,536 > 48,000 digits
    assert math.isclose(cnn["rows"][0]["steps_per_epoch"], 48_000 / 512)


def test_the_last_bucket_is_not_overlapped():
    compute, net = sm.Compute(0.0, 1e-6), sm.Network(0.0, 1e9, ref_ranks=2)
    # One bucket (the MLP's case): its gradients are ready only when backward ends, so nothing hides.
    one = sm.predict(compute, net, 200_000, 1000, 2, buckets=[200_000])
    assert one["step_overlap_s"] == pytest.approx(one["step_s"])
    two = sm.predict(compute, net, 200_000, 1000, 2, buckets=[150_000, 50_000])
    assert two["step_overlap_s"] == pytest.approx(1e-3 + 0.05e-3)


def test_ddp_buckets_match_what_ddp_builds():
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        for name in ("mlp", "cnn"):
            model = DistributedDataParallel(build(ModelConfig(name=name)))
            for _ in range(3):  # DDP rebuilds its buckets in gradient-ready order at the second step
                model(torch.zeros(2, 1, 28, 28)).sum().backward()
            built = model._get_ddp_logging_data()["rebuilt_bucket_sizes"]
            assert [int(b) for b in built.split(",")] == sm.ddp_buckets(build(ModelConfig(name=name)))
    finally:
        tdist.destroy_process_group()


def test_fit_ignores_one_outlier():
    alpha, busbw, n = 2e-3, 0.3e9, 2
    rows = [{"bytes": s, "time_us": (alpha + s / busbw) * 1e6 * (1 + 0.02 * (-1) ** i)}
            for i, s in enumerate(4 * 2**k for k in range(25))]
    rows[0]["time_us"] = 300.0  # one size measured in a quiet moment
    net = sm.fit(rows, n)
    assert net.alpha_s == pytest.approx(alpha, rel=0.05) and net.busbw == pytest.approx(busbw, rel=0.05)


def test_a_latency_bound_sweep_gives_a_bandwidth_bound_not_a_negative_bandwidth():
    """CI caught this on gloo: a 4 B-4 kB sweep whose times fall with size (noise) fitted busbw -66 MB/s."""
    n = 2
    times = [1040.0, 1010.0, 1005.0, 1002.0, 998.0, 995.0, 1001.0, 990.0, 985.0, 980.0, 978.0]
    rows = [{"bytes": 4 * 2**k, "time_us": t} for k, t in enumerate(times)]
    net = sm.fit(rows, n)
    assert net.busbw > 0 and net.alpha_s > 0 and net.busbw_is_lower_bound
    best = max(r["bytes"] * 2 * (n - 1) / n / (r["time_us"] * 1e-6) for r in rows)
    assert net.busbw == pytest.approx(best)  # the best bandwidth any size showed: a bound the data supports
    assert net.alpha_s == pytest.approx(1e-3, rel=0.02)  # the latency is what every size took
    for r in rows:  # a pessimistic model: no size predicted faster than measured, beyond the noise
        assert net.allreduce_s(r["bytes"], n) >= 0.95 * r["time_us"] * 1e-6


def test_a_resolved_sweep_is_not_marked_as_a_bound():
    alpha, busbw, n = 2e-3, 0.3e9, 2
    rows = [{"bytes": s, "time_us": (alpha + s / busbw) * 1e6} for s in (4 * 2**k for k in range(25))]
    assert not sm.fit(rows, n).busbw_is_lower_bound


# --- the all-reduce model: several sweeps, nccl-tests' format, the published validation ---

NCCL_TESTS = Path(__file__).parent / "data" / "nccl-tests-polaris-n2.txt"


def test_reads_nccl_tests_output_as_published():
    sweep = allreduce.read_sweep(NCCL_TESTS)
    assert (sweep.ranks, sweep.hosts, len(sweep.sizes)) == (8, 2, 29)  # 8 device lines on 2 hosts; 4 B to 1 GiB
    assert (sweep.sizes[0], sweep.times_us[0]) == (4, 28.38)  # the out-of-place time, not the in-place 23.58
    assert (sweep.sizes[-1], sweep.times_us[-1]) == (2**30, 51048.0)


def test_unreadable_sweeps_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("# nothing here\n")
    assert model_cmd.main(["--comm", str(tmp_path / "junk.txt")]) == 2
    assert model_cmd.main(["--comm", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text('{"ranks": 2}')
    assert model_cmd.main(["--comm", str(tmp_path / "bad.json")]) == 2
    assert model_cmd.main(["--compute-ms", "cnn=4"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("hpc_mnist: error: ") for line in err)
    assert "not an nccl-tests all_reduce_perf output" in err[0] and "cannot read" in err[1]


def _synthetic(ranks: int) -> allreduce.Sweep:
    """Two regimes that grow with log2(ranks), as the model assumes: a fit must recover them."""
    small = allreduce.Regime(5e-6, 10e-6, 0.2e-9, 0.3e-9)
    large = allreduce.Regime(50e-6, 40e-6, 20e-12, 2e-12)
    sizes = tuple(4 * 2**k for k in range(25))
    return allreduce.Sweep(ranks, sizes, tuple(min(small.time_s(s, ranks), large.time_s(s, ranks)) * 1e6
                                                     for s in sizes), f"synthetic {ranks}")


def test_fit_over_several_rank_counts_recovers_the_growth():
    net = allreduce.fit([_synthetic(8), _synthetic(32)])
    assert len(net.regimes) == 2 and net.fitted_ranks == (8, 32)
    far = _synthetic(4096)  # 128x the ranks
    assert max(abs(e["error"]) for e in allreduce.errors(net, far)) < 0.01
    one = allreduce.fit([_synthetic(8)])  # one rank count: latency grows as log2(n) from one rank
    assert one.latency_s(64) == pytest.approx(2 * one.latency_s(8), rel=1e-6)


def test_predict_ranks_writes_the_allreduce_shape(tmp_path):
    out = tmp_path / "p.json"
    assert model_cmd.main(["--comm", str(NCCL_TESTS), "--predict-ranks", "16,64", "--batches", "128",
                           "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["allreduce"]
    assert {(r["ranks"], r["bytes"]) for r in rows} == {(n, 4 * 2**k) for n in (16, 64) for k in range(29)}
    assert all(set(r) == {"ranks", "bytes", "time_us"} and r["time_us"] > 0 for r in rows)


def test_help_examples_run(tmp_path):
    """The docstring's examples (its --help), with real files in place of the names."""
    sweep = str(NCCL_TESTS)
    assert model_cmd.main(["--batches", "128", "--max-nodes", "8"]) == 0
    assert model_cmd.main(["--comm", sweep, "--comm", sweep, "--check", sweep, "--max-nodes", "8"]) == 0
    assert model_cmd.main(["--comm", sweep, "--compute-ms", "cnn:128=4.1", "--ranks-per-node", "4", "--max-nodes", "8",
                    "--json", str(tmp_path / "m.json")]) == 0
    measured = json.loads((tmp_path / "m.json").read_text())["models"]["cnn"]["batches"]["128"]
    assert measured["compute"]["source"].startswith("measured: 4.1 ms")
    assert measured["rows"][0]["compute_s"] == pytest.approx(4.1e-3)


def test_fitted_on_2_and_8_polaris_nodes_it_predicts_540_nodes():
    """The validation goal (benchmarks/allreduce-model-validation.md): fitted on the two smallest node counts of
    ALCF's published sweeps, the 540-node one (270x the ranks) within 40% at five sizes, 25% in the median."""
    sweeps = {s.ranks: s for s in allreduce.shipped_sweeps()}
    net = allreduce.fit([sweeps[8], sweeps[32]])
    errors = {e["bytes"]: e["error"] for e in allreduce.errors(net, sweeps[2160])}
    for size in (4, 64 * 2**10, 2**20, 4 * 2**20, 64 * 2**20):
        assert abs(errors[size]) <= 0.40, (size, errors[size])
    assert statistics.median(abs(e) for s, e in errors.items() if s <= 64 * 2**20) <= 0.25

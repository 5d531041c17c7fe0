"""benchmarks/gpu_check.py, the one command for a lent GPU machine: its dry mode runs every part on this CPU and
writes the JSON the GPU run will write; its mistakes are one line each; the FLOP-bound limit it states."""

import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers.processes import REPO, clean_env
from hpc_mnist.perf.peak import flop_bound_samples_per_s, peak_bf16_tflops

SCRIPT = str(REPO / "benchmarks" / "gpu_check.py")
PARTS = ["environment", "tests", "cnn", "mlp", "tutorial", "time_to_99", "cnn_compile"]


def gpu_check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                          env=clean_env(PYTHONPATH=""), timeout=timeout)


@pytest.mark.slow
def test_the_dry_mode_runs_every_part_and_writes_every_figure(tmp_path):
    # four times the dry budget, and each part's limit with it: the 2 shared cores here are often busy
    result = gpu_check("--device", "cpu", "--out", str(tmp_path), "--label", "dry", "--budget", "600", timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == PARTS and report["dry_run"] and report["label"] == "dry"
    # torch.compile's first build can outlast its part's minute on a slow or compiler-less machine: then it says so
    assert all(parts[p]["status"] == "ok" for p in PARTS[:-1]), result.stdout + result.stderr[-3000:]
    assert parts["cnn_compile"]["status"] in ("ok", "timed out")
    assert result.returncode == (0 if parts["cnn_compile"]["status"] == "ok" else 1)
    assert report["wall_s"] <= report["budget_s"] and (tmp_path / "gpu_check.log").stat().st_size > 0
    env = parts["environment"]["result"]
    assert env["torch"] == str(torch.__version__) and env["cuda_available"] is False
    tests = parts["tests"]["result"]
    assert tests["passed"] >= 10 and tests["failed"] == [] and (tmp_path / "tests.xml").exists()
    assert all("no CUDA device here" in reason for reason in tests["skipped"])
    cnn = parts["cnn"]["result"]
    assert 71 < cnn["mflop_per_sample"] < 73  # the tutorial CNN, forward and backward
    rows = {(r["variant"], r["mode"]): r for r in cnn["rows"]}
    assert set(rows) == {(v, m) for v in ("fp32", "bf16", "bf16+cl") for m in ("trainer", "eager", "graphs")}
    assert all(rows[v, m]["samples_per_s"] > 0 for v in ("fp32", "bf16", "bf16+cl") for m in ("trainer", "eager"))
    assert rows["bf16+cl", "eager"]["channels_last"] and not rows["bf16", "eager"]["channels_last"]
    assert rows["fp32", "graphs"]["refused"] == "CUDA graphs need a CUDA device, not cpu"
    assert [r["mode"] for r in parts["mlp"]["result"]["rows"]] == ["trainer", "eager", "graphs"]
    tutorial = parts["tutorial"]["result"]["throughput"]
    assert [r["model"] for r in tutorial] == ["mlp", "cnn"] and all(r["ratio"] > 0 for r in tutorial)
    assert len(parts["time_to_99"]["result"]["ours"]["runs"]) == 2
    for row in (parts["cnn_compile"]["result"] or {"rows": []})["rows"]:
        assert {"samples_per_s", "error", "skipped"} & set(row), row
    summary = report["summary"]
    assert summary["cnn b16 bf16+cl eager samples/s"] == rows["bf16+cl", "eager"]["samples_per_s"]
    assert summary["tests passed / failed / skipped"].startswith(f"{tests['passed']} / 0 / ")


def test_mistakes_are_one_line_each(tmp_path):
    wrong = gpu_check("--out", str(tmp_path), "--parts", "cnn,gpus")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "--parts takes environment" in wrong.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = gpu_check("--device", "cpu", "--out", str(blocked / "out"))
    assert unwritable.returncode == 2 and unwritable.stderr.count("\n") == 1
    assert "is a file, not a folder" in unwritable.stderr
    if not torch.cuda.is_available():
        no_gpu = gpu_check("--out", str(tmp_path))
        assert no_gpu.returncode == 2 and no_gpu.stderr.strip().endswith("or --device cpu for the dry mode")


def test_the_flop_bound_comes_from_the_devices_name():
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM5
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.5
    assert peak_bf16_tflops("NVIDIA H100 NVL") == 835.5
    assert peak_bf16_tflops("NVIDIA H200") == 989.4
    assert peak_bf16_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert peak_bf16_tflops("x86_64") is None
    # the tutorial CNN's ~72 MFLOP per sample on an H100 SXM5: about 13.7 million samples/s at the peak
    assert round(flop_bound_samples_per_s(71.95e6, 989.4) / 1e6, 1) == 13.8


def test_the_environment_part_reads_a_gpu_and_survives_a_probe_that_fails(monkeypatch):
    """The CUDA branch of the first part, on a faked H100 whose NCCL version cannot be read: every field, the
    datasheet peak from the name, and the failed probe said in words."""
    spec = importlib.util.spec_from_file_location("gpu_parts", REPO / "benchmarks" / "gpu_parts.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    props = SimpleNamespace(major=9, minor=0, total_memory=80 * 2**30, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: 1 / 0)
    found = parts.environment("cuda")
    assert found["device_name"] == "NVIDIA H100 80GB HBM3" and found["peak_bf16_tflops"] == 989.4
    assert (found["capability"], found["memory_gib"], found["multiprocessors"]) == ("9.0", 80.0, 132)
    assert found["bf16_tensor_cores"] is True and found["nccl"] == "unknown (ZeroDivisionError: division by zero)"
    assert found["torch"] == str(torch.__version__)

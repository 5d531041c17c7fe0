"""One command for a lent GPU machine: the GPU tests and the GPU benchmarks, every figure in one JSON.

    python3 benchmarks/gpu_check.py --out $OUT                   # on the GPU machine (benchmarks/GPU.md)
    python3 benchmarks/gpu_check.py --device cpu --out /tmp/dry  # the dry mode: every part, tiny sizes, a CPU

Parts, in this order, each in a process of its own under its own time limit, inside one budget for the whole
check: a part that fails, crashes or runs out of time is recorded so in the JSON and the next one starts.

    environment   device, driver, torch, CUDA, cuDNN, NCCL, Triton, a C compiler, the device's dense bf16 peak
    tests         pytest tests/gpu -m gpu (the dry mode: -m "not slow"), with the carried pytest (.gpu-carry)
    cnn           tutorial CNN samples/s: fp32, bf16, bf16+channels_last x the trainer, its bare step, CUDA graphs
    mlp           tutorial MLP at batch 128: the trainer, its bare step, CUDA graphs
    tutorial      hpc-mnist bench: our loop beside the tutorials' loop (ratio), MLP and CNN, peak GPU memory
    time_to_99    hpc-mnist bench --time-to-99: configs/lean.yaml, 5 seeds, the data on the GPU
    cnn_compile   the CNN's variants through torch.compile, and with mode="reduce-overhead" (its CUDA graphs)

Writes OUT/gpu_check.json (after every part), OUT/gpu_check.log (every part's output) and OUT/tests.xml.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"  # pytest, installed with pip install --target (benchmarks/GPU.md)
BUDGET = {"cuda": 330.0, "cpu": 150.0}  # seconds for the whole check
MIN_START = {"cuda": 10.0, "cpu": 4.0}  # a part with less time than this left is skipped (torch's import alone)


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float  # on a GPU
    dry_limit_s: float  # in the dry mode


PARTS = (Part("environment", 40, 20), Part("tests", 180, 60), Part("cnn", 60, 25), Part("mlp", 30, 20),
         Part("tutorial", 60, 25), Part("time_to_99", 75, 25), Part("cnn_compile", 120, 60))
DRY_DATA = ["data.name=synthetic", "data.synthetic_train=512", "data.synthetic_test=128"]


def command(name: str, args: argparse.Namespace, result: Path, until: float) -> list[str]:
    """The part's command line; it writes its figures to `result`."""
    dry = args.device == "cpu"
    python, parts = [sys.executable], [sys.executable, str(REPO / "benchmarks" / "gpu_parts.py")]
    sizes = ["--steps", "2", "--warmup", "1", "--repeats", "1"] if dry else []
    extra = [a for kv in DRY_DATA for a in ("--extra", kv)] if dry else []
    throughput = [*parts, "throughput", "--device", args.device, "--json", str(result), "--until", str(until),
                  *sizes, *extra]
    cnn = ["--model", "cnn", "--batch", str(16 if dry else args.cnn_batch), "--variants", "fp32,bf16,bf16+cl"]
    if name == "environment":
        return [*parts, "environment", "--device", args.device, "--json", str(result)]
    if name == "tests":
        return [*python, "-m", "pytest", "tests/gpu", "-o", "addopts=", "-p", "no:cacheprovider", "-v", "-rfEs",
                "-m", "not slow" if dry else "gpu", f"--junitxml={result}"]
    if name == "cnn":
        return [*throughput, *cnn, "--modes", "trainer,eager,graphs"]
    if name == "mlp":
        return [*throughput, "--model", "mlp", "--batch", str(16 if dry else args.mlp_batch), "--variants", "auto",
                "--modes", "trainer,eager,graphs"]
    if name == "cnn_compile":
        return [*throughput, *cnn[:-1], "bf16+cl" if dry else "bf16+cl,bf16,fp32", "--modes",
                "compile,compile+graphs", "--stop-after-error"]
    bench = [*python, "-m", "hpc_mnist.bench", "--device", args.device, "--json", str(result)]
    if name == "tutorial":
        return [*bench, "--models", "mlp,cnn", *(["--synthetic-train", "512", "--synthetic-test", "128",
                                                   "--batch-sizes", "16", *sizes] if dry else [])]
    return [*bench, "--time-to-99", "--reference-seeds", "0",
            *(["--seeds", "2", *[a for kv in DRY_DATA for a in ("--override", kv)]] if dry else ["--seeds", "5"])]


def read_junit(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML as counts, each failure with its first line, and the skips' reasons."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    out: dict[str, Any] = {"tests": len(cases), "failed": [], "skipped": {}}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            for bad in case.iter(tag):
                out["failed"].append({"test": name, tag: (bad.get("message") or "").splitlines()[0][:400]
                                      if bad.get("message") else ""})
        for skip in case.iter("skipped"):
            reason = (skip.get("message") or "").strip()
            out["skipped"][reason] = out["skipped"].get(reason, 0) + 1
    out["passed"] = len(cases) - len(out["failed"]) - sum(out["skipped"].values())
    return out


def run_part(part: Part, args: argparse.Namespace, deadline: float, log, scratch: Path) -> dict[str, Any]:
    """The part in its own process session, killed at its limit; its figures, status and time."""
    left = deadline - time.time()
    scale = args.budget / BUDGET[args.device]  # a larger budget (a loaded machine) stretches every part alike
    limit = min((part.dry_limit_s if args.device == "cpu" else part.limit_s) * scale, left)
    record: dict[str, Any] = {"limit_s": round(limit, 1)}
    if limit < MIN_START[args.device]:
        return {**record, "status": "skipped", "why": f"{left:.0f} s left of the check's budget"}
    result = args.out / "tests.xml" if part.name == "tests" else scratch / f"{part.name}.json"
    result.unlink(missing_ok=True)
    cmd = command(part.name, args, result, until=time.time() + 0.75 * limit)  # no new row after it
    record["command"] = " ".join(cmd[1:]).replace(str(REPO) + "/", "")
    log.write(f"\n===== {part.name}: {' '.join(cmd)}\n")
    log.flush()
    offset = log.tell()
    carried = [str(CARRY)] if part.name == "tests" and CARRY.is_dir() else []  # pytest, for the tests alone
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": os.pathsep.join([*carried, str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    began, code = time.perf_counter(), None
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
        record["status"] = "ok" if code == 0 else "failed"
        record["exit_code"] = code
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        record["status"] = "timed out"
    record["seconds"] = round(time.perf_counter() - began, 1)
    if record["status"] != "ok":
        log.flush()
        with open(log.name, errors="replace") as f:
            f.seek(offset)
            record["output_tail"] = f.read()[-1500:]
    try:
        record["result"] = read_junit(result) if part.name == "tests" else json.loads(result.read_text())
    except (OSError, ValueError, ET.ParseError) as e:
        record["result"] = None
        record["result_error"] = f"no figures: {type(e).__name__}: {e}"[:300]
    if part.name == "tests" and record["result"] and code == 1:
        record["status"] = "tests failed"  # pytest ran: its verdict is in the result
    return record


def summary(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures worth a glance, flat: the parts' results hold everything."""
    figures: dict[str, Any] = {}
    result = {name: (p.get("result") or {}) for name, p in parts.items()}
    env = result.get("environment", {})
    figures.update(device=env.get("device_name"), torch=env.get("torch"), cuda=env.get("cuda"))
    figures["peak_bf16_tflops (datasheet, dense)"] = env.get("peak_bf16_tflops")
    tests = result.get("tests", {})
    if tests:
        figures["tests passed / failed / skipped"] = \
            f"{tests['passed']} / {len(tests['failed'])} / {sum(tests['skipped'].values())}"
    peaks = []
    for name in ("cnn", "mlp", "cnn_compile"):
        part = result.get(name, {})
        if name == "cnn" and part.get("flop_bound_samples_per_s"):
            figures[f"cnn flop-bound samples/s ({part['mflop_per_sample']:.1f} MFLOP/sample)"] = \
                part["flop_bound_samples_per_s"]
        for row in part.get("rows", []):
            key = f"{part['model']} b{part['batch']} {row['variant']} {row['mode']} samples/s"
            figures[key] = row.get("samples_per_s", row.get("error") or row.get("refused") or row.get("skipped"))
            peaks.append(row.get("peak_gpu_mb", 0))
    for row in result.get("tutorial", {}).get("throughput", []):
        figures[f"{row['model']} b{row['batch']} {row['precision']} ours/tutorial loop"] = row.get("ratio")
        figures[f"{row['model']} b{row['batch']} {row['precision']} ours samples/s"] = row["ours"]
        peaks.append(row.get("peak_device_mb", 0))
    ours = result.get("time_to_99", {}).get("ours")
    if ours:
        figures["time to 99%: test accuracy mean"] = ours["test_acc_mean"]
        figures["time to 99%: training s mean"] = ours["train_seconds_mean"]
        peaks.append(result["time_to_99"].get("peak_device_mb", 0))
    figures["peak GPU memory MB (largest part)"] = max(peaks, default=0) or None
    return figures


def commit() -> str | None:
    """The checkout's commit: from git where the repository is, else as the carry's preparation wrote it."""
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                               timeout=10)
        if found.returncode == 0:
            return found.stdout.strip()
    except OSError:  # no git on the machine
        pass
    written = CARRY / "commit"
    return written.read_text().strip() if written.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sys.path.insert(0, str(REPO))  # this checkout's package, installed or not
    from hpc_mnist.errors import ArgumentParser, comma_list

    p = ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON, the log and tests.xml")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry mode (tiny sizes)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole check (cuda 330, cpu 150); "
                   "each part's limit scales with it")
    p.add_argument("--parts", type=comma_list(), default=[p.name for p in PARTS], help="comma list (default all)")
    p.add_argument("--cnn-batch", type=int, default=256)
    p.add_argument("--mlp-batch", type=int, default=128)
    p.add_argument("--label", default="", help="recorded in the JSON (the commit, say)")
    args = p.parse_args(argv)
    if unknown := [name for name in args.parts if name not in {p.name for p in PARTS}]:
        p.error(f"--parts takes {', '.join(p.name for p in PARTS)}, not {', '.join(unknown)}")
    args.budget = args.budget or BUDGET[args.device]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hpc_mnist.errors import UserError, one_line, writable_file

    @one_line
    def check(_: list[str] | None) -> int:
        out = writable_file(args.out / "gpu_check.json")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError("no CUDA device here: run the check on the GPU machine, or --device cpu for the "
                                "dry mode")
        started = time.time()
        report: dict[str, Any] = {"check": "hpc_mnist GPU check (benchmarks/gpu_check.py)", "label": args.label,
                                  "commit": commit(),
                                  "dry_run": args.device == "cpu", "device": args.device,
                                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                  "budget_s": args.budget, "parts": {}}
        with open(args.out / "gpu_check.log", "w") as log, tempfile.TemporaryDirectory() as scratch:
            for part in (p for p in PARTS if p.name in args.parts):
                record = run_part(part, args, started + args.budget, log, Path(scratch))
                report["parts"][part.name] = record
                print(f"[{time.time() - started:5.0f} s] {part.name}: {record['status']}"
                      + (f" in {record['seconds']} s" if "seconds" in record else f" ({record.get('why')})"),
                      flush=True)
                report.update(wall_s=round(time.time() - started, 1), summary=summary(report["parts"]))
                out.write_text(json.dumps(report, indent=2) + "\n")
        bad = [name for name, r in report["parts"].items() if r["status"] != "ok"]
        print(f"figures written to {out}; " + (f"not ok: {', '.join(bad)}" if bad else "every part ok"), flush=True)
        return 1 if bad else 0

    return check(None)


if __name__ == "__main__":
    sys.exit(main())

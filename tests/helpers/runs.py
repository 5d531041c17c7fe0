"""Run directories as the trainer writes them: read back (status, metrics, weights), compared, waited for, and
faked with known numbers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def without_timing(row: dict) -> dict:
    """An epoch row less what clocks measure (times, rates, per-rank timing): what two equal runs share."""
    return {k: v for k, v in row.items()
            if not (k.endswith("_s") or "_s_" in k or k.startswith("slowest_") or k == "stragglers")}


def metrics(run_dir: Path) -> list[dict]:
    return [without_timing(row) for row in read_jsonl(run_dir / "metrics.jsonl")]


def lrs(run_dir: Path) -> list[float]:
    """Each epoch's learning rate, from metrics.jsonl."""
    return [row["lr"] for row in read_jsonl(run_dir / "metrics.jsonl")]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt")


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (sa["status"], sa["test_acc"], sa["test_loss"]) == (sb["status"], sb["test_acc"], sb["test_loss"])


def stop_file(tmp_path: Path) -> dict[str, str]:
    """An existing stop file: the deadline has passed, so the ranks stop at their first check (step 16)."""
    path = tmp_path / "stop-now"
    path.touch()
    return {"HPC_MNIST_STOP_FILE": str(path)}


def wait_for_rows(run_dir: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run has logged `rows` epochs (training is under way), while `proc` lives."""
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows in {timeout} s")


def fake_run(root: Path, name: str, ranks: int, samples_per_s: float, epochs: list[tuple[float, float]],
             test_acc: float = 0.95, status: str = "completed") -> Path:
    """A run directory as the trainer writes it, with known numbers."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "world_size": ranks, "num_nodes": 1, "global_batch": 64 * ranks,
        "samples_per_s": samples_per_s, "test_acc": test_acc}))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "epoch_time_s": t, "val_acc": acc}) + "\n" for i, (t, acc) in enumerate(epochs)))
    return run_dir

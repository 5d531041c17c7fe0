"""Stopped anywhere, continued by the same command: the end is the uninterrupted run's, bit for bit (metrics,
weights, test accuracy), at any world size, after a crash right after a timed checkpoint, and after torchrun
restarts a group whose worker was killed."""

import os
import signal
import subprocess

import pytest
import torch

from helpers.commands import LONG_EPOCHS, QUICK_MLP, SHORT_CNN, SMALL_CNN, ranks, torchrun
from helpers.in_process import PeerRank
from helpers.processes import REPO, clean_env, ok, popen, run_train, worker_pids
from helpers.runs import assert_same_run, read_jsonl, status, stop_file, wait_for_rows
from hpc_mnist.core import checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("n", [4])  # 2 ranks: test_signals.py's SIGTERM to one rank; 1: the in-process tests
def test_mid_epoch_stop_and_resume_is_bit_exact(tmp_path, n):
    args = [*SHORT_CNN, "data.synthetic_train=2000", "train.batch_size=16", "train.checkpoint_every=0",
            f"log.dir={tmp_path}"]
    straight = ok(run_train([*args, "log.name=straight"], launcher=ranks(n), timeout=400))
    assert ("oversubscribed" in straight.stdout) == (n > (os.cpu_count() or 1))  # the start panel says so
    result = run_train([*args, "log.name=r"], launcher=ranks(n), env=stop_file(tmp_path), timeout=400)
    assert status(tmp_path / "r")["step"] == 16, result.stderr[-2000:]
    ok(run_train([*args, "log.name=r"], launcher=ranks(n), timeout=400))
    assert_same_run(tmp_path / "straight", tmp_path / "r")


@pytest.mark.slow
def test_readme_main_command_ctrl_c_and_the_same_command_again_ends_as_uninterrupted(tmp_path):
    """The README's main command (torchrun, 2 ranks, configs/mlp.yaml on the bundled MNIST; 2 epochs here), a
    terminal's Ctrl-C (SIGINT to the whole process group) during epoch 2, then the same command again. (Once
    more, it is finished already: test_run_directory.py.)"""
    program = ["-m", "hpc_mnist.train", "--config", "configs/mlp.yaml", "train.epochs=2", "log.console=plain",
               "log.tensorboard=false", f"log.dir={tmp_path}"]
    ok(run_train(["log.name=straight"], program=program, launcher=torchrun(), timeout=400))
    proc = subprocess.Popen([*torchrun(), *program], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_rows(tmp_path / "mlp", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert status(tmp_path / "mlp")["signal"] == "SIGINT"
    result = ok(run_train([], program=program, launcher=torchrun(), timeout=400))
    assert result.stdout.startswith(f"hpc_mnist: continuing {tmp_path / 'mlp'} from checkpoint-")
    assert_same_run(tmp_path / "straight", tmp_path / "mlp")


@pytest.mark.slow
def test_sigkill_under_torchrun_restart_resumes_and_matches(straight, tmp_path):
    proc = popen([*SMALL_CNN, f"train.epochs={LONG_EPOCHS}", f"log.dir={tmp_path}", "log.name=r"],
                 torchrun(2, "--max-restarts=1"))
    wait_for_rows(tmp_path / "r", 2, proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    (tmp_path / "torchrun.log").write_text(out + err)
    assert proc.returncode == 0, err[-3000:]
    assert "hpc_mnist: continuing" in out
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == list(range(1, LONG_EPOCHS + 1))
    assert_same_run(straight / "two", tmp_path / "r")


# --- timed checkpoints inside epochs (train.checkpoint_minutes) ---

def test_timed_checkpoints_inside_epochs_lose_nothing_and_change_nothing(train_here, tmp_path):
    """Due at every check (a tiny train.checkpoint_minutes): checkpoints at steps 16 and 32 of each 38-step
    epoch besides the epoch's own; status.json names the newest while the run goes on; after a crash right
    after epoch 2's step-32 checkpoint the same command ends exactly as an uninterrupted run."""
    args = [*QUICK_MLP, f"log.dir={tmp_path}", "train.keep_checkpoints=20"]
    assert train_here([*args, "log.name=straight"]).code == 0
    run_dir = tmp_path / "r"
    seen: list[dict] = []

    class Watch(PeerRank):  # reads status.json as each check begins, adds nothing
        def __call__(self, flags: torch.Tensor) -> torch.Tensor:
            if flags.numel() > 1:  # a check (not the start-up agreement, before the run directory exists)
                seen.append(status(run_dir))
            return super().__call__(flags)

    assert train_here([*args, "log.name=r", "train.checkpoint_minutes=1e-9"], peer=Watch(10**9)).code == 0
    assert [p.name for p in checkpoint.existing(run_dir)] == [checkpoint.name(*at) for at in (
        (0, 16), (0, 32), (1, 0), (1, 16), (1, 32), (2, 0))]
    assert_same_run(tmp_path / "straight", run_dir)  # writing checkpoints changes no result
    assert (seen[1]["state"], seen[1]["epochs_done"], seen[1]["step"]) == ("running", 0, 16)
    assert seen[1]["checkpoint"] == str(run_dir / checkpoint.name(0, 16))

    # The crash: nothing after epoch 2's step-32 checkpoint was written.
    for path in checkpoint.existing(run_dir)[-1:]:
        path.unlink()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text(rows[0] + "\n")
    (run_dir / "summary.json").unlink()
    (run_dir / "model.pt").unlink()
    result = train_here([*args, "log.name=r"])
    assert result.code == 0 and f"from {checkpoint.name(1, 32)}" in result.out.splitlines()[0], result.out[:300]
    assert_same_run(tmp_path / "straight", run_dir)

"""Train an MNIST classifier on one process or many (torchrun, mpiexec, srun), with metrics from rank 0.

    python -m hpc_mnist.train --config configs/cnn.yaml train.epochs=3
    torchrun --standalone --nproc_per_node=4 -m hpc_mnist.train --config configs/cnn.yaml

Run the same command again to continue a stopped run. Exit codes: 0 completed (or finished already);
2 a usage or input error (one line says which); 3 the loss became non-finite; 4 a collective timed out (a
rank hung; every rank's stack is in the run directory); 5 a rank died (the newest checkpoint is kept); 75
stopped early with a checkpoint (a signal or the deadline; status.json in the run directory says which); 130
a second Ctrl-C stopped it at once (130 or 143 also: a signal during a new run's start-up, nothing written).
torchrun reports any of these but 0 as 1.

run() is the story of a run; the Trainer (training/trainer.py) holds the model, data, optimizer and the step;
the RunController (training/controller.py) decides when to checkpoint, log and stop, and writes status.json and
summary.json.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch

from hpc_mnist.core import config, models
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import check_root
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import badhosts, deadline, dist, labels, launchers, logger, rundir, stopfile
from hpc_mnist.runtime.signals import StopRequest
from hpc_mnist.runtime.stopping import StopAgreement
from hpc_mnist.training.checkpointer import Checkpointer
from hpc_mnist.training.controller import Result, RunController
from hpc_mnist.training.state import Position
from hpc_mnist.training.trainer import Trainer


def run(cfg: Config, config_file: str | None = None) -> Result:
    """Start, continue or report the run this configuration names; callable from a notebook or a script."""
    started = time.perf_counter()
    with StopRequest() as stop:  # from the start: a scheduler's signal during start-up still stops cleanly
        run_dir = rundir.path_for(cfg, config_file)
        if cfg.log.debug:
            dist.debug_environment(str(run_dir))
        rt = dist.setup(cfg.dist, cfg.train.device)
        dist.on_main(lambda: check_root(cfg.data))  # every setting checked before "nothing to do"
        plan = dist.on_main(lambda: rundir.plan(cfg, run_dir))
        if plan.action == "finished":
            return _finished(cfg, rt, run_dir, plan)
        watched = stopfile.path_for(run_dir)  # `hpc-mnist stop` writes it; a job script's time-limit warning too
        agreement = StopAgreement(stop, dist.on_main(lambda: deadline.resolve(cfg.train, stop_file=watched)),
                                  cfg.train.checkpoint_minutes)
        trainer = Trainer(cfg, rt, run_dir)
        if plan.action == "new" and not plan.checkpoint and (interrupted := agreement.before_start(rt.device)):
            return _not_started(rt, run_dir, interrupted, trainer)
        checkpointer = Checkpointer(trainer)
        pos, notes = checkpointer.restore(plan.checkpoint) if plan.checkpoint else (Position(), [])
        controller = RunController(trainer, checkpointer, pos, agreement, started)
        notes += trainer.size_notes() + rundir.name_notes(cfg, config_file) + badhosts.panel_notes(run_dir)
        with controller.running(plan.notes + notes):
            for epoch in controller.epochs():
                for step, x, y in controller.steps(epoch):  # checkpoints and stops happen between steps
                    loss, logits = trainer.step(x, y)
                    controller.meter.add(step, loss, logits, y)
                controller.end_epoch(epoch)
            controller.finish()
        return controller.result


def _not_started(rt: dist.Runtime, run_dir: Path, interrupted: str, t: Trainer) -> Result:
    """A stop request during a new run's start-up: nothing has trained, so nothing is written (exit 128 + the
    signal, as a shell reports a process it stopped)."""
    if rt.is_main:
        print(f"hpc_mnist: {interrupted} during start-up, before the first step: stopped with nothing written (no "
              f"{run_dir}); the same command starts the run", flush=True)
    return Result({"status": "not started", "signal": interrupted}, t.model, 128 + signal.Signals[interrupted])


def _finished(cfg: Config, rt: dist.Runtime, run_dir: Path, plan: rundir.Plan) -> Result:
    """The run this command names has trained all its epochs: say so and change nothing."""
    status = plan.status or {}
    if rt.is_main:
        print(f"hpc_mnist: run {run_dir} finished already ({cfg.train.epochs} epochs); nothing to do. Choose "
              "another log.name to train anew, or raise train.epochs to continue it.", flush=True)
        for note in plan.notes:
            print(f"note: {note}", flush=True)
    model = models.build(cfg.model)
    if (run_dir / "model.pt").exists():
        model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return Result({**status, "status": "finished already"}, model)


def main(argv: list[str] | None = None) -> int:
    labels.label_output(launchers.guess_rank())  # ranks other than 0: every line they print names them
    logger.survive_a_gone_reader()  # `... | head`, a dropped ssh session: the run goes on
    args = config.parser("python -m hpc_mnist.train", __doc__.split("\n\n")[0], __doc__.split("\n\n")[-1]) \
        .parse_args(argv)
    try:
        try:
            cfg = config.build(args.config, args.overrides)
        except UserError as e:
            e.on_all_ranks = True  # every rank read the same input: say it once
            raise
        return run(cfg, args.config).exit_code
    except UserError as e:
        dist.report_error(e)
        return e.exit_code
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())

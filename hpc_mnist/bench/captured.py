"""The trainer's step without its reporting, as it is or compiled (torch.compile) or captured whole as one CUDA
graph: what the GPU benchmark sets beside the trainer's own loop (ProjectLoop).

The model, data, optimizer and precision are the Trainer's own; a step is its step on a full batch (gather,
normalise, forward, loss, backward, optimizer) with no schedule, no meter and no timing marks. Modes:

    eager           that step, one kernel launch at a time
    graphs          the whole step captured once as a CUDA graph and replayed (CUDA only; not with fp16, whose
                    GradScaler reads the gradients on the host): the batch's positions are the graph's one input
    compile         the model through torch.compile (its default mode); the optimizer eager
    compile+graphs  torch.compile's mode="reduce-overhead": its own CUDA graphs of forward and backward
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from hpc_mnist.core import precision
from hpc_mnist.core.config import Config
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import dist
from hpc_mnist.training.trainer import Trainer

MODES = ("eager", "graphs", "compile", "compile+graphs")
GRAPH_WARMUP = 3  # eager steps on a side stream before the capture (PyTorch's CUDA-graph recipe)


class CapturedLoop:
    """The Trainer's step in one of MODES, driven so many steps at a time (as ProjectLoop, for bench.throughput)."""

    def __init__(self, cfg: Config, rt: dist.Runtime, scratch: Path, mode: str = "eager"):
        if mode not in MODES:
            raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.trainer = t = Trainer(cfg, rt, scratch)
        self.device, self.mode, self.batch_size = rt.device, mode, cfg.train.batch_size
        if mode == "graphs" and rt.device.type != "cuda":
            raise UserError(f"CUDA graphs need a CUDA device, not {rt.device}")
        if mode == "graphs" and t.data.train.index.device != rt.device:
            raise UserError("CUDA graphs need the data on the GPU (data.resident=true): a capture cannot read the host")
        if mode == "graphs" and t.amp == "fp16":
            raise UserError("fp16's GradScaler checks the gradients on the host, which a CUDA graph cannot hold: "
                            "capture with bf16 or fp32")
        self.model = t.model
        self.forward: Callable[[torch.Tensor], torch.Tensor] = t.model
        if mode.startswith("compile"):
            self.forward = torch.compile(t.model, mode="reduce-overhead" if mode == "compile+graphs" else None)
        if mode == "graphs":
            for group in t.optimizer.param_groups:
                group["capturable"] = True  # Adam's step count on the GPU, where the graph can update it
        self.positions = torch.zeros(self.batch_size, dtype=torch.long, device=t.data.train.index.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps_done = 0
        self.loss = torch.zeros((), device=rt.device)  # the last step's loss (a graph's static output)
        self._epoch = 0

    def _forward_backward(self) -> torch.Tensor:
        t = self.trainer
        x, y = t.batch(t.data.train, self.positions)
        with precision.autocast(t.amp, self.device, cache=self.mode != "graphs"):
            loss = t.loss(self.forward(x), y)
        t.scaler.scale(loss).backward()
        return loss.detach()

    def _eager_step(self) -> None:
        t = self.trainer
        if self.mode == "compile+graphs":
            torch.compiler.cudagraph_mark_step_begin()  # a new training step: earlier graph outputs may be reused
        t.optimizer.zero_grad(set_to_none=True)
        self.loss = self._forward_backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()

    def _capture(self) -> None:
        """Record one whole step; the gradients the capture allocates stay the graph's own."""
        t = self.trainer
        t.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._forward_backward()
            t.optimizer.step()

    def step(self, positions: torch.Tensor) -> None:
        """One training step on these sample positions (a full batch)."""
        self.positions.copy_(positions)
        if self.mode != "graphs":
            self._eager_step()
        elif self.steps_done < GRAPH_WARMUP:  # on a side stream, as captures require
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._eager_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self._capture()  # capturing runs nothing: the replay below is this step
            self.graph.replay()
        self.steps_done += 1

    def _batches(self) -> Iterator[torch.Tensor]:
        """Full batches of the trainer's epochs, one epoch after another (a short last batch is left out)."""
        while True:
            self._epoch += 1
            yield from (b for b in self.trainer.order(self._epoch) if len(b) == self.batch_size)

    def steps(self, n: int) -> Callable[[], None]:
        """`n` training steps as one call, to time."""
        it = self._batches()

        def train_n_steps() -> None:
            self.model.train()
            for _ in range(n):
                self.step(next(it))
        return train_n_steps

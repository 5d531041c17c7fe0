"""Where the tutorial CNN's training step goes on a CPU, against the machine's FLOP bound.

    python benchmarks/cnn_profile.py [--batch 128] [--steps 30] [--threads 2] [--markdown FILE] [--json FILE]

The bound: FLOPs per sample, forward and backward (counted by torch.utils.flop_counter), at the speed of a
large matmul in the precision the trainer picks here. The step: the trainer's own `train_on` on the
bundled MNIST (data gather, forward, loss, backward, optimizer, metrics), timed, then traced with
torch.profiler and its operators' own time grouped by what they do. The ceiling the convolution kernels
set: each convolution pass timed alone at the trainer's shapes and memory format. And the evaluation's
share of an epoch, since every epoch also scores the validation and test splits.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpc_mnist.core import config
from hpc_mnist.runtime import dist
from hpc_mnist.training import trainer

CONFIG = Path(__file__).parents[1] / "configs" / "cnn.yaml"
# torch.profiler operator -> what it does in this model (self time, so nothing is counted twice)
GROUPS = {
    "aten::mkldnn_convolution": "convolution forward",
    "aten::convolution_backward": "convolution backward",
    "aten::bernoulli_": "dropout: random mask",
    "aten::max_pool2d_with_indices": "max-pool",
    "aten::max_pool2d_with_indices_backward": "max-pool",
    "aten::fill_": "max-pool",  # its backward zero-fills the 2x2 windows' gradient before scattering
    "aten::clamp_min": "ReLU",
    "aten::threshold_backward": "ReLU",
    "aten::mm": "dense layers",
    "aten::addmm": "dense layers",
    "aten::index_select": "data gather",
    "aten::_log_softmax": "loss",
    "aten::_log_softmax_backward_data": "loss",
    "aten::nll_loss_forward": "loss",
    "aten::nll_loss_backward": "loss",
}
OPTIMIZER_OPS = ("aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt", "aten::_fused_adam")


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of `fn` over `reps` calls after one warm-up call."""
    fn()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def matmul_flops(dtype: torch.dtype, n: int = 2048) -> float:
    """FLOP/s of an n x n matmul: the speed a dense layer or a convolution lowered to one could reach."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 5 if dtype == torch.float32 else 1)


def flops_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def convolution_passes(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Each convolution's forward, input-gradient and weight-gradient passes timed alone at the shapes and
    memory format it sees in training, with their FLOP/s."""
    inputs: dict[nn.Conv2d, torch.Tensor] = {}

    def keep(conv: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs[conv] = args[0].detach()

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    rows = []
    first = next(iter(inputs), None)
    for conv, inp in inputs.items():
        w, stride = conv.weight.detach(), list(conv.stride)
        # "same" at stride 1 as symmetric padding: exact for odd kernels (the presets'), a pixel more for even ones
        pad = [k // 2 for k in conv.kernel_size] if conv.padding == "same" else list(conv.padding)
        grad = torch.randn_like(F.conv2d(inp, w, stride=stride, padding=pad))
        flops = 2 * grad.numel() * conv.in_channels * w.shape[2] * w.shape[3]

        def backward(mask: list[bool], inp=inp, w=w, grad=grad, pad=pad, stride=stride) -> object:
            return torch.ops.aten.convolution_backward(grad, inp, w, [w.shape[0]], stride, pad, [1, 1], False,
                                                       [0, 0], 1, mask)

        passes = {"forward": timed(lambda inp=inp, w=w, b=conv.bias, pad=pad, stride=stride:
                                   F.conv2d(inp, w, b, stride=stride, padding=pad), 10),
                  "weight gradient": timed(lambda: backward([False, True, True]), 10)}
        if conv is not first:  # the first layer's input is the data (or its pixel blocks): no gradient to compute
            passes["input gradient"] = timed(lambda: backward([True, False, False]), 10)
        for name, seconds in passes.items():
            rows.append({"layer": f"conv {conv.in_channels}->{conv.out_channels}", "pass": name,
                         "ms": seconds * 1e3, "gflops": flops / seconds / 1e9})
    return rows


def profile(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = config.build(str(args.config), [f"train.batch_size={args.batch}", "train.seed=0", *args.override])
    with TemporaryDirectory() as scratch:
        rt = dist.Runtime(0, 0, 1, 1, "none", torch.device("cpu"), None, args.threads, ("local",))
        t = trainer.Trainer(cfg, rt, Path(scratch))
        batches = t.order(1)
        warm, timed_batches = batches[:3], batches[3:3 + args.steps]
        traced = batches[3 + args.steps:3 + args.steps + 10]
        t.train_on(warm)

        start = time.perf_counter()
        t.train_on(timed_batches)
        step_s = (time.perf_counter() - start) / len(timed_batches)

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t.train_on(traced)
        groups: dict[str, float] = {}
        for event in prof.key_averages():
            if event.self_cpu_time_total <= 0:
                continue
            group = GROUPS.get(event.key) or ("optimizer (Adam)" if event.key.startswith(OPTIMIZER_OPS) else
                                              "everything else")
            groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e3 / len(traced)
        traced_ms = sum(groups.values())

        x, y = t.data.batch(t.data.train, batches[0])
        x = x.contiguous(memory_format=torch.channels_last) if t.channels_last else x
        flops = flops_per_sample(t.model, x, y)
        eval_s = timed(lambda: t.evaluate(t.data.test), 1) / len(t.data.test)
        epoch_train_s = step_s * len(batches)
        epoch_eval_s = eval_s * (len(t.data.test) + len(t.data.val))
        convs = convolution_passes(t.model, x)
        amp = t.amp
    peak = matmul_flops(torch.bfloat16 if amp == "bf16" else torch.float32)
    bound = peak / flops
    samples_s = args.batch / step_s
    conv_ms = sum(r["ms"] for r in convs)
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()},
        "command": f"python benchmarks/cnn_profile.py --config {args.config} "
                   + "".join(f"--override {o} " for o in args.override)
                   + f"--batch {args.batch} --steps {args.steps} --threads {args.threads}",
        "model": "Tutorial CNN" if args.config == CONFIG else f"{args.config.name} CNN",
        "batch": args.batch, "precision": amp, "channels_last": t.channels_last,
        "matmul_gflops": peak / 1e9, "flops_per_sample": flops, "bound_samples_s": bound,
        "samples_s": samples_s, "share_of_bound": samples_s / bound, "step_ms": step_s * 1e3,
        "traced_step_ms": traced_ms, "breakdown_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "convolutions": convs, "convolution_ceiling_samples_s": args.batch / (conv_ms / 1e3),
        "evaluation_share_of_epoch": epoch_eval_s / (epoch_train_s + epoch_eval_s),
    }


def markdown(r: dict) -> str:
    lines = [f"{r['model']}, batch {r['batch']}, {r['precision']}{' + channels_last' if r['channels_last'] else ''}, "
             f"{r['machine']['threads']} threads, torch {r['machine']['torch']} ({r['machine']['isa']}); "
             f"`{r['command']}`", "",
             f"- bound: {r['flops_per_sample'] / 1e6:.1f} MFLOP/sample (forward + backward) at "
             f"{r['matmul_gflops']:.0f} GFLOP/s (2048^2 matmul, {r['precision']}) = "
             f"**{r['bound_samples_s']:,.0f} samples/s**",
             f"- the trainer's step: {r['step_ms']:.1f} ms = **{r['samples_s']:,.0f} samples/s, "
             f"{r['share_of_bound']:.0%} of the bound**",
             f"- the convolutions alone (each pass timed in isolation): "
             f"{r['convolution_ceiling_samples_s']:,.0f} samples/s if nothing else ran "
             f"({r['convolution_ceiling_samples_s'] / r['bound_samples_s']:.0%} of the bound)",
             f"- evaluation (validation + test, every epoch): {r['evaluation_share_of_epoch']:.0%} of an epoch", "",
             "| where a step goes (torch.profiler, own time) | ms per step | share |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v:.1f} | {v / r['traced_step_ms']:.0%} |" for k, v in r["breakdown_ms"].items()]
    lines += ["", "| convolution pass (alone) | ms | GFLOP/s |", "| --- | --- | --- |"]
    lines += [f"| {c['layer']} {c['pass']} | {c['ms']:.1f} | {c['gflops']:.0f} |" for c in r["convolutions"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=CONFIG, help="the preset to profile (default configs/cnn.yaml)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps (10 more are traced)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", type=Path, help="append the report here")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    report = profile(args)
    text = markdown(report)
    print(text)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(text + "\n\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

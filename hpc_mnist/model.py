"""The scaling model's command line (`hpc-mnist model`): predict step time, samples/s and efficiency at any size.

    python -m hpc_mnist.model                                # Polaris, 1 to 1,024 nodes
    python -m hpc_mnist.model --comm n2.txt --comm n8.txt --check n540.txt    # fit small, check large
    python -m hpc_mnist.model --comm comm.json --compute-ms cnn:128=4.1 --ranks-per-node 4
    python -m hpc_mnist.model --predict-ranks 8,64,512 --json predicted.json

A weak-scaling step on n ranks takes the rank's own compute t_c(b) (forward, backward, optimizer at per-rank
batch b) plus the gradient all-reduce of S bytes that DDP adds:

    no overlap:   t_step = t_c + t_allreduce(S, n)
    with overlap: t_step = t_c + max(0, t_allreduce(all buckets but the last) - backward share x t_c)
                  + t_allreduce(last bucket)       (DDP reduces buckets during backward; the last one after it)

Efficiency is t_c / t_step: throughput against n x one rank without communication. t_allreduce comes from
`perf.allreduce`: fitted to all-reduce sweeps (this project's `comm --json` or nccl-tests' output, `--comm`,
any number of rank counts); without `--comm`, to ALCF's published Polaris sweeps at 2, 8 and 540 nodes
(hpc_mnist/sweeps/). Fitted on the 2- and 8-node sweeps alone, it predicted the 540-node one (270x the ranks)
within 38% at 4 B, 64 KiB, 1 MiB, 4 MiB and 64 MiB, 24% in the median over 4 B-64 MiB
(benchmarks/allreduce-model-validation.md). Compute per step is measured (`--compute-ms`) or assumed (an A100).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from hpc_mnist.errors import ArgumentParser, UserError, comma_list, report, writable_file
from hpc_mnist.perf import allreduce
from hpc_mnist.perf.step import describe, polaris_report


def markdown(predicted: dict[str, Any], nodes_shown: list[int], net: Any) -> str:
    lines = [f"Network: {describe(net)}; {predicted['ranks_per_node']} ranks per node.", ""]
    for name, entry in predicted["models"].items():
        buckets = " + ".join(f"{b / 1e6:.3f}" for b in entry["ddp_buckets"])
        lines += [f"**{name}** ({entry['gradient_bytes'] / 1e6:.3f} MB of gradients in DDP buckets of {buckets} MB, "
                  f"the last not overlappable; compute {entry['compute']['source']})", "",
                  "| batch/rank | nodes | compute us | all-reduce us (latency + bandwidth) | efficiency | "
                  "with overlap | samples/s | steps/epoch |", "|" + " --- |" * 8]
        for b, data in entry["batches"].items():
            for r in data["rows"]:
                if r["nodes"] not in nodes_shown:
                    continue
                lines.append(f"| {b} | {r['nodes']} | {r['compute_s'] * 1e6:.0f} | "
                             f"{(r['latency_s'] + r['bandwidth_s']) * 1e6:.0f} ({r['latency_s'] * 1e6:.0f} + "
                             f"{r['bandwidth_s'] * 1e6:.0f}) | {r['efficiency']:.2f} | {r['efficiency_overlap']:.2f} | "
                             f"{r['samples_per_s']:,.0f} | {r['steps_per_epoch']:.2f} |")
        lines.append("")
        for b, data in entry["batches"].items():
            limit = data["global_batch_exceeds_data_at"]
            lines.append(f"- batch {b}: efficiency below 0.9 {data['below_90']}; below 0.5 {data['below_50']}; "
                         + (f"the global batch exceeds the 48,000 training digits from {limit} nodes" if limit
                            else "the data lasts"))
        lines.append("")
    return "\n".join(lines)


def check_text(net: allreduce.AllReduceModel, measured: allreduce.Sweep) -> tuple[str, dict[str, Any]]:
    """The model's error on a sweep it was (presumably) not fitted to: every size, the median, the worst."""
    rows = allreduce.errors(net, measured)
    up_to_64m = [abs(r["error"]) for r in rows if r["bytes"] <= 64 * 2**20]
    median = statistics.median(up_to_64m) if up_to_64m else float("nan")
    lines = [f"Check against {measured.source} ({measured.ranks:,} ranks; fitted at "
             f"{', '.join(str(n) for n in net.fitted_ranks)}):", "| bytes | measured us | predicted us | error |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['bytes']:,} | {r['measured_us']:.1f} | {r['predicted_us']:.1f} | {r['error']:+.0%} |"
              for r in rows]
    lines.append(f"Median |error| over 4 B-64 MiB: {median:.0%}; largest: {max(up_to_64m):.0%}.")
    return "\n".join(lines), {"source": measured.source, "ranks": measured.ranks, "rows": rows,
                              "median_abs_error_to_64MiB": median}


def _compute_ms(items: list[str]) -> dict[tuple[str, int], float]:
    """'cnn:128=4.1' -> {('cnn', 128): 4.1}: a measured step's milliseconds (forward, backward, optimizer)."""
    out = {}
    for item in items:
        for part in item.split(","):
            try:
                key, ms = part.split("=")
                name, batch = key.split(":")
                out[(name, int(batch))] = float(ms)
            except ValueError:
                raise UserError(f"--compute-ms wants MODEL:BATCH=MS (e.g. cnn:128=4.1), not {part!r}") from None
            if name not in ("linear", "mlp", "cnn") or out[(name, int(batch))] <= 0:
                raise UserError(f"--compute-ms {part!r}: the model is linear, mlp or cnn and the time positive")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="hpc-mnist model", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comm", action="append", default=[], metavar="FILE",
                   help="an all-reduce sweep (comm --json, or nccl-tests all_reduce_perf output); repeat for "
                        "several rank counts (default: Polaris' published sweeps)")
    p.add_argument("--check", action="append", default=[], metavar="FILE",
                   help="a sweep to compare the fitted model with (e.g. a larger node count than --comm's)")
    p.add_argument("--predict-ranks", type=comma_list(int, positive=True), metavar="N[,N...]",
                   help="all-reduce times at these rank counts, for each message size of the inputs (--json)")
    p.add_argument("--compute-ms", action="append", default=[], metavar="MODEL:BATCH=MS",
                   help="a measured step (ms) instead of the assumed A100's, e.g. cnn:128=4.1 (repeatable)")
    p.add_argument("--batches", type=comma_list(int, positive=True), default="32,128,512",
                   help="per-rank batches (default: 32,128,512)")
    p.add_argument("--ranks-per-node", type=int, default=4, help="(default: 4, Polaris' A100s)")
    p.add_argument("--max-nodes", type=int, default=1024, help="(default: 1024)")
    p.add_argument("--json", type=Path, help="write the predictions as JSON (all-reduce times under 'allreduce')")
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        json_out = writable_file(args.json) if args.json else None  # before any work: no figures lost to a typo
        markdown_out = writable_file(args.markdown) if args.markdown else None
        sweeps = [allreduce.read_sweep(f) for f in args.comm] or allreduce.shipped_sweeps()
        net = allreduce.fit(sweeps)
        checks = [check_text(net, allreduce.read_sweep(f)) for f in args.check]
        nodes = [2**k for k in range(int(math.log2(max(1, args.max_nodes))) + 1)]
        batches, measured = args.batches, _compute_ms(args.compute_ms)
        predict_ranks = args.predict_ranks or [n * args.ranks_per_node for n in nodes]
    except UserError as e:
        return report(e)
    predicted = polaris_report(batches, nodes, args.ranks_per_node, net, measured)
    text = markdown(predicted, [n for n in nodes if n in (1, 2, 8, 32, 128, 512, 1024)], net)
    print(text)
    for check, _ in checks:
        print(check + "\n")
    sizes = sorted({s for sw in sweeps for s in sw.sizes})
    if json_out:
        times = allreduce.predictions(net, predict_ranks, sizes)
        json_out.write_text(json.dumps({**predicted, "allreduce": times, "fitted_to": [sw.source for sw in sweeps],
                                         "checks": [c for _, c in checks]}, indent=2) + "\n")
    if markdown_out:
        markdown_out.write_text(text + "\n" + "".join(c + "\n\n" for c, _ in checks))
    return 0



if __name__ == "__main__":
    sys.exit(main())

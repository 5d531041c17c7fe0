"""Rank 0's report on the terminal: one row per rank, then one line per check and the verdict."""

from __future__ import annotations

from typing import Any

from hpc_mnist.doctor.checks import cpu_ranges


def show(report: dict[str, Any]) -> None:
    """The table of ranks (host, device, GPU, CPU affinity, threads) and each check's verdict."""
    from rich.table import Table

    from hpc_mnist.runtime.logger import make_console

    console = make_console()
    table = Table(title=f"hpc_mnist doctor: {len(report['ranks'])} rank(s), backend {report['backend']}")
    for header in ("rank", "host", "local rank", "device", "GPU UUID / bus id", "CPU affinity", "threads"):
        table.add_column(header, justify="right" if header in ("rank", "local rank", "threads") else "left")
    for r in report["ranks"]:
        gpu = " / ".join(x for x in (r["gpu_uuid"], r["gpu_bus"]) if x) or "-"
        table.add_row(str(r["rank"]), r["host"], str(r["local_rank"]), r["device"], gpu, cpu_ranges(r["cpus"]),
                      str(r["threads"]))
    console.print(table)
    marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}
    for c in report["checks"]:
        console.print(f"{marks[c['status']]} {c['name']}: {c['message']}", soft_wrap=True)
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    console.print("healthy" if report["healthy"] else f"[red]unhealthy[/]: {', '.join(failed)}")

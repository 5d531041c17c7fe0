"""Healing inside the job (issue 29), the same scenario on either lab: a job of 2 hosts + 1 spare (SPARE_NODES=1),
2 ranks a host, default settings, and one fault on the second training host after the first epoch: (a) its
ranks frozen with SIGSTOP (the host answers), (b) its network dropping every packet (a firewall rule inside its
namespace: no resets), (c) the pre-flight check failing there (the doctor's test hook), (d) one of its ranks
killed with SIGKILL. The job must name the fault, end every process of the launch, relaunch inside the job on
the spare, never use the bad host again, and end with the straight run's weights, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.jobs import assert_same_weights
from cluster.labs import Lab
from helpers.runs import status
from hpc_mnist.runtime.peers import process_exists

FAULTS = ["sigstop", "packets dropped", "doctor", "sigkill"]
NAMED_WITHIN, GONE_WITHIN = 60, 90  # seconds from the fault (issue 29)
# The relaunch's first step: within 30 s of the fault is a speed target, checked where benchmarks/heal_times.py
# measures on an idle machine ($HPC_MNIST_HEAL_TIMES set); in the suite, beside 4 workers and the other lab, the
# ranks' start-up alone took 40 s, so there it only has to come.
RELAUNCHED_WITHIN, RELAUNCHED_UNDER_LOAD = 30, 150
DROP = [["iptables", "-A", "INPUT", "-j", "DROP"], ["iptables", "-A", "OUTPUT", "-j", "DROP"]]


@dataclass
class Healing:
    """Seconds from the fault: to the line (status.json failed), to every process of the launch gone, and to
    the relaunch's first step (status.json's first_step_at); None where it never came."""

    named: float | None
    gone: float | None
    first_step: float | None

    def __str__(self) -> str:
        def say(x: float | None) -> str:
            return "never" if x is None else f"{x:.1f} s"
        return (f"named {say(self.named)}, every rank gone {say(self.gone)}, "
                f"relaunch's first step {say(self.first_step)}")


def watch(run_dir: Path, pids: list[int], at: float, timeout: float = 180) -> Healing:
    """Poll the run from the fault (`at`, time.time()) until its relaunch has stepped and the old launch's
    processes are gone."""
    named = gone = first = None
    while time.time() - at < timeout and (gone is None or first is None):
        try:
            st = status(run_dir)
        except (OSError, ValueError):
            st = {}  # between a write's two halves
        now = time.time() - at
        if named is None and st.get("state") == "failed":
            named = now
        if gone is None and not any(process_exists(pid) for pid in pids):
            gone = now
        if first is None and (st.get("first_step_at") or 0) > at:
            first = st["first_step_at"] - at
            named = named if named is not None else first  # a fault the launch never saw (the doctor's)
        time.sleep(0.2)
    return Healing(named, gone, first)


def fault_on(lab: Lab, host: str, run_dir: Path, fault: str) -> tuple[list[int], float]:
    """Bring `fault` to `host`'s ranks; (every rank's pid, the time of the fault)."""
    ranks = json.loads((run_dir / "ranks.json").read_text())
    there = [pid for h, pid in zip(ranks["hosts"], ranks["pids"], strict=True) if h == host]
    assert len(there) == 2, (host, ranks)
    at = time.time()
    if fault == "sigstop":
        for pid in there:
            os.kill(pid, signal.SIGSTOP)
    elif fault == "sigkill":
        os.kill(there[-1], signal.SIGKILL)
    elif fault == "packets dropped":
        for rule in DROP:
            lab.on_host(host, rule)
    return ranks["pids"], at


def mend(lab: Lab, host: str, fault: str) -> None:
    """Undo a fault the host would keep after the test (its firewall rules)."""
    if fault == "packets dropped":
        for rule in DROP:
            lab.on_host(host, [rule[0], "-D", *rule[2:]], check=False)


def record(fault: str, healing: Healing) -> None:
    """Append the case's figures to $HPC_MNIST_HEAL_TIMES (a JSON-lines file), where benchmarks/heal_times.py
    collects them."""
    path = os.environ.get("HPC_MNIST_HEAL_TIMES")
    if path:
        row = {"fault": fault, **{k: None if v is None else round(v, 2) for k, v in healing.__dict__.items()}}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def check_healed(run_dir: Path, bad: str, spare: str, healing: Healing, fault: str, uninterrupted: Path,
                 log: str) -> None:
    """What every case must show once its job has ended."""
    print(f"{fault}: {healing}")
    record(fault, healing)
    final = status(run_dir)
    assert final["state"] == "completed", (final, log[-3000:])
    assert_same_weights(run_dir / "model.pt", uninterrupted)
    assert list(json.loads((run_dir / "bad-hosts.json").read_text())["hosts"]) == [bad], log[-3000:]
    hosts = json.loads((run_dir / "ranks.json").read_text())["hosts"]
    assert bad not in hosts and spare in hosts, hosts  # the relaunch: on the spare, never on the bad host
    if fault == "doctor":
        assert f"{bad} failed the pre-flight check" in log, log[-3000:]
        return
    assert "relaunching inside job" in log, log[-3000:]
    assert healing.named is not None and healing.named < NAMED_WITHIN, (healing, log[-3000:])
    assert healing.gone is not None and healing.gone < GONE_WITHIN, (healing, log[-3000:])
    within = RELAUNCHED_WITHIN if os.environ.get("HPC_MNIST_HEAL_TIMES") else RELAUNCHED_UNDER_LOAD
    assert healing.first_step is not None and healing.first_step < within, healing

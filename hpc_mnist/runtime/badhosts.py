"""The hosts a run must not use again, and the good hosts left of an allocation, in one place.

A host is named bad by the trainer's status.json (`bad_hosts`: the hosts of ranks lost or quiet), recorded
after the launch by `python -m hpc_mnist.job after-launch`, and kept in the run directory, so that a requeue, a
PBS successor or (later) a relaunch inside the allocation never lands on it again:

    <run_dir>/bad-hosts.json   {"hosts": {"<hostname>": {"why": "<one line>", "when": "<ISO 8601 UTC>",
                                                          "job": "<job id or empty>"}}}

`hpc-mnist hosts RUN_DIR` shows it and `--clear [HOST ...]` clears it (hpc_mnist/hosts.py). Standard library
only (and hpc_mnist.errors): the job scripts run this without torch.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from hpc_mnist.errors import UserError
from hpc_mnist.runtime import status

NAME = "bad-hosts.json"  # in the run directory


def read(run_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The recorded hosts ({} when none); a file that is not such a record is one line saying which."""
    path = Path(run_dir) / NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        hosts = json.loads(text).get("hosts")
    except (ValueError, AttributeError):
        hosts = None
    if not isinstance(hosts, dict) or not all(isinstance(v, dict) for v in hosts.values()):
        raise UserError(f"{path} is not a record of bad hosts ({{\"hosts\": {{HOST: {{...}}}}}}): fix or delete it")
    return hosts


def _write(run_dir: str | os.PathLike, hosts: dict[str, dict[str, str]]) -> None:
    path = Path(run_dir) / NAME
    try:
        status.write(path, {"hosts": hosts})  # atomically, as status.json
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def add(run_dir: str | os.PathLike, hosts: list[str], why: str, job: str = "") -> list[str]:
    """Record `hosts` as bad (a host named again keeps its first record); the hosts that were new."""
    recorded = read(run_dir)
    new = [h for h in dict.fromkeys(hosts) if h and h not in recorded]
    if new:
        _write(run_dir, {**recorded, **{h: {"why": why, "when": now(), "job": job} for h in new}})
    return new


def clear(run_dir: str | os.PathLike, hosts: list[str] = ()) -> list[str]:
    """Forget `hosts` (all when none are named); the hosts forgotten. A named host that is not recorded is a
    mistake, said in one line (a typo must not pass for a cleared host)."""
    recorded = read(run_dir)
    unknown = [h for h in hosts if h not in recorded]
    if unknown:
        raise UserError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not recorded as bad in "
                        f"{Path(run_dir) / NAME} (recorded: {', '.join(recorded) or 'none'})")
    gone = list(hosts) or list(recorded)
    if gone:
        _write(run_dir, {h: v for h, v in recorded.items() if h not in gone})
    return gone


def why(st: dict[str, Any]) -> str:
    """One line for the record, from the status that named the hosts bad."""
    ranks = st.get("lost_ranks") or ([st["rank"]] if st.get("rank") is not None else [])
    said = f"{st.get('reason') or 'named bad'}"
    if ranks:
        said += f" (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})"
    return said + (f" in epoch {st['epochs_done'] + 1}" if isinstance(st.get("epochs_done"), int) else "")


def good(allocation: list[str], bad: dict[str, Any] | list[str]) -> list[str]:
    """The allocation's hosts that are not bad, in the allocation's order (what a launch may use)."""
    return [h for h in dict.fromkeys(allocation) if h not in bad]


def check(allocation: list[str], bad: dict[str, Any], needed: int, run_dir: str | os.PathLike) -> list[str]:
    """The good hosts of the allocation; too few of them for the `needed` nodes is one line, before any launch."""
    usable = good(allocation, bad)
    if len(usable) < needed:
        named = sorted(set(allocation) & set(bad))
        raise UserError(f"this job's hosts {', '.join(named)} are recorded as bad in {Path(run_dir) / NAME}, which "
                        f"leaves {len(usable)} of the {needed} node(s) the job needs: not launching; resubmit away "
                        f"from them (sbatch --exclude={','.join(named)}; qsub -l select=...:host=<a good host>) or "
                        f"clear them with `hpc-mnist hosts {run_dir} --clear`")
    return usable


def panel_notes(run_dir: str | os.PathLike) -> list[str]:
    """The start panel's note naming the run's bad hosts (none when there are none)."""
    try:
        hosts = read(run_dir)
    except UserError as e:
        return [str(e)]
    if not hosts:
        return []
    named = "; ".join(f"{h} ({v.get('why', '?')}, {v.get('when', '?')})" for h, v in hosts.items())
    return [f"bad hosts, not used again by this run: {named}; `hpc-mnist hosts {run_dir} --clear` clears them"]

"""The host of a rank that died, from its launcher's own report, for a launch whose ranks could record nothing.

MPICH's mpiexec (Hydra) SIGKILLs every rank within milliseconds of one's death, so no survivor can name it (a
`gone` status), but its report does:

    =   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
    =   PID 26157 RUNNING AT hm-n2
    =   EXIT CODE: 9

Measured on the lab (2 hosts x 2 ranks, a rank SIGKILLed on either host): the host is the dead rank's, as the
launch named it; the PID is the first rank's on that host, whichever died. The report is on mpiexec's standard
output, which the job scripts keep for each training launch (launch/jobs.sh). Standard library only: the job
scripts run this without torch.
"""

from __future__ import annotations

import os
import re

_HYDRA = re.compile(r"BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\s*\n=\s*PID \d+ RUNNING AT (\S+)")


def dead_hosts(text: str) -> list[str]:
    """The hosts a launcher's report names as where a rank died, first first."""
    return list(dict.fromkeys(_HYDRA.findall(text)))


def read(path: str | os.PathLike) -> list[str]:
    """dead_hosts of the report kept in `path` ([] when there is none to read)."""
    try:
        with open(path, errors="replace") as f:
            return dead_hosts(f.read())
    except OSError:
        return []

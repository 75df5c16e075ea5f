"""The open-files limit: every command raises its soft limit to the hard one when it starts.

The default soft limit (1,024) is a compatibility value for programs that still use
``select()``; the hard limit is what the administrator allows. A cluster of 1,000 pods holds
several descriptors per namespace while ``up`` programs it, and ``probe`` holds a socket per
pair in flight, so both need more than the default. Running out anyway is reported in one line
(``errors.open_files_advice``), never as a traceback.
"""

from __future__ import annotations

import contextlib
import resource


def raise_to_hard() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the previous soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # a hard limit the kernel refuses as a soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft


def restore(soft: int) -> None:
    """Put the soft limit back (before handing the process over to a user's command)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def available() -> int | None:
    """How many descriptors this process may hold (None: no limit)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft

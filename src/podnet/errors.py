"""The exception tree of podnet, in one place.

Every error a user can cause maps to one class here, and the CLI maps each class to an exit
code: bad input is exit 2 (and never a traceback), a failure of the machine is exit 1.
Lower-level errors are chained with ``raise ... from`` so the cause is never lost.
"""

from __future__ import annotations

import errno
import resource


class PodnetError(Exception):
    """Base of every error podnet raises on purpose."""

    exit_code = 1


class SpecError(PodnetError):
    """The cluster file is not valid; nothing has been touched."""

    exit_code = 2

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class UsageError(PodnetError):
    """The command line asks for something that cannot be done (unknown cluster, bad target)."""

    exit_code = 2


class PlanError(PodnetError):
    """A valid-looking spec that cannot be realised (for example the address pool is full)."""

    exit_code = 2


class KernelError(PodnetError):
    """The kernel refused a change; carries the namespace and the object concerned."""


class BirdError(PodnetError):
    """A BIRD daemon did not start, refused its configuration, or does not answer."""


class StateError(PodnetError):
    """A cluster's state file cannot be read or written: damaged, unreadable, read-only, a full
    disk. Nothing of the cluster has been changed when this is raised."""


class OwnershipError(PodnetError):
    """The cluster name belongs to another state directory on this machine (namespaces are
    machine-wide, state directories are not)."""


OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def open_files_advice() -> str:
    """What to say when the process ran out of file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"this process may hold {soft} open files (hard limit {hard}): raise the hard limit "
        "(ulimit -Hn, systemd's LimitNOFILE=) and run again"
    )


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError that escaped a command: what failed, and what a user can do."""
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in OUT_OF_FILES:
        return f"too many open files; {open_files_advice()}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where} (podnet changes network namespaces: run it as root)"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}"
    return f"{exc.strerror or exc}{where}"


def out_of_files(exc: BaseException) -> bool:
    """Whether an error was raised from (``raise ... from``) running out of file descriptors."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in OUT_OF_FILES:
            return True
        cause = cause.__cause__
    return False

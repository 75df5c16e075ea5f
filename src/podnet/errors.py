"""The exception tree of podnet, in one place.

Every error a user can cause maps to one class here, and the CLI maps each class to an exit
code: bad input is exit 2 (and never a traceback), a failure of the machine is exit 1.
Lower-level errors are chained with ``raise ... from`` so the cause is never lost.
"""

from __future__ import annotations


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

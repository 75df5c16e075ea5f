"""The typed values the store speaks: keys and values, events, comparisons, operations.

Plain frozen dataclasses with no client library behind them, so that code which only builds
transactions or reads events (the agent's planner side, tests) never imports gRPC. Keys are
text (podnet's keys are paths of Kubernetes names), values are bytes (the caller chooses the
encoding). Revisions are etcd's: one counter for the whole store, bumped by every write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's ``range_end``).

    Podnet's prefixes end in ``/``, so incrementing the last byte never carries.
    """
    raw = bytearray(prefix.encode())
    for i in reversed(range(len(raw))):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1]).decode()
    return "\0"  # every byte 0xff: to the end of the key space


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Event:
    """One change. A DELETE carries the key and the revision of the deletion, value empty."""

    kind: EventKind
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class Listing:
    """Every key under a prefix as of one revision: the snapshot a watch resumes after."""

    items: tuple[KeyValue, ...]
    revision: int


class Target(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    CREATE = "create"
    MOD = "mod"
    LEASE = "lease"


class Op(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction; with ``range_end`` it must hold for every key in the range."""

    key: str
    target: Target
    op: Op
    value: bytes | int
    range_end: str | None = None


def absent(key: str) -> Compare:
    """The key does not exist (its create revision is 0): the condition of every claim."""
    return Compare(key, Target.CREATE, Op.EQUAL, 0)


def unchanged_since(key: str, mod_revision: int) -> Compare:
    """Compare-and-swap: the key was last written at ``mod_revision`` (0: it does not exist)."""
    return Compare(key, Target.MOD, Op.EQUAL, mod_revision)


def no_value_under(prefix: str, value: bytes) -> Compare:
    """No key under ``prefix`` holds ``value``: uniqueness of a value across everyone's keys
    (a pod CIDR claimed by one node) while each writes only keys of its own."""
    return Compare(prefix, Target.VALUE, Op.NOT_EQUAL, value, range_end=prefix_end(prefix))


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


Operation = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """Which branch ran, the revision after it, and what each of its Get operations read.

    ``retried``: an earlier attempt failed after it may have reached etcd, so it may have been
    applied; a compare-and-swap that reports failure then has to read again to know.
    """

    succeeded: bool
    revision: int
    reads: tuple[tuple[KeyValue, ...], ...] = field(default=())
    retried: bool = False


@dataclass(frozen=True)
class Claim:
    """The answer to put-if-absent: whether this caller holds the key, and the key as it is."""

    won: bool
    kv: KeyValue


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int  # seconds, as granted

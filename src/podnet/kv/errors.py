"""What can go wrong with the store, as podnet's errors, and how a client's failure maps to them.

Every class derives from :class:`podnet.errors.PodnetError` (exit 1: a failure of the
environment, never of the user's input), and the etcd store raises them ``from`` the gRPC
error, so the cause stays on the chain. :func:`classify` reads a gRPC status the way etcd
writes it (etcd's ``rpctypes``): it is pure, so the mapping is tested without a server.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from podnet.errors import PodnetError


class StoreError(PodnetError):
    """Base of every store failure."""


class Unreachable(StoreError):
    """No member could serve the request in time: they are down, or quorum is lost.

    ``reasons`` says, per endpoint, what was last heard from it (refused, timed out,
    "no leader", ...), which is what the user needs to know about the cluster.
    """

    def __init__(self, what: str, reasons: Mapping[str, str], waited: float) -> None:
        self.what = what
        self.reasons = dict(reasons)
        self.waited = waited
        detail = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in self.reasons.items())
        super().__init__(f"etcd unreachable: {what} failed for {waited:.1f}s ({detail})")


class Compacted(StoreError):
    """The revision asked for was compacted away: list again, then watch from the listing."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(f"etcd revision {revision} is compacted (history starts at {compact_revision}): relist")


class PermissionDenied(StoreError):
    """The client's identity (its certificate's common name) may not do this."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        super().__init__(f"etcd refused {what}: {detail}")


class LeaseExpired(StoreError):
    """The lease is gone (its TTL ran out, or it was revoked); keys on it are deleted."""

    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"etcd lease {lease:x} has expired")


class Refused(StoreError):
    """etcd answered, and said no for a reason no retry can change (a bad request)."""


class Kind(enum.Enum):
    TRANSIENT = "transient"  # try again, on another member: no leader, leader changed, refused, timed out
    COMPACTED = "compacted"
    DENIED = "denied"
    LEASE_GONE = "lease-gone"
    REFUSED = "refused"


_TRANSIENT_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"}
# etcd passes the client's deadline on to its raft proposal, and a proposal that misses it
# (no quorum to commit it) comes back as UNKNOWN "context deadline exceeded".
_TRANSIENT_DETAILS = ("context deadline exceeded", "context canceled")


def classify(code: str, details: str) -> Kind:
    """The kind of a gRPC failure, from its status code name and etcd's message."""
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "user name not found" in details:
        return Kind.DENIED
    if code == "OUT_OF_RANGE" and "compacted" in details:
        return Kind.COMPACTED
    if code == "NOT_FOUND" and "lease not found" in details:
        return Kind.LEASE_GONE
    if code in _TRANSIENT_CODES or any(t in details for t in _TRANSIENT_DETAILS):
        return Kind.TRANSIENT
    return Kind.REFUSED

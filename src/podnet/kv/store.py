"""The one small interface the distributed mode speaks to its store.

Get, list a prefix at a revision, watch a prefix from a revision, transactions (compare, then,
else), leases. Allocation is :meth:`Store.put_if_absent`, a transaction on create revision 0,
never a read followed by a write. The etcd store (:mod:`podnet.kv.etcd`) implements it;
anything that only needs this interface imports this module, not gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from typing import Protocol

from podnet.kv.model import Claim, Compare, Event, KeyValue, Lease, Listing, Operation, TxnResult


class KeptLease(Protocol):
    lease: Lease
    confirmations: int

    async def lost(self) -> None: ...

    async def confirmed(self, count: int) -> None: ...

    def stop(self) -> None: ...


class Store(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def list(self, prefix: str, revision: int = 0) -> Listing:
        """Every key under ``prefix`` as of ``revision`` (0: now). Raises Compacted."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterable[list[Event]]:
        """Batches of events under ``prefix`` from ``start_revision`` (inclusive), across
        disconnects; raises Compacted (once) when that history is gone."""
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: str, prefix: bool = False) -> int: ...

    async def txn(
        self, compare: Sequence[Compare], then: Sequence[Operation], otherwise: Sequence[Operation] = ()
    ) -> TxnResult: ...

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> Claim: ...

    async def grant(self, ttl: int) -> Lease: ...

    def keep_alive(self, lease: Lease) -> KeptLease: ...

    async def revoke(self, lease: int) -> None: ...

    async def time_to_live(self, lease: int) -> int | None: ...

    async def close(self) -> None: ...

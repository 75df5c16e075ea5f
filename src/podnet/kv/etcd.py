"""The store on a real etcd cluster, over gRPC with TLS (etcd's v3 API through aetcd's bindings).

Why not aetcd's ``Client`` itself: in aetcd 1.0 it dials without TLS only, cannot read a range
at a revision, opens a keep-alive stream per refresh and has no re-watch; its generated
protocol bindings (``aetcd.rpc``) are what is used, driven through ``grpc.aio`` by
:mod:`podnet.kv._members` (failover, retries), :mod:`podnet.kv._watch` (resumption) and
:mod:`podnet.kv._lease` (one keep-alive stream). The measurements behind the choice of gRPC
over etcd's JSON gateway are in docs/distributed.md and ``python -m bench --only etcd``.

Every request runs with a short timeout on the current member, moves on to the next on a
transient failure, and gives up with :class:`Unreachable` after ``Settings.retry_for``.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc.aio
from aetcd import rpc

from podnet.kv import _proto
from podnet.kv._lease import Keeper, Kept
from podnet.kv._members import Members
from podnet.kv._watch import Watch
from podnet.kv.config import Endpoint, Settings, Tls
from podnet.kv.errors import Compacted, LeaseExpired, StoreError
from podnet.kv.model import (
    Claim,
    Compare,
    Delete,
    Get,
    KeyValue,
    Lease,
    Listing,
    Operation,
    Put,
    TxnResult,
    absent,
)


class EtcdStore:
    """A client of one etcd cluster; use as ``async with EtcdStore(...) as store``."""

    def __init__(self, endpoints: Sequence[Endpoint], tls: Tls, settings: Settings | None = None) -> None:
        self.members = Members(tuple(endpoints), tls, settings or Settings())
        self.keeper = Keeper(self.members)

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.keeper.close()
        await self.members.close()

    # --- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        request = _proto.range_request(key)
        response, _ = await self.members.call(f"get {key}", lambda ch, t: rpc.KVStub(ch).Range(request, timeout=t))
        return _proto.key_value(response.kvs[0]) if response.kvs else None

    async def list(self, prefix: str, revision: int = 0) -> Listing:
        """Every key under ``prefix`` at one revision, read in pages pinned to that revision."""
        items: list[KeyValue] = []
        start: str | None = None
        limit = self.members.settings.page_size
        while True:
            request = _proto.range_request(prefix, prefix=True, revision=revision, limit=limit, start=start)
            try:
                response, _ = await self.members.call(
                    f"list {prefix}", lambda ch, t, r=request: rpc.KVStub(ch).Range(r, timeout=t)
                )
            except Compacted as exc:
                raise Compacted(revision, exc.compact_revision) from exc
            revision = revision or response.header.revision
            items += [_proto.key_value(kv) for kv in response.kvs]
            if not response.more:
                return Listing(tuple(items), revision)
            start = items[-1].key + "\0"

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return Watch(self.members, prefix, start_revision)

    # --- writes --------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = _proto.put_request(Put(key, value, lease))
        try:
            response, _ = await self.members.call(f"put {key}", lambda ch, t: rpc.KVStub(ch).Put(request, timeout=t))
        except LeaseExpired as exc:  # etcd's "lease not found": the lease this key hangs on is gone
            raise LeaseExpired(lease) from exc
        return response.header.revision

    async def delete(self, key: str, prefix: bool = False) -> int:
        request = _proto.delete_request(Delete(key, prefix))
        response, _ = await self.members.call(
            f"delete {key}", lambda ch, t: rpc.KVStub(ch).DeleteRange(request, timeout=t)
        )
        return response.header.revision

    async def txn(
        self, compare: Sequence[Compare], then: Sequence[Operation], otherwise: Sequence[Operation] = ()
    ) -> TxnResult:
        """One transaction. ``TxnResult.retried`` is true when an earlier attempt failed after it
        may have been sent: a compare-and-swap that then reports failure must read again."""
        request = rpc.TxnRequest(
            compare=[_proto.compare(c) for c in compare],
            success=[_proto.request_op(op) for op in then],
            failure=[_proto.request_op(op) for op in otherwise],
        )
        what = "transaction on " + (", ".join(sorted({c.key for c in compare} | {op.key for op in then})) or "nothing")
        leases = sorted({op.lease for op in (*then, *otherwise) if isinstance(op, Put) and op.lease})
        try:
            response, failures = await self.members.call(what, lambda ch, t: rpc.KVStub(ch).Txn(request, timeout=t))
        except LeaseExpired as exc:
            raise LeaseExpired(leases[0] if leases else 0) from exc
        return TxnResult(response.succeeded, response.header.revision, _proto.reads(response), retried=failures > 0)

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> Claim:
        """Claim ``key``: create it with ``value`` only if it does not exist, in one transaction.

        The claim is idempotent for its claimant: finding the key already holding exactly this
        value and lease (an earlier attempt whose answer was lost, or a restarted agent taking
        its own claim back) is a win. Claim values must therefore name the claimant.
        """
        result = await self.txn([absent(key)], [Put(key, value, lease)], [Get(key)])
        if result.succeeded:
            return Claim(True, KeyValue(key, value, result.revision, result.revision, 1, lease))
        if not result.reads or not result.reads[0]:  # deleted between the compare and the read: impossible in one txn
            raise StoreError(f"etcd transaction on {key} failed its compare but read nothing")
        holder = result.reads[0][0]
        return Claim(holder.value == value and holder.lease == lease, holder)

    # --- leases --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        request = rpc.LeaseGrantRequest(TTL=ttl)
        response, _ = await self.members.call(
            "lease grant", lambda ch, t: rpc.LeaseStub(ch).LeaseGrant(request, timeout=t)
        )
        if response.error:
            raise StoreError(f"etcd refused a lease of {ttl}s: {response.error}")
        return Lease(response.ID, response.TTL)

    def keep_alive(self, lease: Lease) -> Kept:
        """Renew ``lease`` on the store's one keep-alive stream until stopped or lost."""
        return self.keeper.keep(lease)

    async def revoke(self, lease: int) -> None:
        self.keeper.forget(lease)
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self.members.call(
                f"lease revoke {lease:x}", lambda ch, t: rpc.LeaseStub(ch).LeaseRevoke(request, timeout=t)
            )
        except LeaseExpired:
            return  # already gone: what revoking wanted

    async def time_to_live(self, lease: int) -> int | None:
        """Seconds the lease has left, None when it no longer exists."""
        request = rpc.LeaseTimeToLiveRequest(ID=lease)
        response, _ = await self.members.call(
            f"lease ttl {lease:x}", lambda ch, t: rpc.LeaseStub(ch).LeaseTimeToLive(request, timeout=t)
        )
        return None if response.TTL < 0 else response.TTL

    # --- maintenance (podnet's own commands and tests) ------------------------------------

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await self.members.call(f"compact {revision}", lambda ch, t: rpc.KVStub(ch).Compact(request, timeout=t))

    async def member_status(self, index: int) -> rpc.StatusResponse | None:
        """The Status of one member, None when it does not answer (no failover: the question
        is about that member)."""
        try:
            return await rpc.MaintenanceStub(self.members.channel(index)).Status(
                rpc.StatusRequest(), timeout=self.members.settings.attempt_timeout
            )
        except grpc.aio.AioRpcError:
            return None

"""Keeping leases alive on one long-lived stream, whatever member is up.

etcd keeps a lease alive for as long as it hears from its holder at least once per TTL. aetcd's
``Lease.refresh()`` opens a new LeaseKeepAlive stream per call; here one stream per store
carries every lease it keeps: each is renewed every third of its TTL (as etcd's own client
does), and the answers say how long it has left. An answer of TTL 0 means the lease is gone
(it expired while this side was cut off, or it was revoked): its holder is told through
:meth:`Kept.lost`, because everything hanging on it has been deleted and must be claimed again.
When the stream breaks the keeper reopens it on the next member at once, and backs off only
after a whole round of members failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
import grpc.aio
from aetcd import rpc

from podnet.kv._members import REQUIRE_LEADER, Members, describe
from podnet.kv.errors import LeaseExpired
from podnet.kv.model import Lease

log = logging.getLogger("podnet.kv.lease")


class Kept:
    """A lease being kept alive: how often etcd confirmed it, and whether it was lost."""

    def __init__(self, lease: Lease, keeper: Keeper) -> None:
        self.lease = lease
        self.confirmations = 0
        self.last_confirmed = time.monotonic()
        self._keeper = keeper
        self._lost = asyncio.Event()
        self._confirmed = asyncio.Condition()

    async def lost(self) -> None:
        """Wait until the lease is gone; raises :class:`LeaseExpired` then."""
        await self._lost.wait()
        raise LeaseExpired(self.lease.id)

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    async def confirmed(self, count: int) -> None:
        """Wait until etcd has confirmed the lease ``count`` times in all (tests, health)."""
        async with self._confirmed:
            await self._confirmed.wait_for(lambda: self.confirmations >= count or self._lost.is_set())
        if self._lost.is_set():
            raise LeaseExpired(self.lease.id)

    async def _confirm(self, ttl: int) -> None:
        if ttl <= 0:
            self._lost.set()
            self._keeper.forget(self.lease.id)
        else:
            self.confirmations += 1
            self.last_confirmed = time.monotonic()
        async with self._confirmed:
            self._confirmed.notify_all()

    def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL, unless revoked first)."""
        self._keeper.forget(self.lease.id)


class Keeper:
    """One LeaseKeepAlive stream for every lease a store keeps."""

    def __init__(self, members: Members) -> None:
        self.members = members
        self.kept: dict[int, Kept] = {}
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self.streams_opened = 0

    def keep(self, lease: Lease) -> Kept:
        kept = self.kept.get(lease.id)
        if kept is None:
            kept = self.kept[lease.id] = Kept(lease, self)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="podnet-lease-keeper")
        return kept

    def forget(self, lease_id: int) -> None:
        self.kept.pop(lease_id, None)
        self._changed.set()

    def _interval(self) -> float:
        return max(0.1, min(k.lease.ttl for k in self.kept.values()) / 3) if self.kept else 1.0

    async def _run(self) -> None:
        settings = self.members.settings
        delay = settings.backoff_min
        failures = 0
        while self.kept:
            index = self.members.current
            call = rpc.LeaseStub(self.members.channel(index)).LeaseKeepAlive(metadata=REQUIRE_LEADER)
            self.streams_opened += 1
            reader = asyncio.get_running_loop().create_task(self._read(call))
            try:
                while self.kept:
                    for lease_id in list(self.kept):
                        await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                    self._changed.clear()
                    changed = asyncio.ensure_future(self._changed.wait())
                    try:
                        done, _ = await asyncio.wait(
                            {reader, changed}, timeout=self._interval(), return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        changed.cancel()
                    if reader in done:
                        reader.result()  # raises what broke the stream
                        raise ConnectionResetError("the member closed the keep-alive stream")
                    failures, delay = 0, settings.backoff_min
                return
            except (grpc.aio.AioRpcError, ConnectionResetError) as exc:
                reason = describe(exc) if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.info("lease keep-alive on %s broke (%s): reopening", self.members.endpoints[index], reason)
            finally:
                reader.cancel()
                call.cancel()
            failures += 1
            self.members.failed(index)
            if failures % len(self.members.endpoints) == 0:
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.backoff_max)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            kept = self.kept.get(response.ID)
            if kept is not None:
                await kept._confirm(response.TTL)

    async def close(self) -> None:
        self.kept.clear()
        self._changed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

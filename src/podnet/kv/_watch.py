"""A watch that survives its member: it resumes from the last revision it delivered + 1.

aetcd has no re-watch of its own, so this drives etcd's Watch stream directly: one stream per
watch, created with ``start_revision``; every response's events go to the caller as one batch
(etcd sends the changes of one or more revisions together, which is the batch an agent
syncs once for). When the stream breaks (member killed, member lost its leader, connection
reset) the watch reopens on the next member from the revision after the last event it gave
out, so nothing is lost and nothing is repeated. When etcd says that revision is compacted,
the watch raises :class:`Compacted` once and ends: the caller lists again and starts a new
watch from that listing, as the agent's resync does. Reconnecting backs off like requests
do, so a dead cluster never turns this into a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from aetcd import rpc

from podnet.kv import _proto
from podnet.kv._members import REQUIRE_LEADER, Members, describe, mapped
from podnet.kv.errors import Compacted, Kind, PermissionDenied, classify
from podnet.kv.model import Event, prefix_end

log = logging.getLogger("podnet.kv.watch")


class _Broken(Exception):
    """The stream ended or was cancelled by the member for a reason a retry can fix."""


class Watch:
    """``async for batch in Watch(...)``: lists of events, in revision order, from ``start_revision``."""

    def __init__(self, members: Members, prefix: str, start_revision: int) -> None:
        self.members = members
        self.prefix = prefix
        self.next_revision = start_revision
        self.streams_opened = 0  # how many Watch streams this watch created (tests: no loop)

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._run()

    def _create(self) -> rpc.WatchRequest:
        create = rpc.WatchCreateRequest(
            key=self.prefix.encode(), range_end=prefix_end(self.prefix).encode(), start_revision=self.next_revision
        )
        return rpc.WatchRequest(create_request=create)

    async def _run(self) -> AsyncIterator[list[Event]]:
        settings = self.members.settings
        delay = settings.backoff_min
        failures = 0
        while True:
            index = self.members.current
            call = rpc.WatchStub(self.members.channel(index)).Watch(metadata=REQUIRE_LEADER)
            self.streams_opened += 1
            try:
                await call.write(self._create())
                async with contextlib.aclosing(self._responses(call, settings.attempt_timeout)) as responses:
                    async for batch in responses:
                        failures, delay = 0, settings.backoff_min
                        self.next_revision = batch[-1].revision + 1
                        yield batch
            except grpc.aio.AioRpcError as exc:
                if classify(exc.code().name, exc.details() or "") is not Kind.TRANSIENT:
                    raise mapped(exc, f"watch {self.prefix}", revision=self.next_revision) from exc
                reason = describe(exc)
            except _Broken as exc:
                reason = str(exc)
            finally:
                call.cancel()
            log.info(
                "watch %s on %s broke (%s): resuming from %d",
                self.prefix,
                self.members.endpoints[index],
                reason,
                self.next_revision,
            )
            failures += 1
            self.members.failed(index)
            if failures % len(self.members.endpoints) == 0:
                await asyncio.sleep(delay)  # every member failed once: back off before the next round
                delay = min(delay * 2, settings.backoff_max)

    async def _responses(self, call: grpc.aio.StreamStreamCall, create_timeout: float) -> AsyncIterator[list[Event]]:
        created = False
        while True:
            try:
                response = await (call.read() if created else asyncio.wait_for(call.read(), create_timeout))
            except TimeoutError as exc:
                raise _Broken(f"no answer to the watch request in {create_timeout}s") from exc
            if response is grpc.aio.EOF:
                raise _Broken("the member closed the stream")
            if response.compact_revision:
                raise Compacted(self.next_revision, response.compact_revision)
            if response.canceled:
                reason = response.cancel_reason or "cancelled"
                if "permission denied" in reason:
                    raise PermissionDenied(f"watch {self.prefix}", reason)
                raise _Broken(reason)
            created = created or response.created
            if response.events:
                yield [_proto.event(ev) for ev in response.events]

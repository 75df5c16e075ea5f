"""The members a client talks to: one TLS channel each, a current one, and failover.

gRPC's own address list (``ipv4:A,B,C``, pick-first) fails over only when a connection
breaks; a member that is up but cut off from the quorum keeps answering "no leader" and
would keep the channel. So podnet rotates itself: every request goes to the current member,
and a transient failure (refused, timed out, no leader, leader changed) makes the next one
current. A request is retried within a budget; after a whole round of members failed it
backs off (capped), so a dead cluster costs a few requests a second, never a hot loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio

from podnet.kv.config import Endpoint, Settings, Tls
from podnet.kv.errors import (
    Compacted,
    Kind,
    LeaseExpired,
    PermissionDenied,
    Refused,
    StoreError,
    Unreachable,
    classify,
)

T = TypeVar("T")
# The member must have a leader to serve a stream (etcd's clientv3 WithRequireLeader): a member
# cut off from the quorum cancels the stream instead of keeping it silently open.
REQUIRE_LEADER = (("hasleader", "true"),)
MAX_MESSAGE = 64 * 1024 * 1024


def channel_options(endpoint: Endpoint) -> list[tuple[str, object]]:
    return [
        ("grpc.ssl_target_name_override", endpoint.server_name),
        ("grpc.default_authority", endpoint.server_name),
        # A frozen member is noticed by pings: etcd's default --grpc-keepalive-min-time is 5 s.
        ("grpc.keepalive_time_ms", 5000),
        ("grpc.keepalive_timeout_ms", 2000),
        ("grpc.http2.ping_timeout_ms", 2000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A member that comes back is dialled again within a second, not gRPC's default 120 s cap.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.enable_retries", 0),  # retries are ours, with failover
    ]


def describe(error: grpc.aio.AioRpcError) -> str:
    details = (error.details() or "").strip()
    return f"{error.code().name.lower()}: {details}" if details else error.code().name.lower()


def mapped(error: grpc.aio.AioRpcError, what: str, revision: int = 0, lease: int = 0) -> StoreError:
    """The podnet error for a gRPC failure that is not worth retrying."""
    kind = classify(error.code().name, error.details() or "")
    if kind is Kind.DENIED:
        return PermissionDenied(what, describe(error))
    if kind is Kind.COMPACTED:
        return Compacted(revision, -1)
    if kind is Kind.LEASE_GONE:
        return LeaseExpired(lease)
    return Refused(f"etcd refused {what}: {describe(error)}")


class Members:
    """Channels to the members, opened on first use; ``current`` is where requests go."""

    def __init__(self, endpoints: tuple[Endpoint, ...], tls: Tls, settings: Settings) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.endpoints = endpoints
        self.settings = settings
        self.current = 0
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(),
            private_key=tls.key.read_bytes(),
            certificate_chain=tls.cert.read_bytes(),
        )
        self._channels: dict[int, grpc.aio.Channel] = {}

    def channel(self, index: int) -> grpc.aio.Channel:
        if index not in self._channels:
            endpoint = self.endpoints[index]
            self._channels[index] = grpc.aio.secure_channel(
                endpoint.target, self._credentials, options=channel_options(endpoint)
            )
        return self._channels[index]

    def failed(self, index: int) -> None:
        """The member at ``index`` failed a request: the next one becomes current."""
        if self.current == index:
            self.current = (index + 1) % len(self.endpoints)

    async def call(self, what: str, attempt: Callable[[grpc.aio.Channel, float], Awaitable[T]]) -> tuple[T, int]:
        """Run ``attempt(channel, timeout)`` on the current member until it succeeds.

        Returns its result and how many attempts failed first (an attempt that failed after
        its request was sent may still have been applied). Transient failures move on to the
        next member; after ``retry_for`` seconds :class:`Unreachable` names what each said.
        """
        started = time.monotonic()
        deadline = started + self.settings.retry_for
        reasons: dict[str, str] = {}
        delay = self.settings.backoff_min
        failures = 0
        while True:
            index = self.current
            timeout = max(0.05, min(self.settings.attempt_timeout, deadline - time.monotonic()))
            try:
                return await attempt(self.channel(index), timeout), failures
            except grpc.aio.AioRpcError as exc:
                if classify(exc.code().name, exc.details() or "") is not Kind.TRANSIENT:
                    raise mapped(exc, what) from exc
                reasons[str(self.endpoints[index])] = describe(exc)
                failures += 1
                self.failed(index)
                pause = delay if failures % len(self.endpoints) == 0 else 0.0
                if time.monotonic() + pause >= deadline:
                    raise Unreachable(what, reasons, time.monotonic() - started) from exc
                if pause:
                    await asyncio.sleep(pause)  # a whole round failed: back off before the next
                    delay = min(delay * 2, self.settings.backoff_max)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()

"""Where the etcd members are, how podnet proves who it is to them, and how long it waits.

Pure data (no gRPC), so a command can parse ``--etcd`` and ``--cert`` before it decides to
import the client at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Endpoint:
    """One member's client endpoint: a gRPC target and the name its certificate must carry.

    ``target`` is what gRPC dials (``ipv4:10.0.0.1:2379``, ``unix:/path/m1.sock:2379``);
    ``server_name`` is checked against the certificate's subject alternative names, which
    for a unix socket (no host in the address) is the member's IP.
    """

    target: str
    server_name: str

    def __str__(self) -> str:
        return self.target


def parse_endpoint(url: str) -> Endpoint:
    """``https://HOST:PORT`` (what ``--etcd`` takes) as an Endpoint; a ValueError says why not."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise ValueError(f"{url!r} is not an etcd endpoint (expected https://HOST:PORT: podnet speaks TLS only)")
    host = parts.hostname
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Endpoint(f"dns:{host}:{parts.port}", host)
    scheme = "ipv4" if ip.version == 4 else "ipv6"
    return Endpoint(f"{scheme}:{host}:{parts.port}" if ip.version == 4 else f"{scheme}:[{host}]:{parts.port}", host)


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """A comma-separated list of endpoints, as ``--etcd URL[,URL...]`` takes it."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("no etcd endpoint given")
    return tuple(parse_endpoint(u) for u in urls)


@dataclass(frozen=True)
class Tls:
    """The CA that signed the members' certificates, and this client's certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Settings:
    """Timeouts: short attempts, retried on the next member, within a bounded budget.

    A SIGKILLed leader stalls writes for one election (0.5-1 s at heartbeat 50 ms / election
    500 ms): an attempt of 1 s, then the next member, covers it; a lost quorum is reported
    after ``retry_for`` instead of etcd's own 7 s limit per request.
    """

    attempt_timeout: float = 1.0
    retry_for: float = 5.0
    backoff_min: float = 0.05
    backoff_max: float = 1.0
    page_size: int = 1000  # keys per range request when listing a prefix

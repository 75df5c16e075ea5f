"""SCTP packets by hand, for kernels without SCTP sockets.

``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`` needs the kernel's SCTP module; a raw IP
socket of protocol 132 does not. An INIT chunk built here goes through nftables like any
SCTP packet (conntrack checks its CRC32c, NAT rewrites its ports and checksum), and a raw
socket in the destination namespace receives a copy of every SCTP packet that arrives there.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from functools import cache

from podnet.kernel import netns

IPPROTO_SCTP = 132
CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


@cache
def _table() -> tuple[int, ...]:
    out = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32C_POLY if crc & 1 else 0)
        out.append(crc)
    return tuple(out)


def crc32c(data: bytes) -> int:
    table, crc = _table(), 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def init_packet(sport: int, dport: int, tag: int = 0x5C7A11ED) -> bytes:
    """An SCTP INIT (verification tag 0, as RFC 9260 says) with its checksum."""
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, tag)  # INIT: tag, a_rwnd, streams, TSN
    header = struct.pack("!HHII", sport, dport, 0, 0)
    return header[:8] + struct.pack("<I", crc32c(header + chunk)) + chunk


@dataclass(frozen=True)
class Seen:
    src: str
    dst: str
    sport: int
    dport: int


def _parse(data: bytes) -> Seen:
    ihl = (data[0] & 0x0F) * 4
    return Seen(
        socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), *struct.unpack("!HH", data[ihl : ihl + 4])
    )


def send_init(ns: str, dst: str, dport: int, sport: int) -> None:
    """One INIT from inside namespace ``ns`` (the kernel writes the IP header)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_SCTP)
    with sock:
        sock.sendto(init_packet(sport, dport), (dst, 0))


class Receiver:
    """Every packet of one protocol arriving in a namespace, from the moment it is made: SCTP,
    or ICMP, of which it keeps the port unreachables that SCTP packets caused."""

    def __init__(self, ns: str, protocol: int = IPPROTO_SCTP) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
        self.protocol = protocol

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Seen | None:
        """The SCTP ports of the packet just arrived (for ICMP: of the packet it answers);
        None for anything else."""
        data = self.sock.recv(65535)
        if self.protocol == IPPROTO_SCTP:
            return _parse(data)
        ihl = (data[0] & 0x0F) * 4
        kind, code = data[ihl], data[ihl + 1]
        inner = data[ihl + 8 :]
        if (kind, code) != (3, 3) or len(inner) < 24 or inner[9] != IPPROTO_SCTP:
            return None
        return _parse(inner)

    def wait_for(self, sport: int, within: float = 1.5) -> Seen | None:
        """The packet of source port ``sport``, or None when it did not come within ``within`` s."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self], [], [], left)[0]:
                return None
            got = self.read()
            if got is not None and got.sport == sport:
                return got
        return None


def reached(probes: list[tuple[str, str, str]], port: int, first_sport: int, within: float = 1.5) -> list[bool]:
    """Which of the INITs (source netns, destination netns, destination address) arrive at
    ``port``: all sent at once, each with its own source port, answered within one deadline."""
    receivers = {dst: Receiver(dst) for _, dst, _ in probes}
    try:
        wanted = {first_sport + i: (dst, ip) for i, (_, dst, ip) in enumerate(probes)}
        for i, (src, _, ip) in enumerate(probes):
            send_init(src, ip, port, first_sport + i)
        seen: set[int] = set()
        deadline = time.monotonic() + within
        while len(seen) < len(wanted) and (left := deadline - time.monotonic()) > 0:
            for r in select.select(list(receivers.values()), [], [], left)[0]:
                got = r.read()
                if got is not None and got.sport in wanted and got.dport == port:
                    seen.add(got.sport)
        return [first_sport + i in seen for i in range(len(probes))]
    finally:
        for r in receivers.values():
            r.sock.close()

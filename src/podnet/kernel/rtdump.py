"""rtnetlink dumps (links, IPv4 addresses, routes, neighbours, bridge FDB) read with struct.

Observing is four dumps per namespace on every ``up``, ``status`` and ``trace``; decoding
them with pyroute2 cost ~5 ms per namespace (a second for 200 pods), almost all of it in its
generic message classes. These dumps are read here with a raw socket and only the fields
podnet compares are decoded: the same kernel answers, a fraction of the work.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from podnet.kernel import netns

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH = 18, 22, 26, 30
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLA_TYPE_MASK = 0x3FFF
IFLA_IFNAME = 3
AF_BRIDGE = 7

_HEADER = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex


@dataclass(frozen=True)
class Message:
    """One dumped object: its fixed header (unpacked) and its top-level attributes by type."""

    header: tuple
    attrs: dict[int, bytes]


def attributes(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in ``data[offset:end]`` by type (nesting flags dropped)."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return out


def socket_in(ns_fd: int) -> socket.socket:
    """A raw rtnetlink socket in the namespace of ``ns_fd`` (the calling thread comes back)."""
    with netns.entered_fd(ns_fd):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


def link_names(sock: socket.socket) -> dict[int, str]:
    """Every link's name by its index."""
    return {
        m.header[2]: text(m.attrs.get(IFLA_IFNAME)) or "" for m in dump(sock, RTM_GETLINK, IFINFO, socket.AF_UNSPEC)
    }


def dump(sock: socket.socket, kind: int, header: struct.Struct, family: int) -> Iterator[Message]:
    """Every object of one dump request (RTM_GET* with NLM_F_DUMP)."""
    request = struct.pack("=B", family) + b"\0" * (header.size - 1)
    sock.send(_HEADER.pack(16 + len(request), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
            if msg_type == NLMSG_DONE:
                return
            if msg_type == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                raise OSError(-code, f"rtnetlink dump {kind}: {os.strerror(-code)}")
            body = offset + 16
            yield Message(header.unpack_from(data, body), attributes(data, body + header.size, offset + length))
            offset += (length + 3) & ~3


def text(value: bytes | None) -> str | None:
    return value.split(b"\0", 1)[0].decode() if value is not None else None


def u32(value: bytes | None) -> int | None:
    return struct.unpack("=I", value[:4])[0] if value is not None else None


def s32(value: bytes | None) -> int | None:
    return struct.unpack("=i", value[:4])[0] if value is not None else None


def ipv4(value: bytes | None) -> str | None:
    return socket.inet_ntoa(value[:4]) if value is not None else None


def mac(value: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in value) if value is not None else None


def nexthops(value: bytes) -> Iterator[tuple[int, int, int, dict[int, bytes]]]:
    """RTA_MULTIPATH: (flags, hops, ifindex, attributes) of each next hop."""
    offset = 0
    while offset + RTNEXTHOP.size <= len(value):
        length, flags, hops, ifindex = RTNEXTHOP.unpack_from(value, offset)
        if length < RTNEXTHOP.size:
            break
        yield flags, hops, ifindex, attributes(value, offset + RTNEXTHOP.size, offset + length)
        offset += (length + 3) & ~3

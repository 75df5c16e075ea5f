"""Decoding rtnetlink attributes without pyroute2: padding, nesting, multipath next hops."""

from __future__ import annotations

import socket
import struct

from podnet.kernel import rtdump


def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind | (0x8000 if nested else 0)) + payload + b"\0" * (-length % 4)


def test_attributes_skip_padding_and_drop_the_nested_flag() -> None:
    data = attr(3, b"eth0\0") + attr(18, attr(1, b"veth\0"), nested=True) + attr(4, struct.pack("=I", 1450))
    attrs = rtdump.attributes(data)
    assert rtdump.text(attrs[3]) == "eth0"
    assert rtdump.u32(attrs[4]) == 1450
    assert rtdump.text(rtdump.attributes(attrs[18])[1]) == "veth"


def test_multipath_next_hops_each_with_gateway_flags_and_weight() -> None:
    def hop(flags: int, hops: int, ifindex: int, gateway: str) -> bytes:
        body = attr(5, socket.inet_aton(gateway))
        return rtdump.RTNEXTHOP.pack(rtdump.RTNEXTHOP.size + len(body), flags, hops, ifindex) + body

    value = hop(0, 0, 7, "172.31.2.1") + hop(4, 1, 8, "172.31.2.2")
    got = [(f, h, i, rtdump.ipv4(a[5])) for f, h, i, a in rtdump.nexthops(value)]
    assert got == [(0, 0, 7, "172.31.2.1"), (4, 1, 8, "172.31.2.2")]


def test_mac_and_missing_values() -> None:
    assert rtdump.mac(bytes.fromhex("0a580af40102")) == "0a:58:0a:f4:01:02"
    assert rtdump.mac(None) is None and rtdump.u32(None) is None and rtdump.ipv4(None) is None

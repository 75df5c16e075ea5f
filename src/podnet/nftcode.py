"""The nf_tables expressions nft compiles podnet's Service rules to, as plain data.

A Service rule is written twice by the planner: as nft source (what ``nft list`` shows, what
a rule's id is computed from) and as the expression list below, which ``kernel.nftnl`` sends
to the kernel without nft. Going around nft is what makes 10,000 services load in well under
a second and one changed service cost a few milliseconds: nft parses and evaluates every
element and lists the whole table into its cache before applying even one line. The two
forms are kept equal by a kernel test that loads each rule both ways and compares nft's own
listing of them.

Each expression is a tuple naming its kind first; registers are the kernel's numbers
(1 = the first 128-bit register, 9 = its second 32-bit word, 0 = the verdict).
"""

from __future__ import annotations

import socket

Expr = tuple

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
META_L4PROTO = 16
PAYLOAD_NETWORK = 1
IP_SADDR = 12  # offset in the IPv4 header
NAT_RANGE_PROTO_SPECIFIED = 2


def l4proto(proto: str) -> tuple[Expr, ...]:
    """``meta l4proto tcp``."""
    return (("meta", META_L4PROTO, 1), ("cmp", 1, bytes([PROTO_NUMBERS[proto]])))


def pick(proto: str, count: int, offset: int, map_name: str) -> tuple[Expr, ...]:
    """``meta l4proto P dnat ip to numgen random mod N offset S map @M`` (M: slot -> ip . port)."""
    return (
        *l4proto(proto),
        ("numgen", 1, count, offset),
        ("lookup", map_name, 1, 1),
        ("nat", 1, 9, None),
    )


def verdict(kind: str, chain: str) -> tuple[Expr, ...]:
    """``jump C`` or ``goto C``."""
    return (("verdict", kind, chain),)


def saddr_in(set_name: str, then: str, chain: str) -> tuple[Expr, ...]:
    """``ip saddr @S goto C``."""
    return (("payload", PAYLOAD_NETWORK, IP_SADDR, 4, 1), ("lookup", set_name, 1, None), ("verdict", then, chain))


def slot_vmap(count: int, offset: int, map_name: str) -> tuple[Expr, ...]:
    """``numgen random mod N offset S vmap @M``."""
    return (("numgen", 1, count, offset), ("lookup", map_name, 1, 0))


def remember_saddr(set_name: str, timeout_s: int) -> tuple[Expr, ...]:
    """``update @S { ip saddr timeout Ts }``."""
    return (("payload", PAYLOAD_NETWORK, IP_SADDR, 4, 1), ("dynset", set_name, 1, timeout_s * 1000))


def dnat_to(proto: str, ip: str, port: int) -> tuple[Expr, ...]:
    """``meta l4proto P dnat to IP:PORT``."""
    return (
        *l4proto(proto),
        ("immediate", 1, socket.inet_aton(ip)),
        ("immediate", 2, port.to_bytes(2, "big")),
        ("nat", 1, 2, NAT_RANGE_PROTO_SPECIFIED),
    )

"""Route lookup as the kernel does it: longest prefix first, then metric; ECMP by the kernel's hash.

The local table decides first (a local route: an address of this namespace, lo's 127/8),
then the main table. The State holds both, the kernel's own routes for each address
included (``plan.connected``), so a planned trace and one of the kernel route alike.

Among equal next hops the kernel picks by ``fib_multipath_hash`` (net/ipv4/route.c), computed
here exactly: the packet's flow keys (those the namespace's ``fib_multipath_hash_policy`` and
``_fields`` select), made direction-independent (``__flow_hash_consistentify``) and hashed
with SipHash-2-4 keyed by ``fib_multipath_hash_seed`` (``flow_hash_from_keys_seed``); a
forwarded packet's hash (policy 3) goes once more through ``jhash_2words`` with the inner
hash, 0 here; the result, halved, falls under one next hop's upper bound (``fib_rebalance``:
each takes a share of 2^31 by weight). Where the kernel's choice depends on what is not in
the State (a seed of 0 is a random key per boot; under policy 1 a forwarded packet's own hash,
which for a connection is its socket's random one), the lookup says so and shows the first.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

import siphashc

from podnet.state import LOCAL_TABLE, MAIN_TABLE, NetnsState, NextHop, Route


@dataclass(frozen=True)
class Decision:
    kind: str  # local | unicast | none
    route: Route | None
    candidates: tuple[Route, ...]
    nexthop: NextHop | None = None
    reason: str = ""
    predicted: bool | None = None  # ECMP: whether the member is the kernel's (None: one next hop)

    def to_json(self) -> dict:
        def describe(r: Route) -> dict:
            return {
                "dst": r.dst,
                "prefix": int(r.dst.split("/")[1]),
                "metric": r.metric,
                "proto": r.proto,
                "nexthops": [{"gateway": h.gateway, "dev": h.dev, "onlink": h.onlink} for h in r.nexthops],
            }

        return {
            "table": "local" if self.kind == "local" and self.route is None else "main",
            "candidates": [describe(r) for r in self.candidates],
            "chosen": describe(self.route) if self.route else None,
            "ecmp": [{"gateway": h.gateway, "dev": h.dev} for h in self.route.nexthops]
            if self.route and len(self.route.nexthops) > 1
            else None,
            "ecmp_predicted": self.predicted,
            "nexthop": {"gateway": self.nexthop.gateway, "dev": self.nexthop.dev} if self.nexthop else None,
            "reason": self.reason,
        }


@lru_cache(maxsize=65536)
def _address(ip: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(ip)


@lru_cache(maxsize=65536)
def _route_network(dst: str) -> ipaddress.IPv4Network:
    """A route's destination, parsed once (a lookup tests every route of the namespace)."""
    return ipaddress.IPv4Network(dst)


def _local_route(ns: NetnsState, ip: ipaddress.IPv4Address) -> Route | None:
    """The local table's route for ``ip``: it is an address of this namespace."""
    return next(
        (r for r in ns.routes.values() if r.table == LOCAL_TABLE and r.type == "local" and ip in _route_network(r.dst)),
        None,
    )


def flow_hash(*parts: object) -> int:
    """A stable number for a flow (the trace's choice of source port, of a random pick)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


# --- the kernel's multipath hash ---------------------------------------------------------------
M32 = 0xFFFFFFFF
IP_PROTO = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
FIELD_SRC_IP, FIELD_DST_IP, FIELD_IP_PROTO, FIELD_SRC_PORT, FIELD_DST_PORT = 0x01, 0x02, 0x04, 0x10, 0x20
DEFAULT_FIELDS = FIELD_SRC_IP | FIELD_DST_IP | FIELD_IP_PROTO
# struct flow_keys: SipHash covers from `basic` (offset 8) through the IPv4 addresses, 48 bytes.
KEYS_START, KEYS_LENGTH, PROTO_AT, PORTS_AT, ADDRS_AT = 8, 48, 10, 36, 44


def flow_keys_hash(seed: int, src: str, dst: str, proto: int, sport: int, dport: int) -> int:
    """``flow_hash_from_keys_seed`` of IPv4 flow keys (the fields not hashed passed as 0)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    sp, dp = struct.pack("!H", sport), struct.pack("!H", dport)
    if struct.unpack("<I", d)[0] < struct.unpack("<I", s)[0]:
        s, d = d, s
    if struct.unpack("<H", dp)[0] < struct.unpack("<H", sp)[0]:
        sp, dp = dp, sp
    keys = bytearray(KEYS_START + KEYS_LENGTH)
    keys[PROTO_AT] = proto
    keys[PORTS_AT : PORTS_AT + 4] = sp + dp
    keys[ADDRS_AT : ADDRS_AT + 8] = s + d
    key = (seed << 32) | seed  # fib_multipath_hash_construct_key
    return (siphashc.siphash(struct.pack("<QQ", key, key), bytes(keys[KEYS_START:])) & M32) or 1


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def jhash_2words(a: int, b: int, initval: int = 0) -> int:
    """include/linux/jhash.h: ``__jhash_nwords(a, b, 0, initval + JHASH_INITVAL + (2 << 2))``."""
    start = (initval + 0xDEADBEEF + (2 << 2)) & M32
    a, b, c = (a + start) & M32, (b + start) & M32, start
    # __jhash_final
    c = ((c ^ b) - _rol(b, 14)) & M32
    a = ((a ^ c) - _rol(c, 11)) & M32
    b = ((b ^ a) - _rol(a, 25)) & M32
    c = ((c ^ b) - _rol(b, 16)) & M32
    a = ((a ^ c) - _rol(c, 4)) & M32
    b = ((b ^ a) - _rol(a, 14)) & M32
    return ((c ^ b) - _rol(b, 24)) & M32


def multipath_hash(sysctls: dict[str, str], flow: tuple, forwarded: bool) -> tuple[int | None, str]:
    """``fib_multipath_hash`` of a packet in a namespace with these sysctls, and how it was
    taken; None when it depends on what the State does not hold."""
    src, dst, proto, sport, dport = flow
    seed = int(sysctls.get("net.ipv4.fib_multipath_hash_seed", "0") or 0)
    policy = sysctls.get("net.ipv4.fib_multipath_hash_policy", "0")
    if not seed:
        return None, "the kernel's hash key here is random (net.ipv4.fib_multipath_hash_seed=0)"
    number = IP_PROTO.get(proto, 0)
    if policy == "3":
        fields = int(sysctls.get("net.ipv4.fib_multipath_hash_fields", str(DEFAULT_FIELDS)), 0)
        h = flow_keys_hash(
            seed,
            src if fields & FIELD_SRC_IP else "0.0.0.0",
            dst if fields & FIELD_DST_IP else "0.0.0.0",
            number if fields & FIELD_IP_PROTO else 0,
            sport if fields & FIELD_SRC_PORT else 0,
            dport if fields & FIELD_DST_PORT else 0,
        )
        how = "policy 3, the 5-tuple" if fields & 0x37 == 0x37 else f"policy 3, fields {fields:#x}"
        return (jhash_2words(h, 0) if forwarded else h) >> 1, how
    if policy == "1" and not forwarded:
        return flow_keys_hash(seed, src, dst, number, sport, dport) >> 1, "policy 1, the 5-tuple"
    if policy == "1":
        return None, "policy 1 hashes a forwarded packet by its own flow hash (a connection's is random)"
    if policy == "0":
        return flow_keys_hash(seed, src, dst, 0, 0, 0) >> 1, "policy 0, the addresses"
    return None, f"fib_multipath_hash_policy {policy} is not modelled"


def select_nexthop(hops: tuple[NextHop, ...], mhash: int) -> int:
    """``fib_select_multipath``: the first next hop whose upper bound is at least the hash."""
    total = sum(h.weight for h in hops)
    upto = 0
    for i, hop in enumerate(hops):
        upto += hop.weight
        if mhash <= ((upto << 31) + total // 2) // total - 1:  # DIV_ROUND_CLOSEST_ULL(w << 31, total) - 1
            return i
    return len(hops) - 1


def lookup(ns: NetnsState, dst: str, flow: tuple, forwarded: bool = False) -> Decision:
    """``forwarded``: the packet arrived from elsewhere (the kernel hashes the packet itself)
    rather than being sent by this namespace (it hashes the socket's flow)."""
    ip = _address(dst)
    local = _local_route(ns, ip)
    if local is not None:
        dev = local.nexthops[0].dev
        return Decision("local", None, (), NextHop(None, dev), f"{dst} is an address of this namespace (local table)")
    routes = [r for r in ns.routes.values() if r.table == MAIN_TABLE]
    matching = [r for r in routes if ip in _route_network(r.dst)]
    matching.sort(key=lambda r: (-int(r.dst.split("/")[1]), r.metric, r.proto != "kernel"))
    if not matching:
        return Decision("none", None, (), None, f"no route contains {dst}")
    best = matching[0]
    prefix = int(best.dst.split("/")[1])
    if prefix == 0:
        reason = "only the default route (0.0.0.0/0) contains it: the gateway of last resort"
    elif len(matching) > 1:
        beaten = ", ".join(f"{r.dst}" for r in matching[1:])
        reason = f"/{prefix} is the longest prefix containing {dst} (beats {beaten})"
    else:
        reason = f"/{prefix} is the only route containing {dst}"
    if best.type == "local":
        reason += ": a local route, delivered to this namespace"
        return Decision("local", best, tuple(matching), NextHop(None, "lo"), reason)
    hops = best.nexthops
    if len(hops) == 1:
        return Decision("unicast", best, tuple(matching), hops[0], reason)
    mhash, how = multipath_hash(ns.sysctls, flow, forwarded)
    nexthop = hops[select_nexthop(hops, mhash)] if mhash is not None else hops[0]
    name = nexthop.gateway or nexthop.dev
    if mhash is not None:
        reason += f"; ECMP over {len(hops)} next hops: the kernel's hash ({how}) picks {name}"
    else:
        reason += f"; ECMP over {len(hops)} next hops: which one the kernel takes is not known ({how}); shown: {name}"
    return Decision("unicast", best, tuple(matching), nexthop, reason, predicted=mhash is not None)

"""Route lookup as the kernel does it: longest prefix first, then metric; ECMP by flow hash.

Connected routes are derived from the namespace's addresses (the kernel adds them as proto
kernel); the rest are the State's routes, whatever their origin (static, bird).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from podnet.state import NetnsState, NextHop, Route


@dataclass(frozen=True)
class Decision:
    kind: str  # local | unicast | none
    route: Route | None
    candidates: tuple[Route, ...]
    nexthop: NextHop | None = None
    reason: str = ""

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
            "nexthop": {"gateway": self.nexthop.gateway, "dev": self.nexthop.dev} if self.nexthop else None,
            "reason": self.reason,
        }


LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@lru_cache(maxsize=65536)
def _address(ip: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(ip)


@lru_cache(maxsize=65536)
def _network(cidr: str) -> ipaddress.IPv4Network:
    """The network of an address ("10.244.0.2/24" -> 10.244.0.0/24), parsed once."""
    return ipaddress.IPv4Interface(cidr).network


@lru_cache(maxsize=65536)
def _route_network(dst: str) -> ipaddress.IPv4Network:
    """A route's destination, parsed once (a lookup tests every route of the namespace)."""
    return ipaddress.IPv4Network(dst)


def connected_routes(ns: NetnsState) -> list[Route]:
    routes = []
    for addr in ns.addresses:
        net = _network(addr.cidr)
        if net.prefixlen < 32 and ns.links.get(addr.ifname) is not None and ns.links[addr.ifname].up:
            routes.append(Route(str(net), (NextHop(None, addr.ifname),), proto="kernel"))
    return routes


def local_addresses(ns: NetnsState) -> dict[str, str]:
    """address -> interface, as the kernel's local table has them (lo's 127/8 included)."""
    out = {a.ip: a.ifname for a in ns.addresses}
    return out


def flow_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def lookup(ns: NetnsState, dst: str, flow: tuple) -> Decision:
    ip = _address(dst)
    if dst in local_addresses(ns) or ip in LOOPBACK:
        dev = local_addresses(ns).get(dst, "lo")
        return Decision("local", None, (), NextHop(None, dev), f"{dst} is an address of this namespace (local table)")
    routes = [r for r in (*ns.routes.values(), *connected_routes(ns)) if r.table == 254]
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
    if best.kind == "local":
        reason += ": a local route, delivered to this namespace"
        return Decision("local", best, tuple(matching), NextHop(None, "lo"), reason)
    hops = best.nexthops
    nexthop = hops[flow_hash(*flow) % len(hops)] if len(hops) > 1 else hops[0]
    if len(hops) > 1:
        reason += f"; ECMP over {len(hops)} next hops, this flow hashes to {nexthop.gateway or nexthop.dev}"
    return Decision("unicast", best, tuple(matching), nexthop, reason)

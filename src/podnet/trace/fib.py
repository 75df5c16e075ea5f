"""Route lookup as the kernel does it: longest prefix first, then metric; ECMP by flow hash.

The local table decides first (a local route: an address of this namespace, lo's 127/8),
then the main table. The State holds both, the kernel's own routes for each address
included (``plan.connected``), so a planned trace and one of the kernel route alike.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from podnet.state import LOCAL_TABLE, MAIN_TABLE, NetnsState, NextHop, Route


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
            "table": "main" if self.kind != "local" else "local",
            "candidates": [describe(r) for r in self.candidates],
            "chosen": describe(self.route) if self.route else None,
            "ecmp": [{"gateway": h.gateway, "dev": h.dev} for h in self.route.nexthops]
            if self.route and len(self.route.nexthops) > 1
            else None,
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
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def lookup(ns: NetnsState, dst: str, flow: tuple) -> Decision:
    ip = _address(dst)
    local = _local_route(ns, ip)
    if local is not None:
        dev = local.nexthops[0].dev
        return Decision("local", None, (), NextHop(None, dev), f"{dst} is an address of this namespace (local table)")
    routes = [r for r in ns.routes.values() if r.table == MAIN_TABLE and r.type == "unicast"]
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
    hops = best.nexthops
    nexthop = hops[flow_hash(*flow) % len(hops)] if len(hops) > 1 else hops[0]
    if len(hops) > 1:
        reason += f"; ECMP over {len(hops)} next hops, this flow hashes to {nexthop.gateway or nexthop.dev}"
    return Decision("unicast", best, tuple(matching), nexthop, reason)

"""The routes the kernel adds by itself for every address, planned like any other route.

For an IPv4 address on an interface that is up, Linux adds (``proto kernel``, the address as
preferred source):

- in the local table, a ``local`` route to the address itself (scope host): what makes the
  namespace take packets for it as its own;
- in the main table, unless the prefix is a /32, the connected route to its subnet (scope
  link): how every gateway and neighbour on that subnet is reached. On a loopback interface
  this one is ``local`` too, in the local table (``local 127.0.0.0/8 dev lo``).

The plan depends on these as much as on its own routes, so they are in it: one that goes
missing is drift that ``up`` repairs, and the trace routes with the table the kernel holds.
Broadcast routes are left out (podnet sends no IP broadcast, and kernels have differed in
which ones they add), as is IPv6 (podnet is IPv4 only).
"""

from __future__ import annotations

import socket
from functools import lru_cache

from podnet.state import LOCAL_TABLE, MAIN_TABLE, Address, NetnsState, NextHop, Route, State

LOOPBACK_ADDRESS = Address("lo", "127.0.0.1/8")


@lru_cache(maxsize=65536)
def _split(cidr: str) -> tuple[str, str, int]:
    """("10.244.0.2/24") -> ("10.244.0.2", "10.244.0.0/24", 24), by integer arithmetic: a plan
    holds one address per pod, and ``ipaddress`` cost more than the rest of this module."""
    ip, _, length = cidr.partition("/")
    prefix = int(length)
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    network = int.from_bytes(socket.inet_aton(ip), "big") & mask
    return ip, f"{socket.inet_ntoa(network.to_bytes(4, 'big'))}/{prefix}", prefix


def for_address(addr: Address, loopback: bool = False) -> list[Route]:
    """The routes the kernel adds for ``addr`` (on a loopback interface when ``loopback``)."""
    ip, net, prefix = _split(addr.cidr)
    hop = (NextHop(None, addr.ifname),)

    def local(dst: str) -> Route:
        return Route(dst, hop, LOCAL_TABLE, proto="kernel", type="local", scope="host", src=ip)

    routes = [local(f"{ip}/32")]
    if prefix < 32:
        routes.append(local(net) if loopback else Route(net, hop, MAIN_TABLE, proto="kernel", scope="link", src=ip))
    return routes


def kernel_routes(ns: NetnsState) -> list[Route]:
    """Every route the kernel adds in ``ns`` for its addresses (lo's 127.0.0.1/8 included)."""
    routes: list[Route] = []
    lo = ns.links.get("lo")
    if lo is not None and lo.up:
        routes += for_address(LOOPBACK_ADDRESS, loopback=True)
    for addr in sorted(ns.addresses, key=lambda a: (a.ifname, a.cidr)):
        link = ns.links.get(addr.ifname)
        if link is not None and link.up:
            routes += for_address(addr, loopback=link.kind == "loopback")
    return routes


def add_kernel_routes(state: State) -> None:
    """Put the kernel's routes into every namespace of a planned State."""
    for ns in state.namespaces.values():
        for route in kernel_routes(ns):
            ns.routes.setdefault(route.key, route)  # no planned route shares one (tests/test_plan.py)

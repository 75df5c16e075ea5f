"""Static routing over the underlay: shortest paths between subnets, with every equal first hop.

Subnets are the vertices, routers the edges that join them. A member of subnet S reaches
subnet T through the routers on S that start a shortest path to T; when several do, the
route is multipath (ECMP). The external network is one more subnet, and the way to it is
every non-edge member's default route: the edge router holds the gateway of last resort.
"""

from __future__ import annotations

import zlib
from collections import deque

from podnet.plan.topology import Interface

# How the kernel picks among equal next hops (docs/routing.md, ECMP): a hash of the packet's
# 5-tuple (policy 3, the fields below), whatever the packet carries besides. Policy 1 would use a
# forwarded packet's own hash when it has one, and a connection's packets carry their socket's
# random one: the path would be a draw per connection that no trace could name.
MULTIPATH_POLICY = "3"
MULTIPATH_FIELDS = str(0x01 | 0x02 | 0x04 | 0x10 | 0x20)  # source, destination, protocol, ports
SEED = "net.ipv4.fib_multipath_hash_seed"


def multipath_sysctls(netns: str) -> dict[str, str]:
    """The multipath hash of a node or router: the 5-tuple, keyed by a seed of its own (0 would
    be a random key per boot; one seed everywhere would make every hop's choice the same)."""
    return {
        "net.ipv4.fib_multipath_hash_policy": MULTIPATH_POLICY,
        "net.ipv4.fib_multipath_hash_fields": MULTIPATH_FIELDS,
        SEED: str(zlib.crc32(netns.encode()) or 1),
    }


class RoutingGraph:
    def __init__(self, routers: dict[str, tuple[Interface, ...]]) -> None:
        self.routers = routers
        self.on_subnet: dict[str, list[str]] = {}
        for name, ifaces in routers.items():
            for iface in ifaces:
                self.on_subnet.setdefault(iface.subnet, []).append(name)

    def _distances_to(self, target: str) -> dict[str, int]:
        """Router hops from every subnet to ``target`` (breadth-first over subnets)."""
        dist = {target: 0}
        queue = deque([target])
        while queue:
            subnet = queue.popleft()
            for router in self.on_subnet.get(subnet, []):
                for iface in self.routers[router]:
                    if iface.subnet not in dist:
                        dist[iface.subnet] = dist[subnet] + 1
                        queue.append(iface.subnet)
        return dist

    def first_hops(self, source: str, target: str, exclude: str | None = None) -> list[str]:
        """Addresses on ``source`` of the routers that begin a shortest path to ``target``."""
        dist = self._distances_to(target)
        if source not in dist or source == target:
            return []
        hops = []
        for router in self.on_subnet.get(source, []):
            if router == exclude:
                continue
            ifaces = self.routers[router]
            if any(dist.get(i.subnet, 1 << 30) == dist[source] - 1 for i in ifaces):
                hops.append(next(i.ip for i in ifaces if i.subnet == source))
        return sorted(hops, key=lambda ip: tuple(int(x) for x in ip.split(".")))

    def router_next_hops(self, router: str, target: str) -> list[tuple[str, str]]:
        """(gateway, ifname) pairs for ``router`` to reach a subnet it is not on."""
        dist = self._distances_to(target)
        mine = self.routers[router]
        reachable = [i for i in mine if i.subnet in dist]
        if not reachable or any(i.subnet == target for i in mine):
            return []
        best = min(dist[i.subnet] for i in reachable)
        hops = []
        for iface in reachable:
            if dist[iface.subnet] != best:
                continue
            for gw in self.first_hops(iface.subnet, target, exclude=router):
                hops.append((gw, iface.ifname))
        return sorted(set(hops), key=lambda h: tuple(int(x) for x in h[0].split(".")))

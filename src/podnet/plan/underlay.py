"""The physical network under the cluster: switches, routers, the edge and the external hosts.

Every L2 segment is a bridge in a "switch" namespace; each member (node, router, external
host) plugs into it with a veth. Routers forward with connected routes plus the static
routes ``routing`` computes; ECMP hashing uses L4 ports so different flows spread.
"""

from __future__ import annotations

from podnet import names
from podnet.plan import sysctls
from podnet.plan.routing import RoutingGraph, multipath_sysctls
from podnet.plan.topology import Topology
from podnet.state import Address, Link, NextHop, Route, State

SWITCH_BRIDGE = "br0"
UNDERLAY_IF = "eth0"


SWITCH_BR_NETFILTER = [f"net.bridge.bridge-nf-call-{t}" for t in ("iptables", "ip6tables", "arptables")]


def graph(topo: Topology) -> RoutingGraph:
    return RoutingGraph({r.name: r.interfaces for r in topo.routers.values()})


def _plug(state: State, topo: Topology, subnet: str, netns: str, ifname: str, mac: str, mtu: int) -> None:
    """One veth from a member's namespace into the subnet's switch."""
    info = topo.subnets[subnet]
    port = names.switch_port(subnet, netns)
    state.ns(info.switch_netns).add_link(
        Link(port, "veth", mtu=mtu, master=SWITCH_BRIDGE, peer_netns=netns, peer_name=ifname)
    )
    state.ns(netns).add_link(Link(ifname, "veth", mac=mac, mtu=mtu, peer_netns=info.switch_netns, peer_name=port))


def build(state: State, topo: Topology, mtu: int, routed_by_bgp: bool = False) -> None:
    """``routed_by_bgp``: BIRD routes between the subnets (backend bgp), so nodes and routers get
    no static route; only the edge keeps its gateway of last resort, which it announces."""
    for subnet in topo.subnets.values():
        sw = state.ns(subnet.switch_netns)
        sw.sysctls.update(sysctls.ipv4(forwards=False))  # a switch bridges; it never routes
        # ... and its frames need no IP netfilter (br_netfilter is on by default once loaded, as
        # the nodes need it): measured, a tenth of a VXLAN stream across racks went to it.
        sw.sysctls.update(dict.fromkeys(SWITCH_BR_NETFILTER, "0"))
        sw.add_link(Link("lo", "loopback"))
        sw.add_link(Link(SWITCH_BRIDGE, "bridge", mtu=mtu))

    g = graph(topo)
    external = next((s.name for s in topo.subnets.values() if s.external), None)

    for router in topo.routers.values():
        ns = state.ns(router.netns)
        ns.add_link(Link("lo", "loopback"))
        ns.sysctls.update(sysctls.ipv4(forwards=True))
        ns.sysctls.update(multipath_sysctls(ns.name))
        for iface in router.interfaces:
            _plug(state, topo, iface.subnet, router.netns, iface.ifname, iface.mac, mtu)
            ns.addresses.add(Address(iface.ifname, f"{iface.ip}/{iface.prefix}"))
        for subnet in topo.subnets.values():
            if subnet.external or routed_by_bgp:
                continue
            hops = g.router_next_hops(router.name, subnet.name)
            if hops:
                ns.add_route(Route(subnet.cidr, tuple(NextHop(gw, dev) for gw, dev in hops)))
        if router.uplink is not None:
            # The gateway of last resort: anything not known inside goes out to the internet segment.
            ns.add_route(Route("0.0.0.0/0", (NextHop(None, router.uplink),)))
        elif external is not None and not routed_by_bgp:
            hops = g.router_next_hops(router.name, external)
            if hops:
                ns.add_route(Route("0.0.0.0/0", tuple(NextHop(gw, dev) for gw, dev in hops)))

    for node in topo.nodes.values():
        ns = state.ns(node.netns)
        ns.add_link(Link("lo", "loopback"))
        ns.sysctls.update(sysctls.ipv4(forwards=True))
        ns.sysctls.update(multipath_sysctls(ns.name))
        _plug(state, topo, node.subnet, node.netns, UNDERLAY_IF, names.mac_for_ip(node.underlay_ip), mtu)
        ns.addresses.add(Address(UNDERLAY_IF, f"{node.underlay_ip}/{node.underlay_prefix}"))
        if routed_by_bgp:
            continue
        for subnet in topo.subnets.values():
            if subnet.external or subnet.name == node.subnet:
                continue
            hops = g.first_hops(node.subnet, subnet.name)
            if hops:
                ns.add_route(Route(subnet.cidr, tuple(NextHop(gw, UNDERLAY_IF) for gw in hops)))
        default = _default_hops(g, topo, node.subnet, external)
        if default:
            ns.add_route(Route("0.0.0.0/0", tuple(NextHop(gw, UNDERLAY_IF) for gw in default)))

    for host in topo.hosts.values():
        ns = state.ns(host.netns)
        ns.add_link(Link("lo", "loopback"))
        ns.sysctls.update(sysctls.ipv4(forwards=False))
        ext = next(s for s in topo.subnets.values() if s.external)
        _plug(state, topo, ext.name, host.netns, UNDERLAY_IF, host.mac, mtu)
        ns.addresses.add(Address(UNDERLAY_IF, f"{host.ip}/{host.prefix}"))
        ns.add_route(Route("0.0.0.0/0", (NextHop(host.gateway, UNDERLAY_IF),)))


def _default_hops(g: RoutingGraph, topo: Topology, subnet: str, external: str | None) -> list[str]:
    """A node's default gateway: toward the edge if there is one, else the routers on its subnet."""
    if external is not None:
        return g.first_hops(subnet, external)
    return sorted(
        {i.ip for r in topo.routers.values() for i in r.interfaces if i.subnet == subnet},
        key=lambda ip: tuple(int(x) for x in ip.split(".")),
    )[:1]

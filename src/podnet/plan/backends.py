"""How a node reaches the other nodes' pod blocks: one function per backend, by name.

- ``host-gw``: a route to each pod block via that node's underlay address. Needs every node
  on one L2 subnet (the validator refuses anything else).
- ``vxlan``: flannel's shape: one VXLAN device per node, no multicast, no learning. For each
  other node: a route to its block via its VTEP address (onlink), a permanent neighbour
  entry for that address, and an FDB entry sending that MAC to its underlay address. And on
  the device's egress, podnet's flow-hash program (``plan.flowhash``): without it the device
  sends every flow to one remote node down whichever equal-cost path it cached first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from podnet import names
from podnet.plan import flowhash
from podnet.plan.topology import NodeInfo, Topology
from podnet.state import Address, Fdb, Link, Neighbour, NextHop, Route, State, TcProgram

VXLAN_IF = "vxlan0"
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def vtep_ip(node: NodeInfo) -> str:
    """A node's VTEP address: the network address of its pod block, as flannel does."""
    return str(ipaddress.IPv4Network(node.pod_cidr).network_address)


def vtep_mac(node: NodeInfo) -> str:
    return names.mac_for_ip(vtep_ip(node))


def host_gw(state: State, topo: Topology, vni: int, port: int) -> None:
    for node in topo.nodes.values():
        ns = state.ns(node.netns)
        for other in topo.nodes.values():
            if other.name != node.name:
                ns.add_route(Route(other.pod_cidr, (NextHop(gateway=other.underlay_ip, dev="eth0"),)))


def vxlan(state: State, topo: Topology, vni: int, port: int) -> None:
    for node in topo.nodes.values():
        ns = state.ns(node.netns)
        ns.add_link(
            Link(
                VXLAN_IF,
                "vxlan",
                mac=vtep_mac(node),
                mtu=topo.mtu,
                vni=vni,
                local=node.underlay_ip,
                dstport=port,
                learning=False,
            )
        )
        ns.addresses.add(Address(VXLAN_IF, f"{vtep_ip(node)}/32"))
        ns.tc[VXLAN_IF] = TcProgram(VXLAN_IF, flowhash.program_id(), flowhash.program())
        for other in topo.nodes.values():
            if other.name == node.name:
                continue
            gw = vtep_ip(other)
            ns.add_route(Route(other.pod_cidr, (NextHop(gateway=gw, dev=VXLAN_IF, onlink=True),)))
            ns.neighbours.add(Neighbour(VXLAN_IF, gw, vtep_mac(other)))
            ns.fdb.add(Fdb(VXLAN_IF, vtep_mac(other), other.underlay_ip))


def bgp(state: State, topo: Topology, vni: int, port: int) -> None:
    """No route for any pod block: BIRD announces and installs them (``plan.bgp``)."""


BACKENDS: dict[str, Callable[[State, Topology, int, int], None]] = {"host-gw": host_gw, "vxlan": vxlan, "bgp": bgp}
OVERHEAD: dict[str, int] = {"host-gw": 0, "vxlan": VXLAN_OVERHEAD, "bgp": 0}

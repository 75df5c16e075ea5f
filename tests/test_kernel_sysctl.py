"""Every namespace holds the sysctls of its plan, whatever the host's own settings are.

Linux copies the host's IPv4 settings into every new namespace
(``net.core.devconf_inherit_init_net`` = 0, the default), so on a host whose
``net.ipv4.ip_forward`` is 1 (every host that runs Docker) a namespace starts out forwarding.
These tests set the root namespace's ``ip_forward`` as such a host has it (and restore it
whatever happens): podnet itself never touches the root namespace. Forwarding is checked by
what the kernel does with a packet: a frame addressed to a namespace's MAC for a destination
elsewhere is forwarded (ForwDatagrams) by a node or a router, and refused (InAddrErrors) by
a pod, a switch or an external host (InNoRoutes would say it tried to route it).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from podnet import names
from podnet.cluster import load_applied, observe_cluster
from podnet.kernel import netns
from podnet.plan.topology import Topology
from tests.conftest import Cluster, assert_observed_equals_plan, example_text

pytestmark = pytest.mark.root

ROOT_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

# Two more pods, so that every pod (the DNS pod too) has a neighbour on its own bridge.
PEERS = "".join(
    f"""---
apiVersion: v1
kind: Pod
metadata: {{name: peer-{n}, namespace: shop}}
spec:
  nodeName: node-{n}
  containers: [{{name: main}}]
"""
    for n in (1, 2)
)


@contextmanager
def host_ip_forward(value: str) -> Iterator[None]:
    """The root namespace's ip_forward set to ``value`` for the body, then put back."""
    with open(ROOT_IP_FORWARD) as f:
        old = f.read().strip()
    try:
        with open(ROOT_IP_FORWARD, "w") as f:
            f.write(value)
        yield
    finally:
        with open(ROOT_IP_FORWARD, "w") as f:
            f.write(old)


def ip_counters(ns: str) -> dict[str, int]:
    """The namespace's IPv4 counters ("Ip:" of /proc/net/snmp, "IpExt:" of /proc/net/netstat)."""
    out: dict[str, int] = {}
    with netns.entered(ns):
        for path, prefix in (("snmp", "Ip:"), ("netstat", "IpExt:")):
            with open(f"/proc/thread-self/net/{path}") as f:
                names, values = [line.split()[1:] for line in f if line.startswith(prefix)]
            out.update(zip(names, map(int, values), strict=True))
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str) -> bytes:
    """An Ethernet frame carrying one ICMP echo request."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x5043, 1) + b"podnet-forwarding-check"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    mac = bytes.fromhex
    return mac(dst_mac.replace(":", "")) + mac(src_mac.replace(":", "")) + b"\x08\x00" + header + icmp


@dataclass(frozen=True)
class Probe:
    """A frame sent from ``sender`` (on ``ifname``) to ``receiver``'s MAC, for ``dst_ip``."""

    what: str
    receiver: str
    sender: str
    ifname: str
    src_ip: str
    dst_mac: str
    dst_ip: str

    def outcome(self, src_mac: str) -> str:
        before = ip_counters(self.receiver)
        with netns.entered(self.sender):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind((self.ifname, 0))
            sock.send(echo_frame(src_mac, self.dst_mac, self.src_ip, self.dst_ip))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = ip_counters(self.receiver)
            if now["ForwDatagrams"] > before["ForwDatagrams"]:
                return "forwarded"
            if now["InAddrErrors"] > before["InAddrErrors"]:
                return "refused"  # not forwarding: the kernel drops a packet for elsewhere at once
            if now["InNoRoutes"] > before["InNoRoutes"]:
                return "unroutable"  # forwarding, but no route: a router without routes
            time.sleep(0.01)
        raise AssertionError(f"{self.what}: {self.receiver} never counted the frame")


def probes(topo: Topology) -> list[Probe]:
    """One frame into every kind of namespace, each addressed to another's address."""
    pods = {p.key: p for p in topo.pods.values()}
    out = []
    for pod in pods.values():
        neighbour = next(p for p in pods.values() if p.node == pod.node and p.key != pod.key)
        far = next(p for p in pods.values() if p.node != pod.node)
        out.append(Probe(f"pod {pod.key}", pod.netns, neighbour.netns, "eth0", neighbour.ip, pod.mac, far.ip))
    for node in topo.nodes.values():
        pod = next(p for p in pods.values() if p.node == node.name)
        far = next(p for p in pods.values() if p.node != node.name)
        gateway_mac = names.mac_for_ip(node.gateway)
        out.append(Probe(f"node {node.name}", node.netns, pod.netns, "eth0", pod.ip, gateway_mac, far.ip))
    nodes = list(topo.nodes.values())
    for router in topo.routers.values():
        iface = next(i for i in router.interfaces if any(n.subnet == i.subnet for n in nodes))
        node = next(n for n in nodes if n.subnet == iface.subnet)
        far = next(n for n in nodes if n.name != node.name)
        out.append(
            Probe(
                f"router {router.name}", router.netns, node.netns, "eth0", node.underlay_ip, iface.mac, far.underlay_ip
            )
        )
    for host in topo.hosts.values():
        edge = next(r for r in topo.routers.values() if r.uplink is not None)
        uplink = next(i for i in edge.interfaces if i.ifname == edge.uplink)
        out.append(
            Probe(
                f"external host {host.name}",
                host.netns,
                edge.netns,
                uplink.ifname,
                uplink.ip,
                host.mac,
                nodes[0].underlay_ip,
            )
        )
    return out


def switch_probes(topo: Topology, bridge_macs: dict[str, str]) -> list[Probe]:
    """A frame to each switch's own bridge, from a member: a switch has no address and no
    route, and must not route (forwarding on, it counts the frame as unroutable instead)."""
    members = [(n.subnet, n.netns, n.underlay_ip) for n in topo.nodes.values()]
    members += [(s.name, h.netns, h.ip) for h in topo.hosts.values() for s in topo.subnets.values() if s.external]
    out = []
    for subnet, member, ip in dict((m[0], m) for m in members).values():
        switch = topo.subnets[subnet].switch_netns
        far = next(n for n in topo.nodes.values() if n.underlay_ip != ip)
        out.append(Probe(f"switch {subnet}", switch, member, "eth0", ip, bridge_macs[switch], far.underlay_ip))
    return out


@pytest.mark.parametrize("host_value", ["0", "1"], ids=["host-ip_forward-0", "host-ip_forward-1"])
def test_namespaces_forward_as_planned_whatever_the_host_does(make_cluster, host_value: str) -> None:
    with host_ip_forward(host_value):
        c: Cluster = make_cluster(lambda n: example_text("racks.yaml", n) + PEERS)
        c.up()
        again = c.up()
        assert again["changes"] == 0, again["details"]
        assert_observed_equals_plan(c.name)

        _, p = load_applied(c.name)
        observed, _ = observe_cluster(c.name, p.state)
        bridge_macs = {
            s.switch_netns: observed.namespaces[s.switch_netns].links["br0"].mac for s in p.topology.subnets.values()
        }
        src_macs = {
            (name, link.name): link.mac for name, ns in observed.namespaces.items() for link in ns.links.values()
        }
        outcomes = {
            probe.what: probe.outcome(src_macs[(probe.sender, probe.ifname)])
            for probe in [*probes(p.topology), *switch_probes(p.topology, bridge_macs)]
        }
        expected = {what: "forwarded" if what.startswith(("node ", "router ")) else "refused" for what in outcomes}
        assert outcomes == expected
        kinds = {what.split()[0] for what in outcomes}
        assert kinds == {"pod", "node", "router", "external", "switch"}
        assert any("kube-system/coredns" in what for what in outcomes)
        with open(ROOT_IP_FORWARD) as f:
            assert f.read().strip() == host_value  # podnet left the root namespace alone

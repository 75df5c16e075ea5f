"""Spec + previous allocations -> desired State, Topology and the allocations to persist."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass

from podnet import names
from podnet.errors import SpecError
from podnet.plan.ipam import Allocations, Exhausted, allocate, hosts
from podnet.plan.topology import NodeInfo, PodInfo, Topology
from podnet.spec.models import Spec
from podnet.state import Address, Link, NextHop, Process, Route, State

BRIDGE = "cni0"
UNDERLAY_IF = "eth0"
POD_IF = "eth0"
SWITCH_BRIDGE = "br0"
NETEXEC = "netexec"


@dataclass
class Plan:
    state: State
    topology: Topology
    allocations: Allocations
    netexec_config: dict


def plan(spec: Spec, previous: Allocations | None = None) -> Plan:
    previous = previous or {}
    c = spec.cluster
    topo = Topology(cluster=c.name, backend=c.backend, switch_netns=names.switch_netns(c.name, "underlay"))

    blocks = allocate(
        c.nodes,
        previous.get("node_cidr", {}),
        (str(b) for b in c.pod_cidr.subnets(new_prefix=c.node_mask)),
        valid={str(b) for b in c.pod_cidr.subnets(new_prefix=c.node_mask)} if c.node_mask - c.pod_cidr.prefixlen <= 16 else None,
    )
    underlay_hosts = hosts(c.underlay_cidr, skip_first=1)  # .1 stays free for a gateway
    underlay = allocate(c.nodes, previous.get("underlay_ip", {}), iter(underlay_hosts), valid=set(underlay_hosts))
    for node in c.nodes:
        block = ipaddress.IPv4Network(blocks[node])
        topo.nodes[node] = NodeInfo(
            name=node,
            netns=names.node_netns(c.name, node),
            underlay_ip=underlay[node],
            underlay_prefix=c.underlay_cidr.prefixlen,
            pod_cidr=str(block),
            gateway=str(next(block.hosts())),
        )

    placement = _place(spec, previous.get("pod_node", {}))
    pod_ips: dict[str, str] = {}
    for node in c.nodes:
        members = [p for p in spec.pods if placement[p.key] == node]
        block = ipaddress.IPv4Network(blocks[node])
        block_hosts = hosts(block, skip_first=1)
        try:
            pod_ips.update(
                allocate([p.key for p in members], previous.get("pod_ip", {}), iter(block_hosts), valid=set(block_hosts))
            )
        except Exhausted as exc:
            pod = next(p for p in members if p.key == exc.owner)
            raise SpecError(
                spec.file,
                pod.line,
                "spec.nodeName" if pod.node else "metadata.name",
                f"node {node!r} has no address left for pod {pod.key}: its block {block} holds "
                f"{len(block_hosts)} pods (raise nodeCIDRMaskSize's room or add nodes)",
            ) from None

    for pod in spec.pods:
        node = placement[pod.key]
        ip = pod_ips[pod.key]
        topo.pods[pod.key] = PodInfo(
            namespace=pod.namespace,
            name=pod.name,
            node=node,
            ip=ip,
            prefix=c.node_mask,
            mac=names.mac_for_ip(ip),
            netns=names.pod_netns(c.name, pod.namespace, pod.name),
            host_veth=names.pod_host_veth(pod.namespace, pod.name),
            labels=pod.labels,
            ports=pod.ports,
        )

    state = build_state(topo, c.underlay_mtu)
    netexec_config = _netexec_config(topo)
    if netexec_config["pods"]:
        digest = hashlib.sha256(json.dumps(netexec_config, sort_keys=True).encode()).hexdigest()[:16]
        state.processes[NETEXEC] = Process(NETEXEC, ("podnet", "netexec-daemon", "--cluster", c.name), digest)
    allocations: Allocations = {
        "node_cidr": blocks,
        "underlay_ip": underlay,
        "pod_node": placement,
        "pod_ip": pod_ips,
    }
    return Plan(state, topo, allocations, netexec_config)


def _place(spec: Spec, previous: dict[str, str]) -> dict[str, str]:
    """Pods with nodeName go there; the others keep their earlier node, else the least loaded."""
    nodes = spec.cluster.nodes
    load = {n: 0 for n in nodes}
    placement: dict[str, str] = {}
    for pod in spec.pods:
        if pod.node is not None:
            placement[pod.key] = pod.node
        elif previous.get(pod.key) in load:
            placement[pod.key] = previous[pod.key]
        else:
            continue
        load[placement[pod.key]] += 1
    for pod in spec.pods:
        if pod.key not in placement:
            node = min(nodes, key=lambda n: (load[n], nodes.index(n)))
            placement[pod.key] = node
            load[node] += 1
    return placement


def build_state(topo: Topology, mtu: int) -> State:
    """The kernel objects of a host-gw cluster on one L2 underlay segment."""
    state = State()
    sw = state.ns(topo.switch_netns)
    sw.sysctls["net.ipv4.ip_forward"] = "0"  # a switch bridges; it never routes
    sw.add_link(Link("lo", "loopback"))
    sw.add_link(Link(SWITCH_BRIDGE, "bridge", mtu=mtu))

    for node in topo.nodes.values():
        port = names.switch_port("underlay", node.name)
        sw.add_link(
            Link(port, "veth", mtu=mtu, master=SWITCH_BRIDGE, peer_netns=node.netns, peer_name=UNDERLAY_IF)
        )
        ns = state.ns(node.netns)
        ns.sysctls["net.ipv4.ip_forward"] = "1"
        ns.add_link(Link("lo", "loopback"))
        ns.add_link(
            Link(
                UNDERLAY_IF,
                "veth",
                mac=names.mac_for_ip(node.underlay_ip),
                mtu=mtu,
                peer_netns=topo.switch_netns,
                peer_name=port,
            )
        )
        ns.addresses.add(Address(UNDERLAY_IF, f"{node.underlay_ip}/{node.underlay_prefix}"))
        block = ipaddress.IPv4Network(node.pod_cidr)
        ns.add_link(Link(BRIDGE, "bridge", mac=names.mac_for_ip(node.gateway), mtu=mtu))
        ns.addresses.add(Address(BRIDGE, f"{node.gateway}/{block.prefixlen}"))
        for other in topo.nodes.values():
            if other.name != node.name:
                ns.add_route(Route(other.pod_cidr, (NextHop(gateway=other.underlay_ip, dev=UNDERLAY_IF),)))

    for pod in topo.pods.values():
        node = topo.nodes[pod.node]
        host = state.ns(node.netns)
        host.add_link(Link(pod.host_veth, "veth", mtu=mtu, master=BRIDGE, peer_netns=pod.netns, peer_name=POD_IF))
        ns = state.ns(pod.netns)
        ns.sysctls["net.ipv4.ip_forward"] = "0"
        ns.add_link(Link("lo", "loopback"))
        ns.add_link(
            Link(POD_IF, "veth", mac=pod.mac, mtu=mtu, peer_netns=node.netns, peer_name=pod.host_veth)
        )
        ns.addresses.add(Address(POD_IF, f"{pod.ip}/{pod.prefix}"))
        ns.add_route(Route("0.0.0.0/0", (NextHop(gateway=node.gateway, dev=POD_IF),)))
    return state


def _netexec_config(topo: Topology) -> dict:
    return {
        "cluster": topo.cluster,
        "pods": [
            {
                "pod": pod.key,
                "name": pod.name,
                "netns": pod.netns,
                "ports": [{"port": p.port, "protocol": p.protocol} for p in pod.ports],
            }
            for pod in sorted(topo.pods.values(), key=lambda p: p.key)
            if pod.ports
        ],
    }

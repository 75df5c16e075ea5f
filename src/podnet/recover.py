"""A lost state file, recovered from what the cluster's namespaces hold.

The allocations (which block each node has, which node and address each pod has, the
underlay's addresses, Services' ClusterIPs and node ports) are kept in the state file so that
every ``up`` gives a running pod the address it already has. When that file is lost while the
cluster runs, planning afresh would move pods to other nodes and addresses under their
users. Everything that matters is still in the kernel, in namespaces podnet names:

- a node's block is the network of its bridge's (``cni0``) address;
- a node's and a router's underlay addresses are those inside their segments' CIDRs;
- a pod's address is its ``eth0``'s, and its node is the namespace that holds the other end
  of that veth pair;
- a Service's ClusterIP and node ports are the keys of the ``services`` and ``nodeports``
  maps in the nodes' nftables tables, whose verdicts name the Service's chains.

The endpoint slots (where a Service port's endpoints sit in the shared endpoint maps) name no
Service either, but the endpoints they hold do: once the pods have their addresses back,
``recover_slots`` finds each port's slot by the list of endpoints stored there, so the
Service rules come out as they are. A Service without endpoints is only in the
``no-endpoints`` map, which names no Service: it gets a ClusterIP afresh (nothing answers it
anyway), as do the ASNs of backend bgp, which the planner derives from the spec.
Pure: from the Topology planned for the spec and the State observed, to Allocations.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnet.plan.cluster import BRIDGE, POD_IF
from podnet.plan.ipam import Allocations
from podnet.plan.topology import LOCAL_OFFSET, SLOT_WIDTH, Topology
from podnet.state import NetnsState, State

# What a summary calls each kind, in the order it names them.
KINDS = {
    "node_cidr": "node blocks",
    "underlay_ip": "underlay addresses",
    "pod_ip": "pod addresses",
    "service_ip": "ClusterIPs",
    "node_port": "node ports",
}


@dataclass
class Recovery:
    allocations: Allocations

    def with_slots(self, slots: dict[str, str]) -> Recovery:
        return Recovery({**self.allocations, "service_slot": slots} if slots else self.allocations)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.allocations.get(kind, {})) for kind in KINDS}

    def summary(self) -> str:
        return ", ".join(f"{n} {KINDS[kind]}" for kind, n in self.counts().items() if n)


def recover(topo: Topology, observed: State) -> Recovery:
    """The allocations the running cluster uses, for the nodes, pods and Services of ``topo``."""
    allocations: Allocations = {kind: {} for kind in (*KINDS, "pod_node")}
    _nodes(topo, observed, allocations)
    _routers(topo, observed, allocations)
    _pods(topo, observed, allocations)
    _services(topo, observed, allocations)
    return Recovery({kind: values for kind, values in allocations.items() if values})


def _addresses(ns: NetnsState | None) -> list[tuple[str, ipaddress.IPv4Interface]]:
    return [] if ns is None else [(a.ifname, ipaddress.IPv4Interface(a.cidr)) for a in ns.addresses]


def _nodes(topo: Topology, observed: State, allocations: Allocations) -> None:
    pods_by_netns = {pod.netns: pod.key for pod in topo.pods.values()}
    for node in topo.nodes.values():
        ns = observed.namespaces.get(node.netns)
        segment = ipaddress.IPv4Network(topo.subnets[node.subnet].cidr)
        for ifname, iface in _addresses(ns):
            if ifname == BRIDGE:
                allocations["node_cidr"][node.name] = str(iface.network)
            elif iface.ip in segment:
                allocations["underlay_ip"][f"node:{node.name}"] = str(iface.ip)
        for link in ns.links.values() if ns else ():
            pod = pods_by_netns.get(link.peer_netns or "")
            if link.kind == "veth" and pod is not None and link.peer_name == POD_IF:
                allocations["pod_node"][pod] = node.name


def _routers(topo: Topology, observed: State, allocations: Allocations) -> None:
    for router in topo.routers.values():
        segments = {i.subnet: ipaddress.IPv4Network(topo.subnets[i.subnet].cidr) for i in router.interfaces}
        for _, iface in _addresses(observed.namespaces.get(router.netns)):
            for subnet, cidr in segments.items():
                if iface.ip in cidr:
                    allocations["underlay_ip"][f"router:{router.name}:{subnet}"] = str(iface.ip)


def _pods(topo: Topology, observed: State, allocations: Allocations) -> None:
    for pod in topo.pods.values():
        for ifname, iface in _addresses(observed.namespaces.get(pod.netns)):
            if ifname == POD_IF:
                allocations["pod_ip"][pod.key] = str(iface.ip)


def _services(topo: Topology, observed: State, allocations: Allocations) -> None:
    """ClusterIPs and node ports from the nodes' maps: ``VIP . tcp . 80 : goto svc-NS/NAME/tcp/80``
    and ``tcp . 30080 : goto nodeport-NS/NAME/tcp/80`` (plan/nat.py names the chains)."""
    for node in topo.nodes.values():
        ns = observed.namespaces.get(node.netns)
        sets = ns.nft.sets if ns is not None and ns.nft is not None else {}
        for element in sets["services"].elements if "services" in sets else ():
            key, chain = _verdict(element, "svc")
            if chain is not None:
                allocations["service_ip"].setdefault(chain[0], key.split(" . ")[0])
        for element in sets["nodeports"].elements if "nodeports" in sets else ():
            key, chain = _verdict(element, "nodeport")
            if chain is not None:
                service, protocol, port = chain
                allocations["node_port"][f"{service}:{protocol.upper()}:{port}"] = key.split(" . ")[1]


def _verdict(element: str, kind: str, fields: int = 2) -> tuple[str, tuple[str, ...] | None]:
    """``KEY : goto KIND-NS/NAME/PROTO/PORT[/IP]`` as (KEY, (NS/NAME, PROTO, PORT[, IP])), with
    ``fields`` parts after the Service's name; None when the verdict names no such chain."""
    key, _, verdict = element.partition(" : ")
    target = verdict.removeprefix("goto ").strip('"')
    if not target.startswith(f"{kind}-"):
        return key, None
    parts = tuple(target[len(kind) + 1 :].rsplit("/", fields))
    return key, (parts if len(parts) == fields + 1 else None)


def recover_slots(topo: Topology, observed: State) -> dict[str, str]:
    """Each Service port's slot, from a ``topo`` planned with the recovered addresses: the slot
    whose endpoint-map elements (``SLOT*4096+i : IP . PORT``) list exactly the port's endpoints,
    or whose ``slots`` elements name its affinity chains (``... : goto ep-NS/NAME/PROTO/PORT/IP``)."""
    held: dict[tuple[str, int], dict[int, str]] = {}  # (protocol, slot) -> {index: "IP . PORT"}
    slots: dict[str, str] = {}
    for node in topo.nodes.values():
        ns = observed.namespaces.get(node.netns)
        for name, found in (ns.nft.sets if ns is not None and ns.nft is not None else {}).items():
            for element in found.elements:
                value, _, target = element.partition(" : ")
                if not value.isdigit():
                    continue
                slot, index = divmod(int(value), SLOT_WIDTH)
                if name.startswith("endpoints-") and index < LOCAL_OFFSET:
                    held.setdefault((name.split("-")[1], slot), {})[index] = target
                elif name == "slots" and (chain := _verdict(element, "ep", fields=3)[1]) is not None:
                    service, protocol, port, _ip = chain
                    slots[f"{service}:{protocol.upper()}:{port}"] = str(slot)
    by_endpoints: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for (protocol, slot), entries in sorted(held.items()):
        listed = tuple(entries[i] for i in sorted(entries))
        by_endpoints.setdefault((protocol, listed), []).append(slot)
    for svc in topo.services.values():
        for port in svc.ports:
            key = f"{svc.key}:{port.protocol}:{port.port}"
            wanted = (port.protocol.lower(), tuple(f"{e.ip} . {e.port}" for e in port.endpoints))
            candidates = by_endpoints.get(wanted)
            if key not in slots and candidates:
                slots[key] = str(candidates.pop(0))
    return slots

"""Spec + previous allocations -> desired State, Topology and the allocations to persist."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass

from podnet import names
from podnet.errors import SpecError
from podnet.plan import backends, bgp, dns, nat, policy, sysctls, underlay
from podnet.plan.connected import add_kernel_routes
from podnet.plan.ipam import Allocations, Exhausted, allocate, hosts
from podnet.plan.services import plan_services, service_route, service_route_needed
from podnet.plan.system import DNS_POD, with_system_objects
from podnet.plan.topology import HostInfo, Interface, NodeInfo, PodInfo, RouterInfo, SubnetInfo, Topology
from podnet.spec.models import Spec
from podnet.state import Address, Link, NextHop, Process, Route, State

BRIDGE = "cni0"
POD_IF = "eth0"
NETEXEC = "netexec"


@dataclass
class Plan:
    state: State
    topology: Topology
    allocations: Allocations
    netexec_config: dict
    dns_config: dict | None = None
    bgp: bgp.BgpPlan | None = None  # backend bgp: speakers, sessions, BIRD configs


def plan(spec: Spec, previous: Allocations | None = None) -> Plan:
    previous = previous or {}
    spec = with_system_objects(spec)
    c = spec.cluster
    mtu = c.underlay_mtu - backends.OVERHEAD[c.backend]
    topo = Topology(cluster=c.name, backend=c.backend, mtu=mtu)
    allocations: Allocations = {}

    for sn in c.subnets:
        topo.subnets[sn.name] = SubnetInfo(sn.name, str(sn.cidr), names.switch_netns(c.name, sn.name))
    if c.external is not None:
        topo.subnets[c.external.name] = SubnetInfo(
            c.external.name, str(c.external.cidr), names.switch_netns(c.name, c.external.name), external=True
        )

    _plan_underlay(spec, topo, previous, allocations)
    _plan_pods(spec, topo, previous, allocations)
    plan_services(spec, topo, previous, allocations)
    topo.policies = policy.compile_policies(spec, topo)

    state = State()
    underlay.build(state, topo, c.underlay_mtu, routed_by_bgp=c.backend == "bgp")
    _build_pods(state, topo)
    backends.BACKENDS[c.backend](state, topo, c.vni, c.vxlan_port)
    services = list(topo.services.values())
    for node in topo.nodes.values():
        members = [p for p in topo.pods.values() if p.node == node.name]
        state.ns(node.netns).nft = nat.node_table(
            node, members, services, str(c.pod_cidr), str(c.service_cidr), topo.policies
        )
        if service_route_needed(services):
            state.ns(node.netns).add_route(service_route(node, str(c.service_cidr)))

    netexec_config = _netexec_config(topo)
    if netexec_config["pods"]:
        digest = hashlib.sha256(json.dumps(netexec_config, sort_keys=True).encode()).hexdigest()[:16]
        state.processes[NETEXEC] = Process(NETEXEC, ("podnet", "netexec-daemon", "--cluster", c.name), digest)
    dns_config = None
    if c.dns_enabled:
        dns_config = _dns_config(spec, topo)
        state.processes["dns"] = Process("dns", ("podnet", "dns-daemon", "--cluster", c.name), dns.digest(dns_config))
        vip = dns.dns_vip(c.service_cidr)
        for pod in topo.pods.values():
            if pod.key != DNS_POD:
                state.ns(pod.netns).resolv_conf = dns.resolv_conf(pod.namespace, c.dns_domain, vip)
    bgp_plan = bgp.plan_bgp(spec, topo, state, previous, allocations) if c.backend == "bgp" else None
    add_kernel_routes(state)
    return Plan(state, topo, allocations, netexec_config, dns_config, bgp_plan)


def _dns_config(spec: Spec, topo: Topology) -> dict:
    services = [
        dns.DnsService(
            svc.namespace,
            svc.name,
            svc.cluster_ip,
            tuple(dns.DnsPort(p.name, p.protocol, p.port) for p in svc.ports),
            tuple(
                dns.DnsEndpoint(e.pod.split("/", 1)[1], e.ip)
                for e in sorted({e for p in svc.ports for e in p.endpoints}, key=lambda e: e.pod)
            ),
        )
        for svc in topo.services.values()
    ]
    written = {p.key: p for p in spec.pods}
    pods = [
        dns.DnsPod(p.namespace, p.name, p.ip, written[p.key].hostname, written[p.key].subdomain)
        for p in topo.pods.values()
    ]
    zone = dns.zone(spec.cluster.dns_domain, services, pods, spec.cluster.dns_upstreams)
    return {"netns": topo.pods[DNS_POD].netns, "zone": zone}


def _plan_underlay(spec: Spec, topo: Topology, previous: Allocations, allocations: Allocations) -> None:
    """Addresses on every segment: routers from the first host up, nodes from the second."""
    c = spec.cluster
    prev_addr = previous.get("underlay_ip", {})
    addresses: dict[str, str] = {}
    segments = [(sn.name, sn.cidr) for sn in c.subnets]
    if c.external is not None:
        segments.append((c.external.name, c.external.cidr))
    for subnet, cidr in segments:
        usable = hosts(cidr)
        taken = set()
        if c.external is not None and subnet == c.external.name:
            taken = {h.address for h in c.external.hosts}
            addresses.update({f"host:{h.name}": h.address for h in c.external.hosts})
        routers = [f"router:{r.name}:{subnet}" for r in c.routers if subnet in r.subnets or r.uplink == subnet]
        free = [ip for ip in usable if ip not in taken]
        got = allocate(routers, prev_addr, iter(free), valid=set(free))
        addresses.update(got)
        taken |= set(got.values())
        members = [f"node:{n}" for n in c.nodes if c.node_subnet[n] == subnet]
        node_pool = [ip for ip in usable[1:] if ip not in taken]  # .1 stays a gateway's
        try:
            addresses.update(allocate(members, prev_addr, iter(node_pool), valid=set(node_pool)))
        except Exhausted as exc:
            raise SpecError(
                spec.file,
                None,
                "spec.underlay",
                f"subnet {subnet} {cidr} has no address left for {exc.owner.split(':')[1]}",
            ) from None
    allocations["underlay_ip"] = addresses

    blocks = allocate(
        c.nodes,
        previous.get("node_cidr", {}),
        (str(b) for b in c.pod_cidr.subnets(new_prefix=c.node_mask)),
        valid=lambda block: _is_block_of(block, c.pod_cidr, c.node_mask),
    )
    allocations["node_cidr"] = blocks

    for r in c.routers:
        ifaces = []
        for i, subnet in enumerate([*r.subnets, *([r.uplink] if r.uplink else [])]):
            ip = addresses[f"router:{r.name}:{subnet}"]
            ifaces.append(
                Interface(
                    f"eth{i}",
                    subnet,
                    ip,
                    ipaddress.IPv4Network(topo.subnets[subnet].cidr).prefixlen,
                    names.mac_for_ip(ip),
                )
            )
        uplink = ifaces[-1].ifname if r.uplink else None
        topo.routers[r.name] = RouterInfo(r.name, names.node_netns(c.name, r.name), tuple(ifaces), uplink)

    for node in c.nodes:
        block = ipaddress.IPv4Network(blocks[node])
        subnet = c.node_subnet[node]
        topo.nodes[node] = NodeInfo(
            name=node,
            netns=names.node_netns(c.name, node),
            subnet=subnet,
            underlay_ip=addresses[f"node:{node}"],
            underlay_prefix=ipaddress.IPv4Network(topo.subnets[subnet].cidr).prefixlen,
            pod_cidr=str(block),
            gateway=str(next(block.hosts())),
        )

    if c.external is not None:
        edge = next(r for r in c.routers if r.uplink)
        gateway = addresses[f"router:{edge.name}:{c.external.name}"]
        for h in c.external.hosts:
            topo.hosts[h.name] = HostInfo(
                h.name,
                names.node_netns(c.name, h.name),
                h.address,
                c.external.cidr.prefixlen,
                names.mac_for_ip(h.address),
                gateway,
                h.ports,
            )


def _is_block_of(block: str, pod_cidr: ipaddress.IPv4Network, mask: int) -> bool:
    net = ipaddress.IPv4Network(block)
    return net.prefixlen == mask and net.subnet_of(pod_cidr)


def _plan_pods(spec: Spec, topo: Topology, previous: Allocations, allocations: Allocations) -> None:
    c = spec.cluster
    placement = _place(spec, previous.get("pod_node", {}))
    pod_ips: dict[str, str] = {}
    for node in c.nodes:
        members = [p for p in spec.pods if placement[p.key] == node]
        block = ipaddress.IPv4Network(topo.nodes[node].pod_cidr)
        block_hosts = hosts(block, skip_first=1)
        try:
            pod_ips.update(
                allocate(
                    [p.key for p in members], previous.get("pod_ip", {}), iter(block_hosts), valid=set(block_hosts)
                )
            )
        except Exhausted as exc:
            pod = next(p for p in members if p.key == exc.owner)
            raise SpecError(
                pod.file or spec.file,
                pod.line,
                "spec.nodeName" if pod.node else "metadata.name",
                f"node {node!r} has no address left for pod {pod.key}: its block {block} holds "
                f"{len(block_hosts)} pod address{'es' if len(block_hosts) != 1 else ''} "
                "(choose a smaller nodeCIDRMaskSize for bigger blocks, or add nodes)",
            ) from None
        host_ports: dict[tuple[int, str], str] = {}
        for pod in members:
            for port in pod.ports:
                if port.host_port is None:
                    continue
                key = (port.host_port, port.protocol)
                if key in host_ports:
                    raise SpecError(
                        pod.file or spec.file,
                        pod.line,
                        "spec.containers.ports.hostPort",
                        f"hostPort {port.host_port}/{port.protocol} of pod {pod.key} is already taken on node "
                        f"{node!r} by pod {host_ports[key]}",
                    )
                host_ports[key] = pod.key
    allocations["pod_node"] = placement
    allocations["pod_ip"] = pod_ips

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


def _build_pods(state: State, topo: Topology) -> None:
    """Each node's bridge with its gateway address, and each pod wired to it."""
    for node in topo.nodes.values():
        ns = state.ns(node.netns)
        block = ipaddress.IPv4Network(node.pod_cidr)
        ns.add_link(Link(BRIDGE, "bridge", mac=names.mac_for_ip(node.gateway), mtu=topo.mtu))
        # Replies of a pod to a Service client on the same bridge are bridged, not routed; they
        # must still pass conntrack to be un-DNATed (Kubernetes requires the same setting).
        ns.sysctls["net.bridge.bridge-nf-call-iptables"] = "1"
        ns.addresses.add(Address(BRIDGE, f"{node.gateway}/{block.prefixlen}"))
    for pod in topo.pods.values():
        node = topo.nodes[pod.node]
        state.ns(node.netns).add_link(
            Link(
                pod.host_veth,
                "veth",
                mtu=topo.mtu,
                master=BRIDGE,
                peer_netns=pod.netns,
                peer_name=POD_IF,
                hairpin=True,  # a pod reaching itself through a Service: out by the port it came in
            )
        )
        ns = state.ns(pod.netns)
        ns.sysctls.update(sysctls.ipv4(forwards=False))
        ns.add_link(Link("lo", "loopback"))
        ns.add_link(Link(POD_IF, "veth", mac=pod.mac, mtu=topo.mtu, peer_netns=node.netns, peer_name=pod.host_veth))
        ns.addresses.add(Address(POD_IF, f"{pod.ip}/{pod.prefix}"))
        ns.add_route(Route("0.0.0.0/0", (NextHop(gateway=node.gateway, dev=POD_IF),)))


def _netexec_config(topo: Topology) -> dict:
    servers = [
        {"pod": pod.key, "name": pod.name, "netns": pod.netns, "ports": pod.ports}
        for pod in sorted(topo.pods.values(), key=lambda p: p.key)
        if pod.key != DNS_POD  # served by the DNS daemon
    ] + [
        {"pod": host.name, "name": host.name, "netns": host.netns, "ports": host.ports}
        for host in sorted(topo.hosts.values(), key=lambda h: h.name)
    ]
    return {
        "cluster": topo.cluster,
        "pods": [
            {**s, "ports": [{"port": p.port, "protocol": p.protocol} for p in s["ports"]]}
            for s in servers
            if s["ports"]
        ],
    }

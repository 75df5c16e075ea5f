"""Each node's nftables table: Services (kube-proxy's job), egress masquerade and hostPort.

Shaped after kube-proxy's nftables mode, for load time that grows linearly with services:
- one named verdict map ``services`` from (VIP . protocol . port) to the service's chain, and
  ``nodeports`` from (protocol . port) for NodePorts on the node's address: the data path
  costs one lookup whether there are 10 services or 10,000;
- a service chain picks an endpoint with ``numgen random mod N offset SLOT`` looked up in one
  shared named map per protocol ``endpoints-tcp``/``endpoints-udp`` (SLOT -> address . port) and DNATs there: one rule per
  service port, no anonymous map per service (those load super-linearly);
- services with ``sessionAffinity: ClientIP`` keep a chain per endpoint instead, with a timed
  set of recent clients each (``update @aff-...``) checked before the random choice;
- packets that must leave with the node's address (hairpin: a pod reaching itself through
  its service; NodePort traffic with externalTrafficPolicy Cluster) are masqueraded;
- the service CIDR is a local route on every node (``plan.services.service_route``), so a
  packet to a service address that no service chain DNATed ends in this node's filter input:
  a service without endpoints (``no-endpoints``) and a port the ClusterIP does not serve
  are rejected at once (TCP reset, ICMP port unreachable) rather than letting clients hang,
  and an address no service has is dropped, as kube-proxy's nftables mode does; none of them
  ever reaches a socket of the node itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from podnet import gcpause, nftcode
from podnet.plan import policy
from podnet.plan.services import service_route_needed
from podnet.plan.topology import LOCAL_OFFSET, SLOT_WIDTH, Endpoint, NodeInfo, PodInfo, ServiceInfo, ServicePortInfo
from podnet.state import NftChain, NftRule, NftSet, NftTable

TABLE = "podnet"
MASQ_MARK = "0x00004000"
NAT_PRE = ("nat", "prerouting", -100, "accept")
NAT_OUT = ("nat", "output", -100, "accept")
NAT_POST = ("nat", "postrouting", 100, "accept")
FILTER = -10  # before the default filter priority, so a reject is not overtaken


ENDPOINT_SHARDS = 256  # see _endpoint_elements


def endpoint_map(proto: str, slot: int) -> str:
    """The endpoint map holding ``slot`` (a shard index, or any slot of the service port)."""
    shard = slot if slot < ENDPOINT_SHARDS else (slot // SLOT_WIDTH) % ENDPOINT_SHARDS
    return f"endpoints-{proto}-{shard}"


def chain_name(kind: str, svc: ServiceInfo, port: ServicePortInfo, endpoint_ip: str | None = None) -> str:
    base = f"{kind}-{svc.namespace}/{svc.name}/{port.protocol.lower()}/{port.port}"
    return f"{base}/{endpoint_ip}" if endpoint_ip else base


def node_table(
    node: NodeInfo,
    pods: list[PodInfo],
    services: list[ServiceInfo],
    pod_cidr: str,
    service_cidr: str,
    policies: policy.PolicySet | None = None,
) -> NftTable:
    with gcpause.paused():
        return _node_table(node, pods, services, pod_cidr, service_cidr, policies)


def _node_table(
    node: NodeInfo,
    pods: list[PodInfo],
    services: list[ServiceInfo],
    pod_cidr: str,
    service_cidr: str,
    policies: policy.PolicySet | None,
) -> NftTable:
    t = _Builder()
    host_ports = _host_port_rules(node, pods)
    t.chain("prerouting", NAT_PRE, [NftRule("jump services"), *host_ports])
    t.chain("output", NAT_OUT, [NftRule("jump services"), *host_ports])
    t.chain(
        "services",
        None,
        [
            NftRule("ip daddr . meta l4proto . th dport vmap @services"),
            NftRule(f"ip daddr {node.underlay_ip} meta l4proto . th dport vmap @nodeports", "NodePorts"),
        ],
    )
    t.chain(
        "postrouting",
        NAT_POST,
        [
            NftRule(f"meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade", "marked for masquerade"),
            NftRule("ct status dnat ip saddr . ip daddr @hairpin masquerade", "hairpin: a pod reaching itself"),
            NftRule(
                f'ip saddr {pod_cidr} ip daddr != {{ {pod_cidr}, {service_cidr} }} oifname != "cni0" masquerade',
                "egress: leaving the cluster",
            ),
        ],
    )
    t.chain("mark-for-masquerade", None, [NftRule(f"meta mark set meta mark | {MASQ_MARK}")])

    # Service maps: their elements are written over netlink (see podnet.nftcode).
    t.map("services", "type ipv4_addr . inet_proto . inet_service : verdict", netlink=True)
    t.map("nodeports", "type inet_proto . inet_service : verdict", netlink=True)
    t.map("no-endpoints", "type ipv4_addr . inet_proto . inet_service : verdict", netlink=True)
    t.set("cluster-ips", "type ipv4_addr", netlink=True)
    t.map("no-endpoint-nodeports", "type inet_proto . inet_service : verdict", netlink=True)
    # Endpoint maps per protocol (nft 1.0 refuses a shared "th dport" map on update), in
    # shards: the kernel checks every rule bound to a map for each element added (and every
    # element when a rule binds it), so a load costs rules x elements / shards; one map shared
    # by 10,000 service rules took 12 s. Measured at 10,000 services: 64 shards 0.50 s in the
    # kernel, 256 shards 0.33 s; more cost more in declarations than they save. A shard is
    # declared when a service port lands in it (see _endpoint_elements).
    t.map("slots", "typeof numgen random mod 2 : verdict", netlink=True)
    t.set("hairpin", "type ipv4_addr . ipv4_addr", netlink=True)

    for svc in sorted(services, key=lambda s: s.key):
        if svc.cluster_ip is None:
            continue  # headless: DNS only
        for port in svc.ports:
            _service_port(t, node, svc, port)
    _filter_input(t, node, services, service_cidr)
    policy.add_to_table(t, node, pods, policies)  # NetworkPolicy: its own chains, maps and sets
    return t.build()


def _filter_input(t: _Builder, node: NodeInfo, services: list[ServiceInfo], service_cidr: str) -> None:
    """What reaches this node undiverted: service addresses (their route is local here) and
    NodePorts without endpoints. Only the input hook: no such packet is ever forwarded."""
    rules = []
    if service_route_needed(services):
        rules.append(NftRule(f"ip daddr {service_cidr} goto service-cidr", "service addresses no endpoint took"))
        t.chain(
            "service-cidr",
            None,
            [
                NftRule("ip daddr . meta l4proto . th dport vmap @no-endpoints", "services without endpoints"),
                NftRule("ip daddr @cluster-ips goto reject-connection", "a port the ClusterIP does not serve"),
                NftRule("drop", "no service has this address"),
            ],
        )
    if t.elements["no-endpoint-nodeports"]:
        # Only then: every packet for the node's address (VXLAN's included) would pay a lookup.
        rules.append(
            NftRule(
                f"ip daddr {node.underlay_ip} meta l4proto . th dport vmap @no-endpoint-nodeports",
                "NodePorts without endpoints",
            )
        )
    if rules:
        t.chain("filter-input", ("filter", "input", FILTER, "accept"), rules)
        t.chain("reject-connection", None, [NftRule("meta l4proto tcp reject with tcp reset"), NftRule("reject")])


def _host_port_rules(node: NodeInfo, pods: list[PodInfo]) -> list[NftRule]:
    rules = []
    for pod in sorted(pods, key=lambda p: p.key):
        for port in pod.ports:
            if port.host_port is not None:
                proto = port.protocol.lower()
                rules.append(
                    NftRule(
                        f"ip daddr {node.underlay_ip} {proto} dport {port.host_port} dnat to {pod.ip}:{port.port}",
                        f"hostPort {pod.key}",
                    )
                )
    return rules


def _service_port(t: _Builder, node: NodeInfo, svc: ServiceInfo, port: ServicePortInfo) -> None:
    proto = port.protocol.lower()
    vip_key = f"{svc.cluster_ip} . {proto} . {port.port}"
    svc_chain = chain_name("svc", svc, port)
    t.element("cluster-ips", str(svc.cluster_ip))
    if not port.endpoints:
        t.element("no-endpoints", f"{vip_key} : goto reject-connection")
        if port.node_port:
            t.element("no-endpoint-nodeports", f"{proto} . {port.node_port} : goto reject-connection")
        return
    # only a pod on this node can reach itself through this node
    t.elements["hairpin"].update(f"{ep.ip} . {ep.ip}" for ep in port.endpoints if ep.node == node.name)
    t.element("services", f"{vip_key} : goto {svc_chain}")
    note = f"{svc.key}:{port.name or port.port}"
    if svc.affinity_timeout is None:
        _endpoint_elements(t, proto, port.slot, port.slot, port.endpoints)
        rules = [_pick(proto, len(port.endpoints), port.slot, note)]
    else:
        rules = []
        for i, ep in enumerate(port.endpoints):
            ep_chain = chain_name("ep", svc, port, ep.ip)
            affinity = chain_name("aff", svc, port, ep.ip)
            t.set(affinity, "type ipv4_addr; flags timeout", dynamic=True)
            rules.append(
                NftRule(
                    f"ip saddr @{affinity} goto {ep_chain}",
                    f"affinity {ep.pod}",
                    nftcode.saddr_in(affinity, "goto", ep_chain),
                )
            )
            t.element("slots", f"{port.slot + i} : goto {ep_chain}")
            t.chain(
                ep_chain,
                None,
                [
                    NftRule(
                        f"update @{affinity} {{ ip saddr timeout {svc.affinity_timeout}s }}",
                        code=nftcode.remember_saddr(affinity, svc.affinity_timeout),
                    ),
                    NftRule(
                        f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}",
                        ep.pod,
                        nftcode.dnat_to(proto, ep.ip, ep.port),
                    ),
                ],
            )
        count = len(port.endpoints)
        rules.append(
            NftRule(
                f"numgen random mod {count} offset {port.slot} vmap @slots",
                note,
                nftcode.slot_vmap(count, port.slot, "slots"),
            )
        )
    t.chain(svc_chain, None, rules)

    if port.node_port:
        np_key = f"{proto} . {port.node_port}"
        np_chain = chain_name("nodeport", svc, port)
        if not svc.local:
            t.element("nodeports", f"{np_key} : goto {np_chain}")
            rules = [
                NftRule("jump mark-for-masquerade", code=nftcode.verdict("jump", "mark-for-masquerade")),
                NftRule(f"goto {svc_chain}", code=nftcode.verdict("goto", svc_chain)),
            ]
            t.chain(np_chain, None, rules)
            return
        local = port.local_endpoints(node.name)
        if not local:
            # externalTrafficPolicy Local with no endpoint here: dropped, as kube-proxy does.
            t.element("no-endpoint-nodeports", f"{np_key} : drop")
            return
        base = port.slot + LOCAL_OFFSET
        _endpoint_elements(t, proto, port.slot, base, local)
        t.element("nodeports", f"{np_key} : goto {np_chain}")
        t.chain(np_chain, None, [_pick(proto, len(local), base, f"{note} local endpoints")])


def _endpoint_elements(t: _Builder, proto: str, slot: int, base: int, endpoints: Sequence[Endpoint]) -> None:
    """Slots ``base``, ``base + 1``, ... of the port at ``slot`` hold these endpoints."""
    name = endpoint_map(proto, slot)
    if name not in t.decls:
        t.map(name, f"typeof numgen random mod 2 : ip daddr . {proto} dport", netlink=True)
    t.elements[name].update(f"{base + i} : {ep.ip} . {ep.port}" for i, ep in enumerate(endpoints))


def _pick(proto: str, count: int, offset: int, note: str) -> NftRule:
    name = endpoint_map(proto, offset)
    return NftRule(
        f"meta l4proto {proto} dnat ip to numgen random mod {count} offset {offset} map @{name}",
        note,
        nftcode.pick(proto, count, offset, name),
    )


class _Builder:
    def __init__(self) -> None:
        self.chains: dict[str, NftChain] = {}
        self.decls: dict[str, tuple[str, str, bool, bool]] = {}  # name -> (decl, kind, dynamic, netlink)
        self.elements: dict[str, set[str]] = {}

    def chain(self, name: str, hook: tuple[str, str, int, str] | None, rules: list[NftRule]) -> None:
        self.chains[name] = NftChain.of(name, hook, rules)

    def map(self, name: str, decl: str, netlink: bool = False) -> None:
        self.decls[name] = (decl, "map", False, netlink)
        self.elements[name] = set()

    def set(self, name: str, decl: str, dynamic: bool = False, netlink: bool = False) -> None:
        self.decls[name] = (decl, "set", dynamic, netlink)
        self.elements[name] = set()

    def element(self, name: str, element: str) -> None:
        self.elements[name].add(element)

    def build(self) -> NftTable:
        sets = {
            name: NftSet(name, decl, kind, frozenset(self.elements[name]), dynamic, netlink)
            for name, (decl, kind, dynamic, netlink) in self.decls.items()
        }
        return NftTable("ip", TABLE, dict(self.chains), sets)

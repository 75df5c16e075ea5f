"""Walk one packet through a State, hop by hop, in the order the kernel takes its decisions.

At each namespace: bridging (FDB lookup, or up to IP when the frame is for the bridge), the
netfilter hooks of podnet's table (DNAT to a service endpoint, NodePort, hostPort, rejects,
masquerade), the route lookup (every candidate, the winner by longest prefix, the ECMP member
for this flow), neighbour resolution (a permanent entry, or the ARP exchange it would take),
VXLAN encapsulation and decapsulation, and finally delivery to a listening socket or a drop
with its reason. The reply is walked back the same way, with conntrack's reverse NAT applied
where the forward packet was translated.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from podnet.plan import flowhash, policy
from podnet.plan.system import DNS_POD
from podnet.plan.topology import Topology
from podnet.state import Link, NetnsState, State
from podnet.trace import fib, netfilter
from podnet.trace.model import Hop, Packet, TraceResult

MAX_HOPS = 40
VXLAN_HEADROOM = 50


class TraceError(Exception):
    """The source or destination cannot be resolved."""


@dataclass
class _Conntrack:
    """Translations made on the way out, per namespace, undone on the way back."""

    entries: list[tuple[str, str, str, str]] = field(default_factory=list)  # (netns, kind, before, after)

    def add(self, netns: str, kind: str, before: str, after: str) -> None:
        self.entries.append((netns, kind, before, after))


@dataclass
class _Frame:
    pkt: Packet  # the inner packet (the one the user asked about)
    outer: Packet | None = None  # the VXLAN outer packet while encapsulated
    vni: int | None = None

    @property
    def wire(self) -> Packet:
        return self.outer or self.pkt


class Tracer:
    def __init__(
        self,
        state: State,
        topology: Topology,
        planned: State | None = None,
        dns_config: dict | None = None,
        mode: str = "planned",
    ) -> None:
        self.state = state
        self.topo = topology
        self.planned = planned or state
        self.dns_config = dns_config
        self.mode = mode
        self.drift: list[str] = []
        self.choice: int | None = None
        # Memos over the State and Topology, which a Tracer never changes (thousands of traces
        # on one plan would otherwise walk every bridge and scan every pod at every hop).
        self._kinds: dict[str, tuple[str, str]] = {}
        self._domains: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._arp: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}  # who answers for an IP
        self._ports: dict[tuple[str, str], dict[str | None, str]] = {}  # bridge: MAC -> port
        self._pods_in: dict[str, list] | None = None

    # --- endpoints -------------------------------------------------------------------------

    def resolve_source(self, name: str) -> tuple[str, str]:
        """(netns, source address) of a pod, node, router or external host."""
        pod = self.topo.pods.get(name) or self.topo.pods.get(f"default/{name}")
        if pod is not None:
            return pod.netns, pod.ip
        if name in self.topo.nodes:
            n = self.topo.nodes[name]
            return n.netns, n.underlay_ip
        if name in self.topo.routers:
            r = self.topo.routers[name]
            return r.netns, r.interfaces[0].ip
        if name in self.topo.hosts:
            h = self.topo.hosts[name]
            return h.netns, h.ip
        choices = ", ".join(sorted([*self.topo.pods, *self.topo.nodes, *self.topo.routers, *self.topo.hosts]))
        raise TraceError(f"no pod, node, router or external host {name!r} (expected one of: {choices})")

    def resolve_destination(self, name: str, source_netns: str) -> tuple[str, dict | None]:
        """An address for DST: an IP, a known name, or a DNS name resolved as the source would."""
        try:
            return str(ipaddress.IPv4Address(name)), None
        except ValueError:
            pass
        try:
            return self.resolve_source(name)[1], None
        except TraceError:
            pass
        return self._resolve_dns(name, source_netns)

    def _resolve_dns(self, name: str, source_netns: str) -> tuple[str, dict]:
        if not self.dns_config:
            raise TraceError(f"{name!r} is neither a known name nor an address, and the cluster has no DNS")
        zone = self.dns_config["zone"]
        a_records: dict[str, list[str]] = {}
        for r in zone["records"]:
            if r["type"] == "A":
                a_records.setdefault(r["name"], []).append(r["data"])
        ns = self.state.namespaces.get(source_netns)
        resolv = ns.resolv_conf if ns is not None else None
        search: list[str] = []
        ndots = 1
        server = None
        for line in (resolv or "").splitlines():
            parts = line.split()
            if parts and parts[0] == "search":
                search = parts[1:]
            elif parts and parts[0] == "nameserver":
                server = parts[1]
            elif parts and parts[0] == "options":
                for opt in parts[1:]:
                    if opt.startswith("ndots:"):
                        ndots = int(opt.split(":")[1])
        tried = []
        if name.endswith("."):
            candidates = [name]
        elif name.count(".") >= ndots:
            candidates = [name + ".", *[f"{name}.{s}." for s in search]]
        else:
            candidates = [*[f"{name}.{s}." for s in search], name + "."]
        for fqdn in candidates:
            answers = a_records.get(fqdn.lower())
            tried.append({"query": fqdn, "answer": answers or "NXDOMAIN"})
            if answers:
                return answers[0], {
                    "query": name,
                    "server": server,
                    "search": search,
                    "tried": tried,
                    "answer": answers,
                    "chosen": answers[0],
                }
        raise TraceError(f"{name!r} does not resolve (tried {', '.join(t['query'] for t in tried)})")

    # --- the walk --------------------------------------------------------------------------

    def trace(
        self,
        source: str,
        destination: str,
        proto: str = "tcp",
        port: int | None = None,
        choice: int | None = None,
        sport: int | None = None,
    ) -> TraceResult:
        """``choice``: which endpoint a Service's random pick gives this packet (default: by flow hash);
        ``sport``: the source port (default: one derived from the flow)."""
        self.choice = choice
        src_ns, src_ip = self.resolve_source(source)
        dst_ip, dns = self.resolve_destination(destination, src_ns)
        if port is None:
            if proto == "sctp":
                raise TraceError("--proto sctp needs a --port (SCTP has no usual one)")
            port = {"tcp": 80, "udp": 53}.get(proto, 0)
        if proto == "icmp":
            sport = 0
        elif sport is None:
            sport = 32768 + fib.flow_hash(src_ip, dst_ip, proto, port) % 28000
        pkt = Packet(src_ip, dst_ip, proto, sport, port if proto != "icmp" else 0)
        result = TraceResult(source, destination, pkt, dns=dns, state=self.mode)
        track = _Conntrack()
        delivered = self._walk(src_ns, _Frame(pkt), result.hops, track, result)
        if delivered is not None and result.verdict == "delivered":
            back = Packet(delivered.dst_ip, delivered.src_ip, proto, delivered.dport, delivered.sport)
            reply = TraceResult(destination, source, back)
            end_ns = result.hops[-1].netns
            self._walk(end_ns, _Frame(back), reply.hops, track, reply, reply_of=track)
            result.reply = reply.hops
            result.reply_verdict = reply.verdict
        result.drift = sorted(set(self.drift))
        return result

    def _walk(
        self,
        ns_name: str,
        frame: _Frame,
        hops: list[Hop],
        track: _Conntrack,
        result: TraceResult,
        reply_of: _Conntrack | None = None,
    ) -> Packet | None:
        in_if: str | None = None
        local = True
        for _ in range(MAX_HOPS):
            ns = self.state.namespaces.get(ns_name)
            kind, name = self._kind_of(ns_name)
            hop = Hop(ns_name, kind, name, in_if)
            hops.append(hop)
            if ns is None:
                result.verdict, result.reason = "dropped", f"namespace {ns_name} does not exist"
                return None
            step = self._step(ns, hop, frame, in_if, local, track, result, reply_of)
            if step is None:
                return frame.pkt if result.verdict == "delivered" else None
            ns_name, in_if, frame = step
            local = False
        result.verdict, result.reason = "dropped", f"more than {MAX_HOPS} hops: a forwarding loop"
        return None

    def _step(
        self,
        ns: NetnsState,
        hop: Hop,
        frame: _Frame,
        in_if: str | None,
        local: bool,
        track: _Conntrack,
        result: TraceResult,
        reply_of: _Conntrack | None,
    ) -> tuple[str, str, _Frame] | None:
        view = self._view(ns)
        node_ip = self._node_ip(ns.name)
        link_in = ns.links.get(in_if) if in_if else None
        from_port = False

        # 1. A frame arriving on a bridge port is bridged, unless it is for the bridge itself.
        if link_in is not None and link_in.master:
            bridge = ns.links.get(link_in.master)
            if bridge is None:
                result.verdict, result.reason = "dropped", f"{in_if} is enslaved to a missing bridge"
                return None
            if frame.wire.dst_mac is not None and frame.wire.dst_mac != bridge.mac:
                if reply_of is not None and ns.sysctls.get("net.bridge.bridge-nf-call-iptables") == "1":
                    frame.pkt = self._reverse(ns.name, frame.pkt, reply_of, hop)
                if (
                    reply_of is None
                    and frame.outer is None
                    and ns.sysctls.get("net.bridge.bridge-nf-call-iptables") == "1"
                    and self._policy_drops(ns, hop, frame.pkt, result)
                ):
                    return None
                port = self._fdb(ns, bridge, frame.wire.dst_mac)
                hop.bridge = {"bridge": bridge.name, "dst_mac": frame.wire.dst_mac, "port": port, "flood": port is None}
                if port is None:
                    result.verdict, result.reason = "dropped", f"bridge {bridge.name}: no port has {frame.wire.dst_mac}"
                    return None
                hop.out_if = port
                hop.packet = frame.pkt
                self._note_encap(hop, frame)
                return self._across(ns, port, frame, result)
            hop.bridge = {"bridge": bridge.name, "dst_mac": frame.wire.dst_mac, "port": None, "to_ip": True}
            hop.notes.append(f"frame for {bridge.name}'s own MAC: up to IP on {bridge.name}")
            in_if = bridge.name
        from_port = link_in is not None and link_in.master is not None

        # 2. Reverse NAT for a reply, then nat prerouting (or output, for a local sender).
        pkt = frame.wire
        marked = False
        if frame.outer is None:
            if reply_of is not None:
                frame.pkt = self._reverse(ns.name, frame.pkt, reply_of, hop)
            if view is not None and reply_of is None:
                hook = "output" if local else "prerouting"
                nat = netfilter.prerouting(view, frame.pkt, frame.pkt.five_tuple(), hook, self.choice)
                if nat.text:
                    found = re.search(r"endpoint \d+ of (\d+)", nat.text)
                    if found and result.choices is None:
                        result.choices = int(found.group(1))
                    track.add(
                        ns.name,
                        "dnat",
                        f"{frame.pkt.dst_ip}:{frame.pkt.dport}",
                        f"{nat.packet.dst_ip}:{nat.packet.dport}",
                    )
                    hop.nat = nat.text
                    hop.netfilter.append(nat.text)
                    marked = nat.masquerade_mark
                original_dst = frame.pkt.dst_ip
                frame.pkt = nat.packet
            else:
                original_dst = frame.pkt.dst_ip
            pkt = frame.pkt
        else:
            original_dst = pkt.dst_ip

        # 3. Route lookup.
        decision = fib.lookup(ns, pkt.dst_ip, pkt.five_tuple(), forwarded=not local)
        hop.route = decision.to_json()
        if decision.kind == "none":
            result.verdict, result.reason = "dropped", f"{hop.name}: no route to {pkt.dst_ip}"
            hop.packet = frame.pkt
            return None

        if decision.kind == "local":
            return self._deliver(ns, hop, frame, decision, view, node_ip, result, reply_of)

        # br_netfilter: a frame that came up from a bridge port, was DNATed in the bridge's
        # prerouting hook, and is routed back out of the same bridge is bridged, not routed:
        # it keeps its source MAC and its TTL (what Kubernetes' hairpin and same-node Services see).
        out_dev0 = decision.nexthop.dev if decision.nexthop else None
        bridged_back = (
            not local
            and from_port
            and frame.outer is None
            and hop.nat is not None
            and out_dev0 == in_if
            and ns.sysctls.get("net.bridge.bridge-nf-call-iptables") == "1"
        )
        if bridged_back:
            hop.notes.append(
                f"br_netfilter: DNATed in {in_if}'s prerouting and routed back out of {in_if}: bridged (TTL and source MAC kept)"
            )

        # 4. Forwarding checks, filter forward/output, TTL.
        if not local and not bridged_back:
            if ns.sysctls.get("net.ipv4.ip_forward") != "1":
                result.verdict, result.reason = "dropped", f"{hop.name} does not forward (net.ipv4.ip_forward=0)"
                hop.packet = frame.pkt
                return None
            if pkt.ttl <= 1:
                result.verdict, result.reason = "dropped", f"TTL expired at {hop.name}"
                return None
            if frame.outer is None:
                frame.pkt = frame.pkt.with_(ttl=frame.pkt.ttl - 1)
            else:
                frame.outer = frame.outer.with_(ttl=frame.outer.ttl - 1)
        if view is not None and frame.outer is None:
            if self._filtered(view, frame.pkt, node_ip, "output" if local else "forward", hop, result):
                return None
            if not local and reply_of is None and self._policy_drops(ns, hop, frame.pkt, result):
                return None

        out_dev = decision.nexthop.dev if decision.nexthop else None
        out_link = ns.links.get(out_dev or "")
        if out_link is None:
            result.verdict, result.reason = "dropped", f"{hop.name}: route points at missing device {out_dev}"
            return None
        gateway = decision.nexthop.gateway or (frame.wire.dst_ip)

        # 5. nat postrouting.
        if view is not None and frame.outer is None and reply_of is None:
            post = netfilter.postrouting(
                view, frame.pkt, original_dst, marked, out_link.name, self._primary_ip(ns, out_link.name)
            )
            if post.text:
                track.add(ns.name, "snat", frame.pkt.src_ip, post.packet.src_ip)
                hop.nat = (hop.nat + "; " if hop.nat else "") + post.text
                hop.netfilter.append(post.text)
                frame.pkt = post.packet

        # 6. VXLAN: the inner frame goes into a UDP datagram to the remote VTEP.
        if out_link.kind == "vxlan" and frame.outer is None:
            neigh = next((n for n in ns.neighbours if n.ifname == out_link.name and n.ip == gateway), None)
            if neigh is None:
                result.verdict, result.reason = (
                    "dropped",
                    f"{hop.name}: no neighbour entry for VTEP {gateway} on {out_link.name}",
                )
                return None
            fdb = next((f for f in ns.fdb if f.ifname == out_link.name and f.mac == neigh.mac), None)
            if fdb is None:
                result.verdict, result.reason = (
                    "dropped",
                    f"{hop.name}: no FDB entry for {neigh.mac} on {out_link.name}",
                )
                return None
            hop.neighbour = {"ip": gateway, "mac": neigh.mac, "source": "permanent entry", "dev": out_link.name}
            frame.pkt = frame.pkt.with_(src_mac=out_link.mac, dst_mac=neigh.mac)
            sport, known = self._outer_source_port(ns, out_link, frame.pkt, hop)
            frame.outer = Packet(out_link.local or "", fdb.dst, "udp", sport, out_link.dstport or 4789)
            frame.vni = out_link.vni
            hop.encap = {
                "device": out_link.name,
                "outer_src": out_link.local,
                "outer_dst": fdb.dst,
                "udp_sport": sport,
                "udp_dport": out_link.dstport,
                "vni": out_link.vni,
                "fdb": f"{neigh.mac} -> {fdb.dst}",
            }
            # The outer datagram is sent by this namespace: route it like local traffic.
            outer_decision = fib.lookup(ns, fdb.dst, frame.outer.five_tuple())
            if outer_decision.predicted and not known:
                outer_decision = replace(outer_decision, predicted=False)
            if outer_decision.kind != "unicast":
                result.verdict, result.reason = "dropped", f"{hop.name}: no underlay route to VTEP {fdb.dst}"
                return None
            hop.notes.append(f"underlay route to {fdb.dst}: {outer_decision.reason}")
            hop.route = {**(hop.route or {}), "underlay": outer_decision.to_json()}
            out_link = ns.links[outer_decision.nexthop.dev]
            gateway = outer_decision.nexthop.gateway or fdb.dst

        # 7. Neighbour resolution, headers as the frame leaves.
        mac, how = self._neighbour(ns, out_link, gateway)
        if mac is None:
            result.verdict, result.reason = "dropped", f"{hop.name}: {gateway} does not answer ARP on {out_link.name}"
            hop.neighbour = {"ip": gateway, "mac": None, "source": how, "dev": out_link.name}
            return None
        if hop.neighbour is None or frame.outer is not None:
            entry = {"ip": gateway, "mac": mac, "source": how, "dev": out_link.name}
            if hop.neighbour is None:
                hop.neighbour = entry
            else:
                hop.neighbour = {**hop.neighbour, "underlay": entry}
        if frame.outer is not None:
            frame.outer = frame.outer.with_(src_mac=out_link.mac, dst_mac=mac)
        elif bridged_back:
            frame.pkt = frame.pkt.with_(dst_mac=mac)
        else:
            frame.pkt = frame.pkt.with_(src_mac=out_link.mac, dst_mac=mac)
        hop.packet = frame.pkt
        self._note_encap(hop, frame)
        return self._transmit(ns, hop, frame, out_link, mac, result)

    # --- pieces ----------------------------------------------------------------------------

    def _transmit(self, ns, hop, frame, out_link, mac, result):
        """Send the frame out of ``out_link``: a bridge looks the MAC up in its FDB first."""
        hop.out_if = out_link.name
        if out_link.kind == "bridge":
            port = self._fdb(ns, out_link, mac)
            hop.bridge = {"bridge": out_link.name, "dst_mac": mac, "port": port, "flood": port is None}
            if port is None:
                result.verdict, result.reason = "dropped", f"bridge {out_link.name}: no port has {mac}"
                return None
            hop.out_if = f"{out_link.name}/{port}"
            return self._across(ns, port, frame, result)
        return self._across(ns, out_link.name, frame, result)

    def _deliver(self, ns, hop, frame, decision, view, node_ip, result, reply_of=None):
        is_reply = reply_of is not None
        pkt = frame.wire
        # A VXLAN datagram for this node's VTEP: decapsulate and process the inner frame here.
        if frame.outer is not None:
            vx = next(
                (
                    x
                    for x in ns.links.values()
                    if x.kind == "vxlan" and x.local == pkt.dst_ip and x.dstport == pkt.dport
                ),
                None,
            )
            if vx is None or vx.vni != frame.vni:
                result.verdict, result.reason = (
                    "dropped",
                    f"{hop.name}: no VXLAN device for VNI {frame.vni} on {pkt.dst_ip}",
                )
                return None
            hop.decap = {"device": vx.name, "outer_src": pkt.src_ip, "outer_dst": pkt.dst_ip, "vni": frame.vni}
            hop.notes.append(
                f"VXLAN datagram for {pkt.dst_ip}:{pkt.dport} (VNI {frame.vni}): decapsulated on {vx.name}"
            )
            frame.outer = None
            frame.vni = None
            frame.pkt = frame.pkt.with_(dst_mac=vx.mac)
            if reply_of is not None:
                frame.pkt = self._reverse(ns.name, frame.pkt, reply_of, hop)
            # The inner packet arrives on the VXLAN device: route it on from here, in the same hop.
            inner = fib.lookup(ns, frame.pkt.dst_ip, frame.pkt.five_tuple(), forwarded=True)
            hop.route = {**inner.to_json(), "underlay": decision.to_json()}
            if inner.kind == "none":
                result.verdict, result.reason = "dropped", f"{hop.name}: no route to {frame.pkt.dst_ip}"
                return None
            if inner.kind == "local":
                return self._deliver(ns, hop, frame, inner, view, node_ip, result, reply_of)
            if ns.sysctls.get("net.ipv4.ip_forward") != "1":
                result.verdict, result.reason = "dropped", f"{hop.name} does not forward (net.ipv4.ip_forward=0)"
                return None
            frame.pkt = frame.pkt.with_(ttl=frame.pkt.ttl - 1)
            out_link = ns.links[inner.nexthop.dev]
            gateway = inner.nexthop.gateway or frame.pkt.dst_ip
            mac, how = self._neighbour(ns, out_link, gateway)
            if mac is None:
                result.verdict, result.reason = "dropped", f"{hop.name}: {gateway} does not answer ARP"
                return None
            hop.neighbour = {"ip": gateway, "mac": mac, "source": how, "dev": out_link.name}
            frame.pkt = frame.pkt.with_(src_mac=out_link.mac, dst_mac=mac)
            hop.packet = frame.pkt
            return self._transmit(ns, hop, frame, out_link, mac, result)

        if view is not None and self._filtered(view, pkt, node_ip, "input", hop, result):
            return None
        hop.out_if = decision.nexthop.dev if decision.nexthop and decision.nexthop.dev == "lo" else None
        if hop.in_if is None:
            hop.notes.append(f"{pkt.dst_ip} is local: delivered over the loopback interface")
            hop.out_if = "lo"
        hop.packet = frame.pkt
        listener = self._listener(ns.name, pkt)
        if is_reply:
            result.verdict, result.reason = "delivered", f"delivered to the client's socket {pkt.dst_ip}:{pkt.dport}"
        elif pkt.proto == "icmp":
            result.verdict, result.reason = "delivered", f"{pkt.dst_ip} answers ICMP echo (the kernel itself)"
        elif listener:
            result.verdict, result.reason = (
                "delivered",
                f"delivered to {listener} on {pkt.dst_ip}:{pkt.dport}/{pkt.proto}",
            )
        else:
            how = "TCP reset" if pkt.proto == "tcp" else "ICMP port unreachable"
            result.verdict, result.reason = (
                "refused",
                f"nothing listens on {pkt.dst_ip}:{pkt.dport}/{pkt.proto} ({how})",
            )
        return None

    def _outer_source_port(self, ns: NetnsState, vxlan: Link, pkt: Packet, hop: Hop) -> tuple[int, bool]:
        """The VXLAN datagram's source port, from the inner packet's flow hash, and whether it
        is known: podnet's program sets that hash (``plan.flowhash``); without it, a
        connection's packets carry their socket's random one."""
        program = ns.tc.get(vxlan.name)
        if program is not None and program.id == flowhash.program_id():
            inner = flowhash.inner_hash(pkt.src_ip, pkt.dst_ip, pkt.proto, pkt.sport, pkt.dport)
            return flowhash.outer_source_port(inner, flowhash.port_range(ns.sysctls)), True
        hop.notes.append(
            f"outer UDP source port: from the inner packet's flow hash, not podnet's on {vxlan.name} "
            "(for a connection, its socket's random one): not known"
        )
        return 32768 + fib.flow_hash(*pkt.five_tuple()) % 28000, False

    def _kind_of(self, netns: str) -> tuple[str, str]:
        kind = self._kinds.get(netns)
        if kind is None:
            kind = self._kinds[netns] = self.topo.kind_of(netns)
        return kind

    def _filtered(self, view, pkt: Packet, node_ip: str | None, hook: str, hop: Hop, result: TraceResult) -> bool:
        """podnet's filter chains (services without endpoints): True when they end the packet here."""
        f = netfilter.filter_hook(view, pkt, node_ip, hook)
        if not (f.refused or f.dropped):
            return False
        hop.netfilter.append(f"filter {hook}: {f.refused or f.dropped}")
        result.verdict = "refused" if f.refused else "dropped"
        result.reason = f.refused or f.dropped
        hop.packet = pkt
        return True

    def _policy_drops(self, ns: NetnsState, hop: Hop, pkt: Packet, result: TraceResult) -> bool:
        """NetworkPolicy in the forward hook of the node that holds either end: egress of a
        local source, ingress of a local destination (after DNAT). Replies are never judged:
        conntrack lets established connections through."""
        if not self.topo.policies or pkt.proto not in netfilter.PORT_PROTOCOLS:
            return False
        node = next((n for n in self.topo.nodes.values() if n.netns == ns.name), None)
        if node is None:
            return False
        src = self._pod_by_ip.get(pkt.src_ip)
        dst = self._pod_by_ip.get(pkt.dst_ip)
        local = [(p, d) for p, d in ((src, "egress"), (dst, "ingress")) if p is not None and p.node == node.name]
        if not local:
            return False
        v = policy.verdict(self.topo, pkt.src_ip, pkt.dst_ip, pkt.proto, pkt.dport)
        parts = [part for part in v.reason.split("; ") for p, d in local if part.startswith(f"{d} of {p.key}")]
        if not parts:
            return False
        hop.netfilter.append("NetworkPolicy: " + "; ".join(parts))
        denied = [part for part in parts if "no rule allows" in part]
        if denied:
            hop.packet = pkt
            result.verdict = "dropped"
            result.reason = "NetworkPolicy: " + "; ".join(denied)
            return True
        return False

    @property
    def _pod_by_ip(self) -> dict:
        cached = getattr(self, "_pods_ip_cache", None)
        if cached is None:
            cached = self._pods_ip_cache = {p.ip: p for p in self.topo.pods.values()}
        return cached

    def _listener(self, netns: str, pkt: Packet) -> str | None:
        if self._pods_in is None:
            self._pods_in = {}
            for pod in self.topo.pods.values():
                self._pods_in.setdefault(pod.netns, []).append(pod)
        for pod in self._pods_in.get(netns, ()):
            if pod.netns == netns:
                if pod.key == DNS_POD and pkt.dport == 53:
                    return "the cluster DNS server (podnet dns-daemon)"
                if any(p.port == pkt.dport and p.protocol.lower() == pkt.proto for p in pod.ports):
                    return f"netexec of pod {pod.key}"
        for host in self.topo.hosts.values():
            if host.netns == netns and any(p.port == pkt.dport and p.protocol.lower() == pkt.proto for p in host.ports):
                return f"netexec of external host {host.name}"
        return None

    def _view(self, ns: NetnsState) -> netfilter.TableView | None:
        if ns.nft is None:
            return None
        planned_ns = self.planned.namespaces.get(ns.name)
        return netfilter.TableView(ns.nft, planned_ns.nft if planned_ns else None, ns.name, self.drift)

    def _node_ip(self, netns: str) -> str | None:
        return next((n.underlay_ip for n in self.topo.nodes.values() if n.netns == netns), None)

    def _primary_ip(self, ns: NetnsState, ifname: str) -> str | None:
        addrs = sorted(a.ip for a in ns.addresses if a.ifname == ifname)
        return addrs[0] if addrs else None

    def _reverse(self, netns: str, pkt: Packet, track: _Conntrack, hop: Hop) -> Packet:
        for ns_name, kind, before, after in reversed(track.entries):
            if ns_name != netns:
                continue
            if kind == "snat" and pkt.dst_ip == after:
                pkt = pkt.with_(dst_ip=before)
                hop.notes.append(f"conntrack: reverse SNAT, destination {after} -> {before}")
                hop.nat = (hop.nat + "; " if hop.nat else "") + f"reverse SNAT {after} -> {before}"
            if kind == "dnat":
                ip, port = after.split(":")
                if pkt.src_ip == ip and str(pkt.sport) == port:
                    vip, vport = before.split(":")
                    pkt = pkt.with_(src_ip=vip, sport=int(vport))
                    hop.notes.append(f"conntrack: reverse DNAT, source {after} -> {before}")
                    hop.nat = (hop.nat + "; " if hop.nat else "") + f"reverse DNAT {after} -> {before}"
        return pkt

    def _peer(self, ns: NetnsState, ifname: str) -> tuple[str, str] | None:
        link = ns.links.get(ifname)
        if link is None or link.kind != "veth" or not link.peer_netns or link.peer_netns == "?":
            return None
        return link.peer_netns, link.peer_name or ""

    def _across(self, ns: NetnsState, ifname: str, frame: _Frame, result: TraceResult):
        peer = self._peer(ns, ifname)
        if peer is None:
            result.verdict, result.reason = "dropped", f"{ns.name}: {ifname} leads nowhere (no veth peer)"
            return None
        return peer[0], peer[1], frame

    def _fdb(self, ns: NetnsState, bridge: Link, mac: str) -> str | None:
        """The port of ``bridge`` behind which ``mac`` lives (what the bridge has learned)."""
        ports = self._ports.get((ns.name, bridge.name))
        if ports is None:
            ports = self._ports[(ns.name, bridge.name)] = {}
            for link in ns.links.values():
                if link.master != bridge.name:
                    continue
                peer = self._peer(ns, link.name)
                if peer is None:
                    continue
                other = self.state.namespaces.get(peer[0])
                if other is not None and other.links.get(peer[1]) is not None:
                    ports.setdefault(other.links[peer[1]].mac, link.name)  # the first port wins
        return ports.get(mac)

    def _neighbour(self, ns: NetnsState, link: Link, ip: str) -> tuple[str | None, str]:
        for n in ns.neighbours:
            if n.ifname == link.name and n.ip == ip:
                return n.mac, "permanent entry"
        answers = self._arp.get((ns.name, link.name))
        if answers is None:
            answers = self._arp[(ns.name, link.name)] = {}
            for other_ns, other_if in self._l2_domain(ns, link.name):
                for a in self.state.namespaces[other_ns].addresses:
                    if a.ifname == other_if:
                        answers.setdefault(a.ip, (other_ns, other_if))  # the nearest in the walk wins
        if ip in answers:
            other_ns, other_if = answers[ip]
            return self.state.namespaces[other_ns].links[
                other_if
            ].mac, f"ARP: who-has {ip} tell {ns.name}; {other_if} in {self._kind_of(other_ns)[1]} replies"
        return None, "ARP: no reply"

    def _l2_domain(self, ns: NetnsState, ifname: str) -> list[tuple[str, str]]:
        """The L3 interfaces on the same Ethernet segment as ``ifname`` (through veths and bridges)."""
        cached = self._domains.get((ns.name, ifname))
        if cached is not None:
            return cached
        seen: set[tuple[str, str]] = set()
        found: list[tuple[str, str]] = []
        todo = [(ns.name, ifname)]
        while todo:
            ns_name, name = todo.pop()
            if (ns_name, name) in seen:
                continue
            seen.add((ns_name, name))
            here = self.state.namespaces.get(ns_name)
            if here is None or name not in here.links:
                continue
            link = here.links[name]
            if link.kind == "bridge":
                found.append((ns_name, name))
                todo += [(ns_name, port.name) for port in here.links.values() if port.master == name]
                continue
            if link.master:
                todo.append((ns_name, link.master))
            elif (ns_name, name) != (ns.name, ifname):
                found.append((ns_name, name))
            peer = self._peer(here, name)
            if peer is not None:
                todo.append(peer)
        self._domains[(ns.name, ifname)] = found
        return found

    def _note_encap(self, hop: Hop, frame: _Frame) -> None:
        if frame.outer is not None:
            o = frame.outer
            hop.encap = {
                **(hop.encap or {}),
                "outer_src": o.src_ip,
                "outer_dst": o.dst_ip,
                "udp_sport": o.sport,
                "udp_dport": o.dport,
                "vni": frame.vni,
                "outer_src_mac": o.src_mac,
                "outer_dst_mac": o.dst_mac,
                "outer_ttl": o.ttl,
            }

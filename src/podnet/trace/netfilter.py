"""podnet's nftables table, read the way the kernel evaluates it, for one packet.

Maps and sets come from the State being traced (observed: what the kernel holds); the text of
a rule comes from the planned table when the kernel's chain carries the same rule ids (if it
does not, the chain has drifted and the tracer says so instead of guessing).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from podnet.state import NftTable
from podnet.trace.fib import flow_hash
from podnet.trace.model import Packet

PICK = re.compile(r"numgen random mod (\d+) offset (\d+) (?:map @(endpoints-\w+-\d+)|vmap @slots)")
DNAT = re.compile(r"dnat to ([\d.]+):(\d+)")
HOSTPORT = re.compile(r"ip daddr ([\d.]+) (tcp|udp|sctp) dport (\d+) dnat to ([\d.]+):(\d+)")
EGRESS = re.compile(r'ip saddr (\S+) ip daddr != \{ (\S+), (\S+) \} oifname != "(\S+)" masquerade')
NODEPORTS = re.compile(r"ip daddr ([\d.]+) meta l4proto . th dport vmap @nodeports")
SERVICE_CIDR = re.compile(r"ip daddr ([\d./]+) goto service-cidr")
NO_ENDPOINT_NODEPORTS = re.compile(r"ip daddr ([\d.]+) meta l4proto . th dport vmap @no-endpoint-nodeports")


PORT_PROTOCOLS = ("tcp", "udp", "sctp")  # what Services, NodePorts, hostPorts and policies match ports of


@dataclass
class NatResult:
    packet: Packet
    text: str | None = None  # what happened, for the hop
    masquerade_mark: bool = False
    refused: str | None = None  # reject reason
    dropped: str | None = None


class TableView:
    """One namespace's table as the kernel holds it; a chain whose rule ids differ from the
    plan's is reported in ``drift`` (as "<netns>: nftables chain <name> differs from the plan")."""

    def __init__(
        self, have: NftTable, planned: NftTable | None, netns: str = "", drift: list[str] | None = None
    ) -> None:
        self.have = have
        self.planned = planned
        self.netns = netns
        self.drift: list[str] = [] if drift is None else drift

    def rules(self, chain: str) -> list[str]:
        got = self.have.chains.get(chain)
        if got is None:
            return []
        want = self.planned.chains.get(chain) if self.planned else None
        if want is None or want.ids != got.ids:
            self.drift.append(f"{self.netns}: nftables chain {chain} differs from the plan")
            if want is None:
                return []
        return [r.text for r in want.rules]

    def elements(self, name: str) -> frozenset[str]:
        s = self.have.sets.get(name)
        return s.elements if s else frozenset()

    def lookup(self, name: str, key: str) -> str | None:
        prefix = f"{key} : "
        for e in self.elements(name):
            if e.startswith(prefix):
                return e[len(prefix) :]
        return None


def _endpoints(view: TableView, mapname: str, count: int, offset: int) -> list[tuple[str, int]]:
    eps = []
    for i in range(count):
        value = view.lookup(mapname, str(offset + i))
        if value is not None:
            ip, port = value.split(" . ")
            eps.append((ip, int(port)))
    return eps


def _choose_from_chain(
    view: TableView, chain: str, pkt: Packet, flow: tuple, choice: int | None = None
) -> tuple[Packet, str] | None:
    """The endpoint this flow gets: the kernel draws it at random (numgen); the trace takes
    one by the flow's hash, or ``choice`` when asked (--verify tries every one)."""
    for rule in view.rules(chain):
        m = PICK.search(rule)
        if not m:
            continue
        count, offset = int(m.group(1)), int(m.group(2))
        if m.group(3):
            eps = _endpoints(view, m.group(3), count, offset)
            if not eps:
                return None
            i = (choice if choice is not None else flow_hash(*flow)) % len(eps)
            ip, port = eps[i]
            others = ", ".join(f"{a}:{b}" for a, b in eps)
            return pkt.with_(dst_ip=ip, dport=port), (
                f"DNAT {pkt.dst_ip}:{pkt.dport} -> {ip}:{port}: endpoint {i + 1} of {len(eps)} "
                f"(probability 1/{len(eps)}; endpoints {others}) in chain {chain}"
            )
        # affinity services: a slot names an endpoint chain
        i = (choice if choice is not None else flow_hash(*flow)) % count
        target = view.lookup("slots", str(offset + i))
        if target is None:
            return None
        ep_chain = target.split(" ", 1)[1]
        for ep_rule in view.rules(ep_chain):
            d = DNAT.search(ep_rule)
            if d:
                return pkt.with_(dst_ip=d.group(1), dport=int(d.group(2))), (
                    f"DNAT {pkt.dst_ip}:{pkt.dport} -> {d.group(1)}:{d.group(2)}: endpoint {i + 1} of {count} "
                    f"(probability 1/{count}; sessionAffinity ClientIP: later packets from {pkt.src_ip} "
                    f"stick to it) via {ep_chain}"
                )
    return None


def prerouting(
    view: TableView, pkt: Packet, flow: tuple, hook: str = "prerouting", choice: int | None = None
) -> NatResult:
    """nat prerouting (or output): Services, NodePorts, hostPorts."""
    if pkt.proto not in PORT_PROTOCOLS:
        return NatResult(pkt)
    key = f"{pkt.dst_ip} . {pkt.proto} . {pkt.dport}"
    target = view.lookup("services", key)
    if target is not None:
        chain = target.split(" ", 1)[1]
        chosen = _choose_from_chain(view, chain, pkt, flow, choice)
        if chosen:
            return NatResult(chosen[0], f"nat {hook}: service {chain.removeprefix('svc-')}: {chosen[1]}")
    for rule in view.rules("services"):
        m = NODEPORTS.search(rule)
        if m and m.group(1) == pkt.dst_ip:
            target = view.lookup("nodeports", f"{pkt.proto} . {pkt.dport}")
            if target is not None:
                chain = target.split(" ", 1)[1]
                rules = view.rules(chain)
                mark = any("mark-for-masquerade" in r for r in rules)
                inner = next((r.split()[-1] for r in rules if r.startswith("goto ")), chain)
                chosen = _choose_from_chain(view, inner, pkt, flow, choice)
                if chosen:
                    policy = "Cluster: marked for masquerade" if mark else "Local: client address kept"
                    return NatResult(
                        chosen[0], f"nat {hook}: NodePort {pkt.dport} ({policy}): {chosen[1]}", masquerade_mark=mark
                    )
    for rule in view.rules(hook):
        m = HOSTPORT.search(rule)
        if m and (m.group(1), m.group(2), int(m.group(3))) == (pkt.dst_ip, pkt.proto, pkt.dport):
            new = pkt.with_(dst_ip=m.group(4), dport=int(m.group(5)))
            return NatResult(new, f"nat {hook}: hostPort {pkt.dst_ip}:{pkt.dport} -> DNAT {m.group(4)}:{m.group(5)}")
    return NatResult(pkt)


def filter_hook(view: TableView, pkt: Packet, node_ip: str | None, hook: str = "input") -> NatResult:
    """podnet's filter chain of ``hook``: service addresses no endpoint took (refused, or
    dropped when no service has the address) and NodePorts without endpoints."""
    for rule in view.rules(f"filter-{hook}"):
        m = SERVICE_CIDR.search(rule)
        if m and ipaddress.IPv4Address(pkt.dst_ip) in ipaddress.IPv4Network(m.group(1)):
            return _service_cidr(view, pkt, m.group(1))
        m = NO_ENDPOINT_NODEPORTS.search(rule)
        if m and m.group(1) == pkt.dst_ip == node_ip and pkt.proto in PORT_PROTOCOLS:
            verdict = view.lookup("no-endpoint-nodeports", f"{pkt.proto} . {pkt.dport}")
            if verdict == "drop":
                return NatResult(
                    pkt, dropped=f"NodePort {pkt.dport} has no local endpoint (externalTrafficPolicy Local)"
                )
            if verdict is not None:
                return NatResult(pkt, refused=f"NodePort {pkt.dport}/{pkt.proto} rejected: no endpoints ({_how(pkt)})")
    return NatResult(pkt)


def _how(pkt: Packet) -> str:
    return "TCP reset" if pkt.proto == "tcp" else "ICMP port unreachable"


def _service_cidr(view: TableView, pkt: Packet, cidr: str) -> NatResult:
    """The chain ``service-cidr``: what happens to a service address nothing DNATed."""
    where = f"{pkt.dst_ip}:{pkt.dport}/{pkt.proto}" if pkt.proto != "icmp" else f"{pkt.dst_ip} (icmp)"
    if pkt.proto != "icmp" and view.lookup("no-endpoints", f"{pkt.dst_ip} . {pkt.proto} . {pkt.dport}"):
        return NatResult(pkt, refused=f"service {where} rejected: no endpoints ({_how(pkt)})")
    if pkt.dst_ip in view.elements("cluster-ips"):
        return NatResult(pkt, refused=f"ClusterIP {where} rejected: the service has no such port ({_how(pkt)})")
    return NatResult(pkt, dropped=f"{pkt.dst_ip} is in the service CIDR {cidr} but no service has it: dropped")


def postrouting(
    view: TableView, pkt: Packet, original_dst: str, marked: bool, out_if: str, out_ip: str | None
) -> NatResult:
    """nat postrouting: masquerade marked packets, hairpin, and egress leaving the cluster."""
    if out_ip is None:
        return NatResult(pkt)
    dnat_happened = original_dst != pkt.dst_ip
    if marked:
        return NatResult(pkt.with_(src_ip=out_ip), f"nat postrouting: masquerade {pkt.src_ip} -> {out_ip} (marked)")
    if dnat_happened and f"{pkt.src_ip} . {pkt.dst_ip}" in view.elements("hairpin"):
        return NatResult(
            pkt.with_(src_ip=out_ip), f"nat postrouting: hairpin (a pod reaching itself): masquerade -> {out_ip}"
        )
    for rule in view.rules("postrouting"):
        m = EGRESS.search(rule)
        if not m:
            continue
        src_net, a, b, bridge = m.groups()
        ip = ipaddress.IPv4Address(pkt.src_ip)
        dst = ipaddress.IPv4Address(pkt.dst_ip)
        inside = [ipaddress.IPv4Network(a), ipaddress.IPv4Network(b)]
        if ip in ipaddress.IPv4Network(src_net) and not any(dst in n for n in inside) and out_if != bridge:
            return NatResult(
                pkt.with_(src_ip=out_ip),
                f"nat postrouting: egress leaves the cluster: masquerade {pkt.src_ip} -> {out_ip}",
            )
    return NatResult(pkt)

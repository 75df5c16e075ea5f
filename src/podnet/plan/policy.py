"""NetworkPolicy: the semantics Kubernetes defines (pure), and the nftables chains that enforce them.

Semantics (https://kubernetes.io/docs/concepts/services-networking/network-policies/):

- A pod is *isolated* for a direction (Ingress, Egress) when at least one policy of its namespace
  selects it with that direction in its ``policyTypes``. A pod isolated in no direction, and the
  directions it is not isolated in, allow everything.
- Policies add up: an isolated pod accepts a connection when any rule of any policy selecting it
  for that direction allows it. There is no deny rule, and order never matters.
- A connection from pod A to pod B is allowed only when A's egress allows it *and* B's ingress
  allows it. Replies of an allowed connection are always allowed (conntrack).
- A rule allows a peer (``from``/``to``; empty: every peer) on a port (``ports``; empty: every
  port). A peer is a ``podSelector`` (pods of the policy's namespace), a ``namespaceSelector``
  (every pod of the matching namespaces), both in one peer (pods matching the pod selector *in*
  matching namespaces: AND), or an ``ipBlock`` (addresses in ``cidr`` and in none of ``except``).
  Separate peers are alternatives (OR).
- A port is a number (with ``endPort``: a range), or a container port's *name*, resolved on the
  destination pod (for ingress the selected pod, for egress the peer), with its protocol.
- Exceptions: a pod always reaches itself; traffic between a pod and its own node is always
  allowed (the node's traffic to its pods never passes the forward hook).
- Policies see the packet after the Service DNAT: a pod reaching a Service is checked against
  the endpoint chosen, and reaching DNS (the Service kube-system/kube-dns) is reaching the pod
  kube-system/coredns, which an egress-isolated pod needs a rule for.

Enforcement on each node, in podnet's table (one transaction with the rest of the node's rules):

    chain policy-egress  (filter forward, priority 0)  ct state established,related accept
                                                       ip saddr vmap @egress-pods
    chain policy-ingress (filter forward, priority 1)  ct state established,related accept
                                                       ip daddr vmap @ingress-pods
    map egress-pods / ingress-pods   local isolated pod's address : goto egress-NS/POD / ingress-NS/POD
    chain egress-NS/POD              the pod itself: accept; jump np-egress-NS/POLICY for each policy
                                     selecting it; then counter (log) drop
    chain np-egress-NS/POLICY        one rule per (rule, peer, port group): match ... accept
    set sel-HASH                     the addresses of the pods a peer selector selects
    set np-egress-NS/POLICY/R/ports  address . protocol . port of named ports

Both checks hang off the forward hook, which comes after nat prerouting (so it sees the Service's
endpoint, not the VIP) and which bridged IPv4 traffic also passes (br_netfilter with
``net.bridge.bridge-nf-call-iptables=1``: pods on one node talk through cni0). Accepting in
``policy-egress`` ends that base chain only; ``policy-ingress`` still runs. A pod joining a
selector changes set elements; a policy starting or stopping to select a pod changes that pod's
chain and one map element.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from podnet.plan.topology import NodeInfo, PodInfo, Topology
from podnet.spec.models import IPBlock, LabelSelector, NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, Spec
from podnet.state import NftRule

if TYPE_CHECKING:
    from podnet.plan.nat import _Builder

INGRESS = "Ingress"
EGRESS = "Egress"
DIRECTIONS = (EGRESS, INGRESS)
LOG_GROUP = 100  # nflog group of logged drops: `podnet exec NODE -- tcpdump -n -i nflog:100`
EGRESS_HOOK = ("filter", "forward", 0, "accept")
INGRESS_HOOK = ("filter", "forward", 1, "accept")
PEER_SET = "type ipv4_addr"
PORT_SET = "type ipv4_addr . inet_proto . inet_service"
PROTOCOLS = ("TCP", "UDP", "SCTP")  # a port's protocols in Kubernetes (nft matches SCTP headers itself)


# --- semantics ------------------------------------------------------------------------------


def selector_matches(sel: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics: matchLabels and every matchExpression (AND)."""
    for key, value in sel.match_labels:
        if labels.get(key) != value:
            return False
    for req in sel.match_expressions:
        present = req.key in labels
        if req.operator == "In":
            ok = present and labels[req.key] in req.values
        elif req.operator == "NotIn":
            ok = not present or labels[req.key] not in req.values
        elif req.operator == "Exists":
            ok = present
        else:  # DoesNotExist
            ok = not present
        if not ok:
            return False
    return True


def in_block(ip: str, block: IPBlock) -> bool:
    addr = ipaddress.IPv4Address(ip)
    if addr not in ipaddress.IPv4Network(block.cidr):
        return False
    return not any(addr in ipaddress.IPv4Network(hole) for hole in block.excepts)


def peer_selects_pod(policy: NetworkPolicy, peer: PolicyPeer, pod: PodInfo, namespace_labels: Mapping) -> bool:
    """Does a podSelector/namespaceSelector peer of ``policy`` select ``pod``? (ipBlock peers: no.)"""
    if peer.ip_block is not None:
        return False
    if peer.namespace_selector is None:
        if pod.namespace != policy.namespace:
            return False
    elif not selector_matches(peer.namespace_selector, namespace_labels.get(pod.namespace, {})):
        return False
    return peer.pod_selector is None or selector_matches(peer.pod_selector, pod.labels)


def _rules(policy: NetworkPolicy, direction: str) -> tuple[PolicyRule, ...]:
    return policy.ingress if direction == INGRESS else policy.egress


@dataclass
class PolicySet:
    """The cluster's NetworkPolicies and what they select, computed once per plan."""

    policies: tuple[NetworkPolicy, ...] = ()
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: tuple[PodInfo, ...] = ()
    selected: dict[str, tuple[str, ...]] = field(default_factory=dict)  # policy key -> pod keys it applies to
    # (pod key, direction) -> the policies isolating that pod in that direction, in file order
    isolating: dict[tuple[str, str], tuple[NetworkPolicy, ...]] = field(default_factory=dict)
    _members: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def policies_of(self, pod: str, direction: str) -> tuple[NetworkPolicy, ...]:
        return self.isolating.get((pod, direction), ())

    def peer_set(self, policy: NetworkPolicy, peer: PolicyPeer) -> tuple[str, frozenset[str]]:
        """The named set of a selector peer (shared by identical selectors) and its pods' addresses."""
        scope = policy.namespace if peer.namespace_selector is None else None
        identity = repr((scope, peer.pod_selector or LabelSelector(), peer.namespace_selector))
        name = "sel-" + hashlib.sha1(identity.encode()).hexdigest()[:12]
        if name not in self._members:
            self._members[name] = frozenset(
                p.ip for p in self.pods if peer_selects_pod(policy, peer, p, self.namespace_labels)
            )
        return name, self._members[name]

    def to_json(self) -> dict:
        return {
            "policies": [p.key for p in self.policies],
            "selected": {k: list(v) for k, v in sorted(self.selected.items())},
        }


def compile_policies(spec: Spec, topo: Topology) -> PolicySet:
    """Which pods each policy applies to, and which policies isolate each pod in each direction."""
    labels = {name: dict(ns.labels) for name, ns in spec.namespaces.items()}
    pods = tuple(sorted(topo.pods.values(), key=lambda p: p.key))
    ps = PolicySet(tuple(spec.policies), labels, pods)
    isolating: dict[tuple[str, str], list[NetworkPolicy]] = {}
    for pol in spec.policies:
        members = tuple(
            p.key for p in pods if p.namespace == pol.namespace and selector_matches(pol.pod_selector, p.labels)
        )
        ps.selected[pol.key] = members
        for direction in pol.types:
            for key in members:
                isolating.setdefault((key, direction), []).append(pol)
    ps.isolating = {k: tuple(v) for k, v in isolating.items()}
    return ps


@dataclass(frozen=True)
class _End:
    """One end of a connection: a pod, or an address that is no pod's."""

    ip: str
    pod: PodInfo | None

    def describe(self) -> str:
        return f"{self.pod.key} ({self.ip})" if self.pod else self.ip


class Verdict(NamedTuple):
    allowed: bool
    reason: str
    policies: list[str]  # allowed: the policies that allowed it; denied: those isolating the pod that denied it


def _end(topo: Topology, what: str | PodInfo) -> _End:
    if isinstance(what, PodInfo):
        return _End(what.ip, what)
    if what in topo.pods:
        return _End(topo.pods[what].ip, topo.pods[what])
    pod = next((p for p in topo.pods.values() if p.ip == what), None)
    if pod is None:
        ipaddress.IPv4Address(what)  # neither a pod nor an address: ValueError
    return _End(what, pod)


def node_addresses(node: NodeInfo) -> set[str]:
    """The addresses a node's own traffic to its pods may carry (underlay, cni0, VXLAN device)."""
    return {node.underlay_ip, node.gateway, str(ipaddress.IPv4Network(node.pod_cidr).network_address)}


def port_matches(port: PolicyPort, dst: _End, protocol: str, number: int) -> bool:
    if port.protocol != protocol:
        return False
    if port.port is None:
        return True
    if isinstance(port.port, int):
        return port.port <= number <= (port.end_port or port.port)
    # A named port: the destination pod must have a container port of that name and protocol.
    return dst.pod is not None and any(
        p.name == port.port and p.protocol == protocol and p.port == number for p in dst.pod.ports
    )


def rule_allows(
    ps: PolicySet, policy: NetworkPolicy, rule: PolicyRule, peer: _End, dst: _End, protocol: str, number: int
) -> bool:
    if rule.peers and not any(_peer_matches(ps, policy, p, peer) for p in rule.peers):
        return False
    return not rule.ports or any(port_matches(p, dst, protocol, number) for p in rule.ports)


def _peer_matches(ps: PolicySet, policy: NetworkPolicy, peer: PolicyPeer, end: _End) -> bool:
    if peer.ip_block is not None:
        return in_block(end.ip, peer.ip_block)
    return end.pod is not None and peer_selects_pod(policy, peer, end.pod, ps.namespace_labels)


def _side(
    ps: PolicySet, pod: PodInfo, direction: str, peer: _End, dst: _End, protocol: str, number: int
) -> tuple[bool, str, list[str]]:
    word = direction.lower()
    pols = ps.policies_of(pod.key, direction)
    if not pols:
        return True, f"{word} of {pod.key}: not isolated", []
    allowing = [
        p.key for p in pols if any(rule_allows(ps, p, r, peer, dst, protocol, number) for r in _rules(p, direction))
    ]
    if allowing:
        return True, f"{word} of {pod.key}: allowed by {', '.join(allowing)}", allowing
    keys = [p.key for p in pols]
    other = "to" if direction == EGRESS else "from"
    return (
        False,
        f"{word} of {pod.key}: isolated by {', '.join(keys)}, and no rule allows {other} "
        f"{peer.describe()} on {protocol}/{number}",
        keys,
    )


def verdict(topology: Topology, src: str | PodInfo, dst: str | PodInfo, protocol: str, port: int) -> Verdict:
    """Would the policies let ``src`` open a connection to ``dst`` on ``protocol``/``port``?

    ``src`` and ``dst`` are pods ("ns/name" or PodInfo) or addresses (a pod's, or any other);
    ``dst`` is the destination *after* any Service DNAT (the endpoint, not the VIP).
    """
    ps = topology.policies or PolicySet()
    protocol = protocol.upper()
    s, d = _end(topology, src), _end(topology, dst)
    if s.pod is not None and d.pod is not None and s.pod.key == d.pod.key:
        return Verdict(True, f"{s.pod.key} reaches itself: policies do not apply", [])
    reasons: list[str] = []
    allowed_by: list[str] = []
    denied_by: list[str] = []
    for pod, direction, peer in ((s.pod, EGRESS, d), (d.pod, INGRESS, s)):
        if pod is None:
            continue
        own = topology.nodes.get(pod.node)
        if peer.pod is None and own is not None and peer.ip in node_addresses(own):
            reasons.append(f"{direction.lower()} of {pod.key}: its own node {own.name} is always allowed")
            continue
        ok, text, names = _side(ps, pod, direction, peer, d, protocol, port)
        reasons.append(text)
        (allowed_by if ok else denied_by).extend(names)
    if denied_by:
        return Verdict(False, "; ".join(reasons), denied_by)
    return Verdict(True, "; ".join(reasons), allowed_by)


# --- nftables -------------------------------------------------------------------------------


def pod_chain(direction: str, pod: PodInfo) -> str:
    return f"{direction.lower()}-{pod.key}"


def policy_chain(direction: str, policy: NetworkPolicy) -> str:
    return f"np-{direction.lower()}-{policy.key}"


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_to_table(t: _Builder, node: NodeInfo, pods: list[PodInfo], ps: PolicySet | None) -> None:
    """Add the policy chains, maps and sets of ``node`` (whose pods are ``pods``) to its table."""
    if ps is None or not ps.policies:
        return
    local = sorted(pods, key=lambda p: p.key)
    isolated = [(pod, d, pols) for pod in local for d in DIRECTIONS if (pols := ps.policies_of(pod.key, d))]
    if not isolated:
        return  # nothing isolated here: no chain on the data path at all
    for direction, hook, addr in ((EGRESS, EGRESS_HOOK, "saddr"), (INGRESS, INGRESS_HOOK, "daddr")):
        word = direction.lower()
        t.chain(
            f"policy-{word}",
            hook,
            [
                NftRule("ct state established,related accept", "replies of allowed connections"),
                NftRule(f"ip {addr} vmap @{word}-pods", f"{word}-isolated pods of this node"),
            ],
        )
        t.map(f"{word}-pods", "type ipv4_addr : verdict")
    needed: set[tuple[str, str]] = set()
    for pod, direction, pols in isolated:
        word = direction.lower()
        chain = pod_chain(direction, pod)
        itself = "daddr" if direction == EGRESS else "saddr"
        rules = [NftRule(f"ip {itself} {pod.ip} accept", "a pod reaching itself")]
        rules += [NftRule(f"jump {policy_chain(direction, p)}") for p in pols]
        log = ""
        if any(p.log_drops for p in pols):
            log = f'log prefix "{_short(f"podnet drop {word} {pod.key}: ", 120)}" group {LOG_GROUP} '
        rules.append(NftRule(f"counter {log}drop", _short(f"{pod.key}: no policy allows it")))
        t.chain(chain, None, rules)
        t.element(f"{word}-pods", f"{pod.ip} : goto {chain}")
        needed.update((p.key, direction) for p in pols)
    by_key = {p.key: p for p in ps.policies}
    made: set[str] = set()
    for key, direction in sorted(needed):
        _policy_chain(t, ps, by_key[key], direction, local, made)


def _policy_chain(
    t: _Builder, ps: PolicySet, pol: NetworkPolicy, direction: str, local: list[PodInfo], made: set[str]
) -> None:
    word = direction.lower()
    peer_addr = "saddr" if direction == INGRESS else "daddr"
    rules: list[NftRule] = []
    for i, rule in enumerate(_rules(pol, direction)):
        peers = [_peer_match(t, ps, pol, peer, peer_addr, made) for peer in rule.peers] or [""]
        ports = _port_matches(t, ps, pol, direction, i, rule, local) or [""]
        note = _short(f"{pol.key} {word}[{i}]")
        for peer in peers:
            for port in ports:
                rules.append(NftRule(" ".join(x for x in (peer, port, "accept") if x), note))
    t.chain(policy_chain(direction, pol), None, rules)


def _peer_match(t: _Builder, ps: PolicySet, pol: NetworkPolicy, peer: PolicyPeer, addr: str, made: set[str]) -> str:
    if peer.ip_block is not None:
        text = f"ip {addr} {peer.ip_block.cidr}"
        if peer.ip_block.excepts:
            holes = ipaddress.collapse_addresses(ipaddress.IPv4Network(h) for h in peer.ip_block.excepts)
            text += f" ip {addr} != {{ {', '.join(str(h) for h in holes)} }}"
        return text
    name, members = ps.peer_set(pol, peer)
    if name not in made:
        made.add(name)
        t.set(name, PEER_SET)
        for ip in members:
            t.element(name, ip)
    return f"ip {addr} @{name}"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching port ranges as one (nft refuses overlapping intervals in a set)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _port_matches(
    t: _Builder, ps: PolicySet, pol: NetworkPolicy, direction: str, index: int, rule: PolicyRule, local: list[PodInfo]
) -> list[str]:
    out: list[str] = []
    every = {p.protocol for p in rule.ports if p.port is None}
    for protocol in PROTOCOLS:
        proto = protocol.lower()
        if protocol in every:
            out.append(f"meta l4proto {proto}")
            continue
        ranges = _merge(
            [(p.port, p.end_port or p.port) for p in rule.ports if p.protocol == protocol and isinstance(p.port, int)]
        )
        items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]
        if len(items) == 1:
            out.append(f"{proto} dport {items[0]}")
        elif items:
            out.append(f"{proto} dport {{ {', '.join(items)} }}")
    named = [p for p in rule.ports if isinstance(p.port, str) and p.protocol not in every]
    if named:
        # Resolved on the destination: the node's pods this policy selects (ingress), any pod (egress).
        if direction == INGRESS:
            chosen = set(ps.selected.get(pol.key, ()))
            candidates = [p for p in local if p.key in chosen]
        else:
            candidates = list(ps.pods)
        name = f"{policy_chain(direction, pol)}/{index}/ports"
        t.set(name, PORT_SET)
        for want in named:
            for pod in candidates:
                for cp in pod.ports:
                    if cp.name == want.port and cp.protocol == want.protocol:
                        t.element(name, f"{pod.ip} . {cp.protocol.lower()} . {cp.port}")
        out.append(f"ip daddr . meta l4proto . th dport @{name}")
    return out

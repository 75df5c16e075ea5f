"""What a trace returns: the packet at every hop, with the decisions that moved it.

The JSON form (``TraceResult.to_json``) is a stable schema documented in docs/trace.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class Packet:
    src_ip: str
    dst_ip: str
    proto: str  # tcp | udp | icmp
    sport: int = 0
    dport: int = 0
    ttl: int = 64
    src_mac: str | None = None
    dst_mac: str | None = None

    def with_(self, **changes: object) -> Packet:
        return replace(self, **changes)

    def five_tuple(self) -> tuple[str, str, str, int, int]:
        return (self.src_ip, self.dst_ip, self.proto, self.sport, self.dport)


@dataclass
class Hop:
    netns: str
    kind: str  # pod | node | switch | router | external
    name: str
    in_if: str | None = None
    out_if: str | None = None
    packet: Packet | None = None  # as it leaves this hop (as delivered, at the last hop)
    nat: str | None = None
    encap: dict | None = None
    decap: dict | None = None
    route: dict | None = None
    neighbour: dict | None = None
    bridge: dict | None = None
    netfilter: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    choices: int | None = None  # how many endpoints a Service could pick from (the first DNAT)
    observed: bool | None = None  # filled by --verify
    captured: list[str] = field(default_factory=list)  # filled by --verify

    def to_json(self) -> dict:
        p = self.packet
        return {
            "netns": self.netns,
            "kind": self.kind,
            "name": self.name,
            "in_if": self.in_if,
            "out_if": self.out_if,
            "src_mac": p.src_mac if p else None,
            "dst_mac": p.dst_mac if p else None,
            "src_ip": p.src_ip if p else None,
            "dst_ip": p.dst_ip if p else None,
            "ttl": p.ttl if p else None,
            "proto": p.proto if p else None,
            "sport": p.sport if p else None,
            "dport": p.dport if p else None,
            "nat": self.nat,
            "encap": self.encap,
            "decap": self.decap,
            "route": self.route,
            "neighbour": self.neighbour,
            "bridge": self.bridge,
            "netfilter": self.netfilter,
            "notes": self.notes,
            "observed": self.observed,
            "captured": self.captured,
        }


@dataclass
class TraceResult:
    source: str
    destination: str
    packet: Packet  # as sent
    verdict: str = "dropped"  # delivered | dropped | refused
    reason: str | None = None
    hops: list[Hop] = field(default_factory=list)
    reply: list[Hop] = field(default_factory=list)
    reply_verdict: str | None = None
    dns: dict | None = None
    drift: list[str] = field(default_factory=list)
    state: str = "planned"  # planned | observed
    verified: bool | None = None
    notes: list[str] = field(default_factory=list)
    choices: int | None = None  # how many endpoints a Service could pick from (the first DNAT)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "destination": self.destination,
            "state": self.state,
            "packet": asdict(self.packet),
            "dns": self.dns,
            "drift": self.drift,
            "verdict": self.verdict,
            "reason": self.reason,
            "hops": [h.to_json() for h in self.hops],
            "reply": [h.to_json() for h in self.reply],
            "reply_verdict": self.reply_verdict,
            "verified": self.verified,
            "notes": self.notes,
        }

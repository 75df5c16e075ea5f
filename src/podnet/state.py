"""The one shape everything speaks: what a set of network namespaces contains.

``plan`` produces a desired :class:`State`, ``kernel.observe`` reads the kernel into one,
``reconcile`` diffs two of them, and ``trace`` walks a packet through one. Keeping this a
plain, comparable data model is what makes ``observe(after up) == plan`` a testable claim.

A field left ``None`` in a planned object means "podnet does not care" (for example the MAC
the kernel picks for a node-side veth); :func:`Link.satisfies` treats it as a wildcard.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property

MAIN_TABLE = 254


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # loopback | veth | bridge | vxlan
    up: bool = True
    mac: str | None = None
    mtu: int | None = None
    master: str | None = None
    peer_netns: str | None = None  # veth: namespace of the other end
    peer_name: str | None = None  # veth: interface name of the other end
    alias: str | None = None
    vni: int | None = None  # vxlan
    local: str | None = None  # vxlan: the underlay address of this end
    dstport: int | None = None  # vxlan
    learning: bool | None = None  # vxlan
    hairpin: bool | None = None  # bridge port: may a frame leave by the port it came in on

    def satisfies(self, desired: Link) -> bool:
        """True when this (observed) link meets every attribute ``desired`` pins down."""
        for f in fields(self):
            want = getattr(desired, f.name)
            if want is not None and getattr(self, f.name) != want:
                return False
        return True

    def incompatible(self, desired: Link) -> str | None:
        """Why this link must be recreated rather than modified, or None."""
        if self.kind != desired.kind:
            return f"kind {self.kind} != {desired.kind}"
        for attr in ("peer_netns", "peer_name", "vni", "local", "dstport", "learning"):
            want = getattr(desired, attr)
            if want is not None and getattr(self, attr) != want:
                return f"{attr} {getattr(self, attr)} != {want}"
        return None


@dataclass(frozen=True)
class Address:
    ifname: str
    cidr: str  # "10.244.0.2/24"

    @property
    def ip(self) -> str:
        return self.cidr.split("/")[0]


@dataclass(frozen=True)
class NextHop:
    gateway: str | None = None
    dev: str | None = None
    weight: int = 1
    onlink: bool = False  # the gateway is reachable on dev even without a covering subnet (VXLAN)


@dataclass(frozen=True)
class Route:
    dst: str  # "10.244.1.0/24" or "0.0.0.0/0"
    nexthops: tuple[NextHop, ...]
    table: int = MAIN_TABLE
    metric: int = 0
    proto: str = "static"
    kind: str = "unicast"  # unicast | local (delivered to this namespace: a node's service CIDR)
    prefsrc: str | None = None  # the source address of locally generated packets it carries

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.table, self.dst, self.metric)


@dataclass(frozen=True)
class Neighbour:
    ifname: str
    ip: str
    mac: str


@dataclass(frozen=True)
class Fdb:
    ifname: str
    mac: str
    dst: str  # remote underlay IP for a VXLAN entry


NOTE_LIMIT = 110  # characters of a rule's note; with " #" and the id it stays within nft's 128


def _short_hash(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class NftRule:
    """One rule as nft source. Its id (a hash of the source) travels in the rule's comment,
    so the kernel's copy is recognised without parsing nft's output back into source."""

    text: str
    comment: str | None = None
    # The same rule as nf_tables expressions (podnet.nftcode), for rules written over netlink.
    code: tuple = field(default=(), compare=False)

    @cached_property
    def id(self) -> str:
        # The expressions count too: a rule whose encoding changes is rewritten.
        return _short_hash(self.text, self.comment, self.code) if self.code else _short_hash(self.text, self.comment)

    @property
    def note(self) -> str:
        """The comment the kernel keeps: the reader's note (cut to fit: nft refuses comments
        over 128 characters) and the rule's id."""
        if not self.comment:
            return f"#{self.id}"
        text = self.comment if len(self.comment) <= NOTE_LIMIT else self.comment[: NOTE_LIMIT - 3] + "..."
        return f"{text} #{self.id}"

    def render(self) -> str:
        return f'{self.text} comment "{self.note}"'


@dataclass(frozen=True)
class NftChain:
    name: str
    hook: tuple[str, str, int, str] | None = None  # (type, hook, priority, policy) for base chains
    rules: tuple[NftRule, ...] = field(default=(), compare=False)
    ids: tuple[str, ...] = ()  # the rules' ids: what is compared

    @staticmethod
    def of(name: str, hook: tuple[str, str, int, str] | None, rules: list[NftRule]) -> NftChain:
        return NftChain(name, hook, tuple(rules), tuple(r.id for r in rules))


@dataclass(frozen=True)
class NftSet:
    """A named set or map. ``elements`` are nft source ("10.96.0.20 . tcp . 80 : goto svc-x");
    a ``dynamic`` set is filled by the data path (affinity), so its elements are not compared."""

    name: str
    decl: str = field(compare=False)  # "type ipv4_addr . inet_proto . inet_service : verdict"
    kind: str = "map"  # map | set
    elements: frozenset[str] = frozenset()
    dynamic: bool = False
    netlink: bool = field(default=False, compare=False)  # elements written over netlink (kernel.nftnl)

    def comparable(self) -> tuple:
        return (self.name, self.kind, self.dynamic, frozenset() if self.dynamic else self.elements)


@dataclass
class NftTable:
    """podnet's own nftables table in one namespace."""

    family: str
    name: str
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NftTable):
            return NotImplemented
        return (self.family, self.name, self.chains) == (other.family, other.name, other.chains) and {
            k: v.comparable() for k, v in self.sets.items()
        } == {k: v.comparable() for k, v in other.sets.items()}

    @property
    def rule_count(self) -> int:
        return sum(len(c.ids) for c in self.chains.values())

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "name": self.name,
            "chains": {
                n: {"hook": list(c.hook) if c.hook else None, "rules": [r.render() for r in c.rules] or list(c.ids)}
                for n, c in sorted(self.chains.items())
            },
            "sets": {n: sorted(s.elements) for n, s in sorted(self.sets.items())},
        }


@dataclass
class NetnsState:
    name: str
    links: dict[str, Link] = field(default_factory=dict)
    addresses: set[Address] = field(default_factory=set)
    routes: dict[tuple[int, str, int], Route] = field(default_factory=dict)
    neighbours: set[Neighbour] = field(default_factory=set)
    fdb: set[Fdb] = field(default_factory=set)
    sysctls: dict[str, str] = field(default_factory=dict)
    nft: NftTable | None = None
    # /etc/netns/<name>/resolv.conf: what `ip netns exec` (and so `podnet exec`) shows as /etc/resolv.conf
    resolv_conf: str | None = None

    def add_link(self, link: Link) -> None:
        self.links[link.name] = link

    def add_route(self, route: Route) -> None:
        self.routes[route.key] = route

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "links": [asdict(v) for _, v in sorted(self.links.items())],
            "addresses": [asdict(a) for a in sorted(self.addresses, key=lambda a: (a.ifname, a.cidr))],
            "routes": [asdict(r) for _, r in sorted(self.routes.items())],
            "neighbours": [asdict(n) for n in sorted(self.neighbours, key=lambda n: (n.ifname, n.ip))],
            "fdb": [asdict(f) for f in sorted(self.fdb, key=lambda f: (f.ifname, f.mac, f.dst))],
            "sysctls": dict(sorted(self.sysctls.items())),
            "nft": self.nft.to_json() if self.nft else None,
            "resolv_conf": self.resolv_conf,
        }


@dataclass(frozen=True)
class Process:
    """A process podnet runs for a cluster; ``digest`` names the configuration it must serve."""

    name: str
    argv: tuple[str, ...]
    digest: str


@dataclass
class State:
    namespaces: dict[str, NetnsState] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)

    def ns(self, name: str) -> NetnsState:
        if name not in self.namespaces:
            self.namespaces[name] = NetnsState(name)
        return self.namespaces[name]

    def to_json(self) -> dict:
        return {
            "namespaces": [n.to_json() for _, n in sorted(self.namespaces.items())],
            "processes": [asdict(p) for _, p in sorted(self.processes.items())],
        }

"""backend: bgp — who speaks BGP with whom, with which AS numbers, and what BIRD will install.

Every node and router is a BGP speaker running BIRD in its own namespace (one ``Process`` per
speaker in the State, named ``bird:<speaker>``, whose digest is its configuration's). The
planner emits no static route for a pod block, nor between subnets: routers announce their
connected subnets and everything they learn, nodes announce their pod block only, and BIRD's
kernel protocol installs what BGP chose (``proto bird``, ECMP where paths are equal).

Modes:

- ``fabric``: every node peers with the routers on its subnet, every router with the routers it
  shares a subnet with; all sessions are eBGP between directly connected addresses.
- ``full-mesh`` (Calico's default): the nodes of one segment peer with each other over iBGP in
  one AS; a route's next hop is the node that owns the block.

The ASN plan (RFC 7938 §5.2, private ASNs; see docs/bgp.md):

- fabric form: the spines share ``spineASN`` (65000) — a path can never cross two spines, which
  is what keeps a leaf-spine fabric free of path hunting; ``leaf-N`` has ``leafASN + N - 1``
  (65001, 65002, ...);
- ``underlay.routers`` form: each router has its own, from ``bgp.routerASN`` (65000) up;
- nodes: each its own, from ``bgp.nodeASN`` (64512) up, skipping the routers' (and past 65534,
  the 4-byte private range from 4200000000); in full-mesh all nodes share ``nodeASN``.

Node and router ASNs are allocations like addresses: a node keeps its AS when others come and go.

``expected_routes`` computes, without BIRD, the routes BIRD installs once BGP has converged: a
path-vector simulation with BIRD's own rules (AS-path loop check, shortest AS path, then lowest
router id; equal paths merged into ECMP; next hop kept when passed between peers on one
interface). Tests wait for the kernel to hold exactly these, and ``podnet trace`` of a planned
bgp cluster can route with them (``with_expected_routes``).
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from dataclasses import dataclass, field, replace
from functools import cached_property

from podnet.plan.bird import KERNEL_METRIC, Bfd, BirdConfig, Neighbor, StaticRoute, Timers
from podnet.plan.ipam import Allocations, allocate
from podnet.plan.topology import Interface, Topology
from podnet.spec import fabric as fabric_form
from podnet.spec.models import Spec
from podnet.state import MAIN_TABLE, NextHop, Process, Route, State

PROCESS_PREFIX = "bird:"
NODE_INTERFACES = ("cni0", "eth0")
ROUTER_INTERFACES = ("eth*",)
PRIVATE_4BYTE = 4200000000
RESERVED_ASNS = {0, 23456, 65535, 4294967295, *range(64496, 64512), *range(65536, 65552)}


def process_name(speaker: str) -> str:
    return f"{PROCESS_PREFIX}{speaker}"


def is_bird(process_name: str) -> bool:
    return process_name.startswith(PROCESS_PREFIX)


@dataclass(frozen=True)
class Speaker:
    name: str
    role: str  # node | spine | leaf | router
    netns: str
    asn: int
    router_id: str
    interfaces: tuple[Interface, ...]
    announces: tuple[str, ...] | None  # a node's pod block; None: a router announces all it knows
    static: tuple[StaticRoute, ...] = ()  # the edge's default, announced

    def connected(self) -> set[str]:
        return {str(ipaddress.IPv4Interface(f"{i.ip}/{i.prefix}").network) for i in self.interfaces}


@dataclass(frozen=True)
class Session:
    a: str
    b: str
    subnet: str
    a_ip: str
    b_ip: str
    a_if: str
    b_if: str

    def seen_from(self, speaker: str) -> tuple[str, str, str, str]:
        """(local address, local interface, peer, peer address) as ``speaker`` sees the session."""
        if speaker == self.a:
            return self.a_ip, self.a_if, self.b, self.b_ip
        return self.b_ip, self.b_if, self.a, self.a_ip


@dataclass
class BgpPlan:
    cluster: str
    mode: str
    speakers: dict[str, Speaker]
    sessions: list[Session]
    configs: dict[str, BirdConfig] = field(default_factory=dict)

    def sessions_of(self, speaker: str) -> list[Session]:
        return [s for s in self.sessions if speaker in (s.a, s.b)]

    @cached_property
    def rib(self) -> dict[str, dict[str, list[Path]]]:
        return simulate(self)

    def expected_routes(self) -> dict[str, dict[tuple[int, str, int], Route]]:
        """netns -> the routes BIRD installs there once BGP has converged."""
        out: dict[str, dict[tuple[int, str, int], Route]] = {}
        for name, table in self.rib.items():
            sp = self.speakers[name]
            routes = out.setdefault(sp.netns, {})
            for prefix, paths in table.items():
                if paths and paths[0].local is None:
                    route = kernel_route(prefix, paths)
                    routes[route.key] = route
        return out


@dataclass(frozen=True)
class Path:
    """One path to a prefix in a speaker's RIB, best first; ``local`` names a non-BGP origin."""

    as_path: tuple[int, ...] = ()
    next_hop: str | None = None
    dev: str | None = None
    peer: str | None = None
    peer_ip: str | None = None
    peer_id: str | None = None
    internal: bool = False
    local: str | None = None  # direct | static: the speaker's own, preferred over BGP
    ecmp: bool = False  # merged with the best into one multipath route


def plan_bgp(spec: Spec, topo: Topology, state: State, previous: Allocations, allocations: Allocations) -> BgpPlan:
    c = spec.cluster
    assert c.bgp is not None and c.bgp.mode is not None
    asns = _asns(spec, topo, previous, allocations)
    speakers: dict[str, Speaker] = {}
    for node in topo.nodes.values():
        ifaces = (
            Interface("eth0", node.subnet, node.underlay_ip, node.underlay_prefix, ""),
            Interface("cni0", "", node.gateway, ipaddress.IPv4Network(node.pod_cidr).prefixlen, ""),
        )
        speakers[node.name] = Speaker(
            node.name, "node", node.netns, asns[node.name], node.underlay_ip, ifaces, (node.pod_cidr,)
        )
    for router in topo.routers.values():
        role = "router"
        if c.fabric is not None:
            role = "spine" if router.name.startswith("spine-") else "leaf"
        static = (StaticRoute("0.0.0.0/0", router.uplink),) if router.uplink else ()
        speakers[router.name] = Speaker(
            router.name, role, router.netns, asns[router.name], router.interfaces[0].ip, router.interfaces, None, static
        )

    sessions: list[Session] = []
    if c.bgp.mode == "full-mesh":
        nodes = list(topo.nodes.values())
        for x, y in itertools.combinations(nodes, 2):
            sessions.append(Session(x.name, y.name, x.subnet, x.underlay_ip, y.underlay_ip, "eth0", "eth0"))
    else:
        for node in topo.nodes.values():
            for router in topo.routers.values():
                for iface in router.interfaces:
                    if iface.subnet == node.subnet:
                        sessions.append(
                            Session(
                                node.name, router.name, node.subnet, node.underlay_ip, iface.ip, "eth0", iface.ifname
                            )
                        )
        routers = list(topo.routers.values())
        for x, y in itertools.combinations(routers, 2):
            for xi in x.interfaces:
                for yi in y.interfaces:
                    if xi.subnet == yi.subnet and not topo.subnets[xi.subnet].external:
                        sessions.append(Session(x.name, y.name, xi.subnet, xi.ip, yi.ip, xi.ifname, yi.ifname))

    plan = BgpPlan(c.name, c.bgp.mode, speakers, sessions)
    timers = Timers(hold=c.bgp.holdTime)
    bfd = Bfd(c.bgp.bfdInterval, c.bgp.bfdMultiplier) if c.bgp.bfd else None
    for sp in speakers.values():
        mine = plan.sessions_of(sp.name)
        peers = [s.seen_from(sp.name)[2] for s in mine]
        neighbors = []
        for s in mine:
            local_ip, _, peer, peer_ip = s.seen_from(sp.name)
            proto = _identifier(peer if peers.count(peer) == 1 else f"{peer}-{s.subnet}")
            neighbors.append(Neighbor(proto, peer, s.subnet, local_ip, peer_ip, speakers[peer].asn))
        plan.configs[sp.name] = BirdConfig(
            cluster=c.name,
            speaker=sp.name,
            role=sp.role,
            router_id=sp.router_id,
            local_as=sp.asn,
            direct=NODE_INTERFACES if sp.role == "node" else ROUTER_INTERFACES,
            export=sp.announces,
            static=sp.static,
            neighbors=tuple(sorted(neighbors, key=lambda n: n.protocol)),
            timers=timers,
            bfd=bfd,
        )
        state.processes[process_name(sp.name)] = Process(
            process_name(sp.name), ("bird", "--cluster", c.name, "--netns", sp.netns), plan.configs[sp.name].digest
        )
    return plan


def _identifier(name: str) -> str:
    """A BIRD protocol name: letters, digits and underscores, starting with a letter."""
    out = "".join(ch if ch.isalnum() else "_" for ch in name)
    return out if out[:1].isalpha() else f"p_{out}"


def _asn_candidates(start: int, taken: set[int]):
    def ok(asn: int) -> bool:
        return asn not in RESERVED_ASNS and asn not in taken and 0 < asn < 4294967295

    seq = itertools.chain(range(start, 65535), range(max(start, PRIVATE_4BYTE), 4294967295))
    return (str(a) for a in seq if ok(a)), (lambda v: v.isdigit() and ok(int(v)))


def _asns(spec: Spec, topo: Topology, previous: Allocations, allocations: Allocations) -> dict[str, int]:
    c = spec.cluster
    assert c.bgp is not None
    out: dict[str, int] = {}
    prev = previous.get("asn", {})
    got: dict[str, str] = {}
    if c.fabric is not None:
        for j in range(1, c.fabric.spines + 1):
            out[fabric_form.spine_name(j)] = c.fabric.spineASN
        for i in range(1, c.fabric.leaves + 1):
            out[fabric_form.leaf_name(i)] = fabric_form.leaf_asn(c.fabric, i)
    elif topo.routers:
        candidates, valid = _asn_candidates(c.bgp.routerASN, set())
        got.update(allocate([f"router:{r}" for r in topo.routers], prev, candidates, valid))
        out.update({owner.split(":", 1)[1]: int(v) for owner, v in got.items()})
    if c.bgp.mode == "full-mesh":
        out.update(dict.fromkeys(topo.nodes, c.bgp.nodeASN))
    else:
        candidates, valid = _asn_candidates(c.bgp.nodeASN, set(out.values()))
        nodes = allocate([f"node:{n}" for n in topo.nodes], prev, candidates, valid)
        got.update(nodes)
        out.update({owner.split(":", 1)[1]: int(v) for owner, v in nodes.items()})
    if got:
        allocations["asn"] = got
    return out


# --- what BIRD will install: a path-vector simulation with BIRD's rules ---------------------


def _ip_int(ip: str | None) -> int:
    return int(ipaddress.IPv4Address(ip)) if ip else 0


def _better_key(p: Path) -> tuple:
    # BIRD's bgp_rte_better, for what podnet configures (equal local-pref, origin, MED, IGP
    # metric): shorter AS path, external before internal, lower router id, lower peer address.
    return (len(p.as_path), p.internal, _ip_int(p.peer_id), _ip_int(p.peer_ip))


def _mergeable(best: Path, other: Path) -> bool:
    # BIRD's bgp_rte_mergable: the same criteria up to (not including) the router id.
    return len(best.as_path) == len(other.as_path) and best.internal == other.internal


def _select(paths: list[Path]) -> list[Path]:
    paths = sorted(paths, key=_better_key)
    if not paths:
        return []
    best = paths[0]
    return [best] + [replace(p, ecmp=_mergeable(best, p)) for p in paths[1:]]


def simulate(plan: BgpPlan) -> dict[str, dict[str, list[Path]]]:
    """Every speaker's RIB once BGP has converged: prefix -> paths, best first."""
    sp = plan.speakers
    local: dict[str, dict[str, Path]] = {}
    for s in sp.values():
        mine = {prefix: Path(local="direct") for prefix in s.connected()}
        for r in s.static:
            mine.setdefault(r.prefix, Path(local="static"))
        local[s.name] = mine
    rib: dict[str, dict[str, list[Path]]] = {}

    def table(name: str) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {prefix: [p] for prefix, p in local[name].items()}
        for prefix, paths in rib.get(name, {}).items():
            if prefix not in out:
                out[prefix] = paths
        return out

    def exports(sender: Speaker, session: Session) -> dict[str, Path]:
        out: dict[str, Path] = {}
        ebgp = sp[session.a].asn != sp[session.b].asn
        _, out_if, _, _ = session.seen_from(sender.name)
        for prefix, paths in table(sender.name).items():
            best = paths[0]
            if sender.announces is not None and (best.local is None or prefix not in sender.announces):
                continue  # a node announces its pod block, and nothing it learned
            if best.local is None and best.internal and not ebgp:
                continue  # iBGP split horizon
            if best.local is not None:
                out[prefix] = Path(as_path=(), next_hop=None)
            else:
                # BIRD keeps the next hop between single-hop peers on one interface, and on iBGP.
                keep = (not ebgp) or best.dev == out_if
                out[prefix] = Path(as_path=best.as_path, next_hop=best.next_hop if keep else None)
        return out

    for _ in range(64):
        new: dict[str, dict[str, list[Path]]] = {name: {} for name in sp}
        for session in plan.sessions:
            for sender, receiver in ((session.a, session.b), (session.b, session.a)):
                tx, rx = sp[sender], sp[receiver]
                ebgp = tx.asn != rx.asn
                _, local_if, _, peer_ip = session.seen_from(receiver)
                for prefix, adv in exports(tx, session).items():
                    as_path = (tx.asn, *adv.as_path) if ebgp else adv.as_path
                    if ebgp and rx.asn in as_path:
                        continue  # AS-path loop: BIRD drops it on import
                    new[receiver].setdefault(prefix, []).append(
                        Path(
                            as_path=as_path,
                            next_hop=adv.next_hop or peer_ip,
                            dev=local_if,
                            peer=sender,
                            peer_ip=peer_ip,
                            peer_id=tx.router_id,
                            internal=not ebgp,
                        )
                    )
        new = {name: {prefix: _select(paths) for prefix, paths in t.items()} for name, t in new.items()}
        if new == rib:
            break
        rib = new
    return {name: table(name) for name in sp}


def kernel_route(prefix: str, paths: list[Path]) -> Route:
    """The route BIRD's kernel protocol writes for the best path and those merged with it."""
    chosen = [paths[0], *(p for p in paths[1:] if p.ecmp)]
    hops = sorted({(p.next_hop, p.dev) for p in chosen}, key=lambda h: (_ip_int(h[0]), h[1] or ""))[:16]
    return Route(
        prefix, tuple(NextHop(gw, dev) for gw, dev in hops), table=MAIN_TABLE, metric=KERNEL_METRIC, proto="bird"
    )


def with_expected_routes(state: State, plan: BgpPlan | None) -> State:
    """A copy of a planned State with the routes BIRD will install: for tracing a plan."""
    if plan is None:
        return state
    out = copy.deepcopy(state)
    for netns, routes in plan.expected_routes().items():
        for route in routes.values():
            out.ns(netns).add_route(route)
    return out


def normalized(route: Route) -> Route:
    """A route with its next hops in a fixed order, to compare the kernel's with the expected."""
    return replace(route, nexthops=tuple(sorted(route.nexthops, key=lambda h: (_ip_int(h.gateway), h.dev or ""))))

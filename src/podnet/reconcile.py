"""Diff a desired State against an observed one into ordered Changes.

Order matters: namespaces before the links in them, links before addresses, addresses
before the routes that use them as next hop, and deletions before creations so that a
recreated object never collides with its old self. Applying the result and diffing again
yields nothing: that is what makes ``up`` idempotent and a crash at any point repairable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from podnet.plan import sysctls
from podnet.state import Address, Fdb, Link, Neighbour, NetnsState, NftTable, Process, Route, State, TcProgram

# (phase, op): the phase orders the whole change list.
PHASES = {
    "del_netns": 0,
    "stop_process": 0,
    "del_route": 1,
    "del_neigh": 1,
    "del_fdb": 1,
    "del_addr": 1,
    "del_link": 2,
    "add_netns": 3,
    "set_sysctl": 4,
    "add_link": 5,  # bridges, vxlan
    "add_veth": 6,  # pairs, created from one end
    "set_link": 7,
    "add_addr": 8,
    "add_route": 9,
    "add_neigh": 10,
    "add_fdb": 10,
    "set_nft": 11,
    "set_resolv_conf": 11,
    "del_resolv_conf": 11,
    "del_nft": 11,
    "set_tc": 11,  # after the device exists
    "del_tc": 11,
    "start_process": 12,
    "reload_process": 12,
}


@dataclass(frozen=True)
class Change:
    op: str
    netns: str
    obj: Any = None
    peer: Any = None  # add_veth: the desired Link of the other end
    reason: str | None = None

    @property
    def phase(self) -> int:
        return PHASES[self.op]

    def describe(self) -> str:
        what = {
            Link: lambda o: f"link {o.name}",
            Address: lambda o: f"address {o.cidr} on {o.ifname}",
            Route: lambda o: f"route {o.dst} via {', '.join(h.gateway or h.dev or '?' for h in o.nexthops)}",
            Neighbour: lambda o: f"neighbour {o.ip} {o.mac} on {o.ifname}",
            Fdb: lambda o: f"fdb {o.mac} -> {o.dst} on {o.ifname}",
            Process: lambda o: f"process {o.name}",
            NftTable: lambda o: f"nftables table {o.family} {o.name}",
            TcProgram: lambda o: f"tc program {o.id} on {o.ifname} egress",
            tuple: lambda o: f"{o[0]}={o[1]}",
        }
        obj = self.obj
        text = next((f(obj) for t, f in what.items() if isinstance(obj, t)), "")
        if self.op == "add_veth":
            text = f"veth {obj.name} <-> {self.peer.name} in {obj.peer_netns}"
        out = f"{self.op} {self.netns}" + (f" {text}" if text else "")
        return out + (f" ({self.reason})" if self.reason else "")


def fresh_namespace(name: str) -> NetnsState:
    """What a namespace is known to hold right after creation: a loopback that is down.

    Its sysctls are not known: the kernel copies the host's IPv4 settings into a new
    namespace (``plan.sysctls``), so every planned one is written, whatever the host holds."""
    ns = NetnsState(name)
    ns.links["lo"] = Link("lo", "loopback", up=False)
    return ns


def diff(desired: State, observed: State, owned_extra: list[str] | None = None) -> list[Change]:
    """Changes that turn ``observed`` into ``desired``.

    ``owned_extra``: namespaces that belong to this cluster but are not desired (found by
    name prefix); they are deleted whole.
    """
    changes: list[Change] = []
    doomed = {name for name in owned_extra or [] if name not in desired.namespaces}
    for name in sorted(doomed):
        changes.append(Change("del_netns", name))

    # Which ends of veth pairs need (re)creating; one add_veth per pair.
    recreate: set[tuple[str, str]] = set()
    for ns_name, want in desired.namespaces.items():
        have = observed.namespaces.get(ns_name)
        if have is None:
            changes.append(Change("add_netns", ns_name))
            have = fresh_namespace(ns_name)
        changes.extend(_diff_namespace(want, have, desired, recreate, doomed))

    changes.extend(_diff_processes(desired, observed))
    changes.sort(key=lambda c: (c.phase, c.netns))
    return changes


@dataclass
class _Effects:
    """What the kernel does by itself, in one namespace, when this run's changes are applied.

    Deleting or creating a link takes everything that was on it. Deleting an interface's last
    address flushes every route through it and every neighbour on it (permanent ones too);
    setting a MAC flushes its neighbours (even when the MAC is the same); bringing a link up
    or adding an address makes the kernel add that address's own routes (``plan.connected``).
    """

    gone: set[str] = field(default_factory=set)  # links deleted or created now
    readdressed: set[str] = field(default_factory=set)  # links losing an address
    new_mac: set[str] = field(default_factory=set)  # links whose MAC is set
    raised: set[str] = field(default_factory=set)  # links going from down to up
    deleted: set[tuple[str, str]] = field(default_factory=set)  # (ifname, ip) of addresses deleted
    added: set[tuple[str, str]] = field(default_factory=set)  # (ifname, ip) of addresses added

    def routes_flushed(self, route: Route) -> bool:
        return any(h.dev in self.gone or h.dev in self.readdressed for h in route.nexthops)

    def neighbours_flushed(self, ifname: str) -> bool:
        return ifname in self.gone or ifname in self.readdressed or ifname in self.new_mac

    def kernel_adds(self, route: Route) -> bool:
        """True when the kernel itself will add this route of an address of this namespace."""
        dev = route.nexthops[0].dev or ""
        return dev in self.gone or dev in self.raised or (dev, route.src or "") in self.added

    def kernel_removes(self, route: Route) -> bool:
        dev = route.nexthops[0].dev or ""
        return dev in self.gone or (dev, route.src or "") in self.deleted


def _diff_namespace(
    want: NetnsState, have: NetnsState, desired: State, recreate: set[tuple[str, str]], doomed: set[str]
) -> list[Change]:
    effects = _Effects()
    out = _diff_links(want, have, desired, recreate, doomed, effects)
    out += _diff_addresses(want, have, effects)
    out += _diff_routes(want, have, effects)
    out += _diff_neighbours(want, have, effects)
    out += _diff_sysctls(want, have)
    out += _diff_tc(want, have, effects)

    if want.resolv_conf != have.resolv_conf:
        if want.resolv_conf is not None:
            out.append(Change("set_resolv_conf", want.name, want.resolv_conf))
        else:
            out.append(Change("del_resolv_conf", want.name))

    if want.nft != have.nft:
        if want.nft is not None:
            out.append(Change("set_nft", want.name, want.nft, peer=have.nft))
        else:
            out.append(Change("del_nft", want.name, have.nft))
    return out


def _diff_links(
    want: NetnsState,
    have: NetnsState,
    desired: State,
    recreate: set[tuple[str, str]],
    doomed: set[str],
    effects: _Effects,
) -> list[Change]:
    out: list[Change] = []
    gone = effects.gone
    for name, link in want.links.items():
        cur = have.links.get(name)
        reason = None
        if cur is not None:
            reason = cur.incompatible(link)
            if reason is None and link.kind == "veth" and cur.peer_netns not in desired.namespaces:
                reason = "peer is gone"
        if cur is not None and reason is None:
            if not cur.satisfies(link):
                out.append(_set_link(want.name, cur, link, effects))
            continue
        if cur is not None:
            out.append(Change("del_link", want.name, cur, reason=reason))
        gone.add(name)
        if link.kind != "veth":
            out.append(Change("add_link", want.name, link))
            continue
        end = (want.name, name)
        peer_end = (link.peer_netns, link.peer_name)
        if end in recreate or peer_end in recreate:
            # The pair is already being created from the other end; this end only needs its settings.
            out.append(Change("set_link", want.name, replace(link, up=True) if link.up else link))
            continue
        recreate.add(end)
        peer = desired.namespaces[link.peer_netns].links[link.peer_name]
        if _is_creator(link, peer):
            out.append(Change("add_veth", want.name, link, peer=peer))
        else:
            # Created from this end in the peer's namespace view: swap roles.
            out.append(Change("add_veth", link.peer_netns, peer, peer=link))
            out.append(Change("set_link", want.name, link))

    for name, cur in have.links.items():
        if name not in want.links and cur.kind != "loopback":
            gone.add(name)
            # The kernel deletes the other end of a pair with the namespace it is in only when
            # it frees that namespace, which waits for every process holding it: delete it now.
            reason = f"its peer's namespace {cur.peer_netns} is deleted" if cur.peer_netns in doomed else "not planned"
            out.append(Change("del_link", want.name, cur, reason=reason))

    # A recreated bridge has lost its ports: enslave them again.
    touched = {c.obj.name for c in out if c.op == "set_link"}
    for name, link in want.links.items():
        if link.master in gone and name not in gone and name not in touched:
            out.append(Change("set_link", want.name, link, reason=f"{link.master} was recreated"))
    return out


def _set_link(ns_name: str, cur: Link, link: Link, effects: _Effects) -> Change:
    """Set only what differs: the kernel reacts to a setting even when its value is unchanged
    (a MAC set again flushes the link's neighbours)."""
    changed = replace(
        link,
        mac=link.mac if link.mac != cur.mac else None,
        mtu=link.mtu if link.mtu != cur.mtu else None,
        master=link.master if link.master != cur.master else None,
        hairpin=link.hairpin if link.hairpin != cur.hairpin else None,
    )
    if changed.mac is not None:
        effects.new_mac.add(link.name)
    if link.up and not cur.up:
        effects.raised.add(link.name)
    return Change("set_link", ns_name, changed)


def _diff_addresses(want: NetnsState, have: NetnsState, effects: _Effects) -> list[Change]:
    out: list[Change] = []
    for addr in have.addresses - want.addresses:
        if addr.ifname not in effects.gone and addr.ifname in have.links:
            out.append(Change("del_addr", want.name, addr))
            effects.readdressed.add(addr.ifname)
            effects.deleted.add((addr.ifname, addr.ip))
    for addr in want.addresses:
        new = addr not in have.addresses or addr.ifname in effects.gone
        if new or addr.ifname in effects.readdressed:
            # On a link losing an address, the others are put again: deleting a primary address
            # takes the secondaries of its subnet with it.
            out.append(Change("add_addr", want.name, addr))
        if new:
            effects.added.add((addr.ifname, addr.ip))
    return out


def _diff_routes(want: NetnsState, have: NetnsState, effects: _Effects) -> list[Change]:
    out: list[Change] = []
    for key, route in want.routes.items():
        cur = have.routes.get(key)
        if route.proto == "kernel":
            if cur != route and not effects.kernel_adds(route):
                out.append(Change("add_route", want.name, route))
        elif cur != route or effects.routes_flushed(route):
            out.append(Change("add_route", want.name, route))
    for key, cur in have.routes.items():
        if key in want.routes:
            continue
        if cur.proto in ("static", "boot") or (cur.proto == "kernel" and not effects.kernel_removes(cur)):
            out.append(Change("del_route", want.name, cur))
    return out


def _diff_neighbours(want: NetnsState, have: NetnsState, effects: _Effects) -> list[Change]:
    out: list[Change] = []
    for neigh in want.neighbours:
        if neigh not in have.neighbours or effects.neighbours_flushed(neigh.ifname):
            out.append(Change("add_neigh", want.name, neigh))
    for neigh in have.neighbours - want.neighbours:
        if neigh.ifname not in effects.gone:
            out.append(Change("del_neigh", want.name, neigh))
    for fdb in want.fdb:
        if fdb not in have.fdb or fdb.ifname in effects.gone:
            out.append(Change("add_fdb", want.name, fdb))
    for fdb in have.fdb - want.fdb:
        if fdb.ifname not in effects.gone:
            out.append(Change("del_fdb", want.name, fdb))
    return out


def _diff_tc(want: NetnsState, have: NetnsState, effects: _Effects) -> list[Change]:
    """tc programs on a device's egress; a recreated device has lost its program."""
    out = [
        Change("set_tc", want.name, program)
        for ifname, program in want.tc.items()
        if have.tc.get(ifname) != program or ifname in effects.gone
    ]
    out += [
        Change("del_tc", want.name, program)
        for ifname, program in have.tc.items()
        if ifname not in want.tc and ifname not in effects.gone
    ]
    return out


def _diff_sysctls(want: NetnsState, have: NetnsState) -> list[Change]:
    """The sysctls that differ, those that rewrite others first, and what they rewrite after."""
    changed = [key for key, value in want.sysctls.items() if have.sysctls.get(key) != value]
    rewritten = {other for key in changed for other in sysctls.REWRITES.get(key, ())}
    keys = [key for key in want.sysctls if key in changed or key in rewritten]
    keys.sort(key=lambda key: key not in sysctls.REWRITES)
    return [Change("set_sysctl", want.name, (key, want.sysctls[key])) for key in keys]


def _is_creator(link: Link, peer: Link) -> bool:
    """Create a pair from the end that is not enslaved to a bridge: its index can be pinned,
    and the enslaved end is then configured by name in its own namespace's batch."""
    if (link.master is None) != (peer.master is None):
        return link.master is None
    return (link.name, link.peer_name or "") <= (peer.name, peer.peer_name or "")


def _diff_processes(desired: State, observed: State) -> list[Change]:
    out: list[Change] = []
    for name, proc in desired.processes.items():
        cur = observed.processes.get(name)
        if cur is None:
            out.append(Change("start_process", "", proc))
        elif cur.digest != proc.digest:
            out.append(Change("reload_process", "", proc))
    for name, cur in observed.processes.items():
        if name not in desired.processes:
            out.append(Change("stop_process", "", cur))
    return out

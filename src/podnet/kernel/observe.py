"""Read podnet's namespaces from the kernel into a State.

Only what podnet manages is read: IPv4 addresses, the unicast routes of the main table and
the local routes of the local table (the kernel's own for each address included: the plan
has them too), permanent neighbours, and the sysctls podnet sets. veth peers are resolved
across the observed namespaces so that a pair wired to the wrong place shows up as drift.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

from podnet.kernel import netns, nft, rtdump, tcbpf
from podnet.kernel.netlink import Session, Sessions
from podnet.state import Address, Fdb, Link, Neighbour, NetnsState, NextHop, Route, State, TcProgram

IFF_UP = 0x1
NUD_PERMANENT = 0x80
IFLA_ADDRESS, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 4, 5, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID = 18, 20, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 4, 7, 15
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
RTN_UNICAST, RTN_LOCAL = 1, 2
ROUTE_TYPES = {RTN_UNICAST: "unicast", RTN_LOCAL: "local"}
SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host"}
SCOPE_NUMBER = {v: k for k, v in SCOPES.items()}
NDA_DST, NDA_LLADDR = 1, 2
RTPROT = {2: "kernel", 3: "boot", 4: "static", 12: "bird", 186: "bgp"}
PROTO_NUMBER = {v: k for k, v in RTPROT.items()}
RTNH_F_ONLINK = 0x04


@dataclass
class _VethEnd:
    ifindex: int
    peer_ifindex: int
    nsid: int | None


def observe(
    names: list[str], sysctl_keys: set[str], sessions: Sessions | None = None, nft_in: set[str] | None = None
) -> State:
    """The State of the given namespaces; those that do not exist are left out.

    ``nft_in``: the namespaces whose podnet nftables table to read (it costs a process each).
    """
    own = sessions is None
    sessions = sessions or Sessions()
    state = State()
    veths: dict[str, dict[str, _VethEnd]] = {}
    try:
        for name in names:
            if not netns.exists(name):
                continue
            s = sessions.get(name)
            ns, ends = observe_one(s, sysctl_keys)
            if nft_in and name in nft_in:
                ns.nft = nft.observe(name)
            ns.resolv_conf = netns.read_resolv_conf(name)
            state.namespaces[name] = ns
            veths[name] = ends
        _resolve_peers(state, veths, sessions)
    finally:
        if own:
            sessions.close()
    return state


def observe_one(s: Session, sysctl_keys: set[str]) -> tuple[NetnsState, dict[str, _VethEnd]]:
    """One namespace through an open session (the CNI agent passes its host's), and its veth
    ends for resolving peers across namespaces."""
    ns = NetnsState(s.name)
    raw_links = list(rtdump.dump(s.rt, rtdump.RTM_GETLINK, rtdump.IFINFO, socket.AF_UNSPEC))
    by_index: dict[int, str] = {m.header[2]: rtdump.text(m.attrs.get(rtdump.IFLA_IFNAME)) or "" for m in raw_links}
    s.index = {v: k for k, v in by_index.items()}
    ends: dict[str, _VethEnd] = {}
    for m in raw_links:
        _, _, index, flags, _ = m.header
        name = by_index[index]
        ns.links[name] = _link(m, name, flags, by_index)
        if ns.links[name].kind == "veth":
            nsid = rtdump.s32(m.attrs.get(IFLA_LINK_NETNSID))
            ends[name] = _VethEnd(index, rtdump.s32(m.attrs.get(IFLA_LINK)) or 0, nsid)

    for m in rtdump.dump(s.rt, rtdump.RTM_GETADDR, rtdump.IFADDR, socket.AF_INET):
        ifname = by_index.get(m.header[4])
        if ifname is not None and ifname != "lo":
            ns.addresses.add(Address(ifname, f"{rtdump.ipv4(m.attrs.get(IFA_ADDRESS))}/{m.header[1]}"))

    for m in rtdump.dump(s.rt, rtdump.RTM_GETROUTE, rtdump.RTMSG, socket.AF_INET):
        route = _route(m, by_index)
        if route is not None:
            ns.add_route(route)

    for m in rtdump.dump(s.rt, rtdump.RTM_GETNEIGH, rtdump.NDMSG, socket.AF_INET):
        _, ifindex, state, _, _ = m.header
        ifname = by_index.get(ifindex)
        if state & NUD_PERMANENT and ifname is not None:
            ns.neighbours.add(Neighbour(ifname, rtdump.ipv4(m.attrs.get(NDA_DST)), rtdump.mac(m.attrs.get(NDA_LLADDR))))

    if any(link.kind == "vxlan" for link in ns.links.values()):
        for m in rtdump.dump(s.rt, rtdump.RTM_GETNEIGH, rtdump.NDMSG, rtdump.AF_BRIDGE):
            ifname = by_index.get(m.header[1])
            dst = m.attrs.get(NDA_DST)
            if ifname is not None and dst and ns.links[ifname].kind == "vxlan":
                ns.fdb.add(Fdb(ifname, rtdump.mac(m.attrs.get(NDA_LLADDR)) or "", rtdump.ipv4(dst) or ""))

    for name, link in ns.links.items():
        if link.kind == "vxlan":  # the only devices podnet runs a tc program on (plan.flowhash)
            program = tcbpf.egress_program(s.ipr, s.index[name])
            if program is not None:
                ns.tc[name] = TcProgram(name, program)

    if sysctl_keys:
        with netns.entered(s.name):
            for key in sysctl_keys:
                value = netns.read_sysctl(key)
                if value is not None:
                    ns.sysctls[key] = value
    return ns, ends


def _link(m: rtdump.Message, name: str, flags: int, by_index: dict[int, str]) -> Link:
    info = rtdump.attributes(m.attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in m.attrs else {}
    kind = rtdump.text(info.get(IFLA_INFO_KIND)) or ("loopback" if name == "lo" else "unknown")
    master = rtdump.u32(m.attrs.get(IFLA_MASTER))
    loopback = kind == "loopback"
    link = Link(
        name=name,
        kind=kind,
        up=bool(flags & IFF_UP),
        mac=None if loopback else rtdump.mac(m.attrs.get(IFLA_ADDRESS)),
        mtu=None if loopback else rtdump.u32(m.attrs.get(IFLA_MTU)),
        master=by_index.get(master) if master else None,
        alias=rtdump.text(m.attrs.get(IFLA_IFALIAS)) or None,
    )
    if rtdump.text(info.get(IFLA_INFO_SLAVE_KIND)) == "bridge" and IFLA_INFO_SLAVE_DATA in info:
        port = rtdump.attributes(info[IFLA_INFO_SLAVE_DATA])
        link = replace(link, hairpin=bool(port.get(IFLA_BRPORT_MODE, b"\0")[0]))
    if kind == "vxlan" and IFLA_INFO_DATA in info:
        data = rtdump.attributes(info[IFLA_INFO_DATA])
        port = data.get(IFLA_VXLAN_PORT)
        link = replace(
            link,
            vni=rtdump.u32(data.get(IFLA_VXLAN_ID)),
            local=rtdump.ipv4(data.get(IFLA_VXLAN_LOCAL)),
            dstport=struct.unpack(">H", port[:2])[0] if port else None,
            learning=bool(data.get(IFLA_VXLAN_LEARNING, b"\0")[0]),
        )
    return link


def _route(m: rtdump.Message, by_index: dict[int, str]) -> Route | None:
    """A unicast or a local route (the local table's, and a node's service CIDR in main); None
    for the rest (broadcast routes: see plan.connected)."""
    _, dst_len, _, _, table8, proto, scope, kind, flags = m.header
    table = rtdump.u32(m.attrs.get(RTA_TABLE)) or table8
    if kind not in ROUTE_TYPES:
        return None
    dst = rtdump.ipv4(m.attrs.get(RTA_DST)) or "0.0.0.0"
    if RTA_MULTIPATH in m.attrs:
        nexthops = tuple(
            NextHop(
                rtdump.ipv4(attrs.get(RTA_GATEWAY)), by_index.get(ifindex), hops + 1, bool(nh_flags & RTNH_F_ONLINK)
            )
            for nh_flags, hops, ifindex, attrs in rtdump.nexthops(m.attrs[RTA_MULTIPATH])
        )
    else:
        oif = rtdump.u32(m.attrs.get(RTA_OIF))
        nexthops = (
            NextHop(
                rtdump.ipv4(m.attrs.get(RTA_GATEWAY)),
                by_index.get(oif) if oif is not None else None,
                1,
                bool(flags & RTNH_F_ONLINK),
            ),
        )
    return Route(
        f"{dst}/{dst_len}",
        nexthops,
        table=table,
        metric=rtdump.u32(m.attrs.get(RTA_PRIORITY)) or 0,
        proto=RTPROT.get(proto, str(proto)),
        type=ROUTE_TYPES[kind],
        scope=SCOPES.get(scope, str(scope)),
        src=rtdump.ipv4(m.attrs.get(RTA_PREFSRC)),
    )


def _resolve_peers(state: State, veths: dict[str, dict[str, _VethEnd]], sessions: Sessions) -> None:
    """Name each veth's peer: match mirrored ifindexes, asking for netns ids only on ties."""
    by_ifindex: dict[int, list[tuple[str, str]]] = {}
    for ns_name, ends in veths.items():
        for ifname, end in ends.items():
            by_ifindex.setdefault(end.ifindex, []).append((ns_name, ifname))
    for ns_name, ends in veths.items():
        for ifname, end in ends.items():
            candidates = [
                (other_ns, other_if)
                for other_ns, other_if in by_ifindex.get(end.peer_ifindex, [])
                if veths[other_ns][other_if].peer_ifindex == end.ifindex
                and (other_ns, other_if) != (ns_name, ifname)
                and (end.nsid is None or end.nsid < 0) == (other_ns == ns_name)
            ]
            if len(candidates) > 1:
                session = sessions.get(ns_name)
                candidates = [c for c in candidates if _nsid_of(session, sessions.get(c[0]).fd) == end.nsid]
            if len(candidates) == 1:
                peer_ns, peer_if = candidates[0]
            else:
                peer_ns, peer_if = "?", "?"  # the other end is outside podnet's namespaces
            state.namespaces[ns_name].links[ifname] = replace(
                state.namespaces[ns_name].links[ifname], peer_netns=peer_ns, peer_name=peer_if
            )


def _nsid_of(session: Session, fd: int) -> int | None:
    try:
        return session.ipr.get_netnsid(fd=fd).get("nsid")
    except Exception:
        return None

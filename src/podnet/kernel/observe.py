"""Read podnet's namespaces from the kernel into a State.

Only what podnet manages is read: IPv4 addresses, routes that are not the kernel's own
connected ones, permanent neighbours, and the sysctls podnet sets. veth peers are resolved
across the observed namespaces so that a pair wired to the wrong place shows up as drift.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from podnet.kernel import netns, nft
from podnet.kernel.netlink import Session, Sessions
from podnet.state import Address, Fdb, Link, NetnsState, NextHop, Route, State

IFF_UP = 0x1
NUD_PERMANENT = 0x80
RTPROT = {2: "kernel", 3: "boot", 4: "static", 12: "bird", 186: "bgp"}
PROTO_NUMBER = {v: k for k, v in RTPROT.items()}
LOCAL_TABLE = 255
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


def _attr(msg, name):
    return msg.get_attr(name)


def observe_one(s: Session, sysctl_keys: set[str]) -> tuple[NetnsState, dict[str, _VethEnd]]:
    """One namespace through an open session (the CNI agent passes its host's), and its veth
    ends for resolving peers across namespaces."""
    ns = NetnsState(s.name)
    by_index: dict[int, str] = {}
    raw_links = list(s.ipr.get_links())
    for m in raw_links:
        by_index[m["index"]] = _attr(m, "IFLA_IFNAME")
    s.index = {v: k for k, v in by_index.items()}
    ends: dict[str, _VethEnd] = {}
    for m in raw_links:
        name = _attr(m, "IFLA_IFNAME")
        info = _attr(m, "IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind is None:
            kind = "loopback" if name == "lo" else "unknown"
        master = _attr(m, "IFLA_MASTER")
        link = Link(
            name=name,
            kind=kind,
            up=bool(m["flags"] & IFF_UP),
            mac=_attr(m, "IFLA_ADDRESS") if kind != "loopback" else None,
            mtu=_attr(m, "IFLA_MTU") if kind != "loopback" else None,
            master=by_index.get(master) if master else None,
            alias=_attr(m, "IFLA_IFALIAS") or None,
        )
        slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
        if slave is not None and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
            link = _with(link, hairpin=bool(slave.get_attr("IFLA_BRPORT_MODE")))
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")
            link = _with(
                link,
                vni=data.get_attr("IFLA_VXLAN_ID"),
                local=data.get_attr("IFLA_VXLAN_LOCAL"),
                dstport=data.get_attr("IFLA_VXLAN_PORT"),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            )
        if kind == "veth":
            nsid = _attr(m, "IFLA_LINK_NETNSID")
            ends[name] = _VethEnd(m["index"], _attr(m, "IFLA_LINK") or 0, nsid)
        ns.links[name] = link

    for m in s.ipr.get_addr(family=socket.AF_INET):
        ifname = by_index.get(m["index"])
        if ifname is not None and ifname != "lo":
            ns.addresses.add(Address(ifname, f"{_attr(m, 'IFA_ADDRESS')}/{m['prefixlen']}"))

    for m in s.ipr.get_routes(family=socket.AF_INET):
        table = _attr(m, "RTA_TABLE") or m["table"]
        if table == LOCAL_TABLE or m["proto"] == PROTO_NUMBER["kernel"] or m["type"] != 1:
            continue
        dst = _attr(m, "RTA_DST") or "0.0.0.0"
        nexthops: list[NextHop] = []
        multipath = _attr(m, "RTA_MULTIPATH")
        if multipath:
            for nh in multipath:
                nexthops.append(
                    NextHop(
                        nh.get_attr("RTA_GATEWAY"),
                        by_index.get(nh["oif"]),
                        nh["hops"] + 1,
                        bool(nh["flags"] & RTNH_F_ONLINK),
                    )
                )
        else:
            nexthops.append(
                NextHop(
                    _attr(m, "RTA_GATEWAY"),
                    by_index.get(_attr(m, "RTA_OIF")),
                    1,
                    bool(m["flags"] & RTNH_F_ONLINK),
                )
            )
        ns.add_route(
            Route(
                f"{dst}/{m['dst_len']}",
                tuple(nexthops),
                table=table,
                metric=_attr(m, "RTA_PRIORITY") or 0,
                proto=RTPROT.get(m["proto"], str(m["proto"])),
            )
        )

    for m in s.ipr.get_neighbours(family=socket.AF_INET):
        if m["state"] & NUD_PERMANENT:
            ifname = by_index.get(m["ifindex"])
            if ifname is not None:
                from podnet.state import Neighbour

                ns.neighbours.add(Neighbour(ifname, _attr(m, "NDA_DST"), _attr(m, "NDA_LLADDR")))

    if any(link.kind == "vxlan" for link in ns.links.values()):
        for m in s.ipr.fdb("dump"):
            ifname = by_index.get(m["ifindex"])
            dst = _attr(m, "NDA_DST")
            if ifname is not None and dst and ns.links.get(ifname, Link("", "")).kind == "vxlan":
                ns.fdb.add(Fdb(ifname, _attr(m, "NDA_LLADDR"), dst))

    if sysctl_keys:
        with netns.entered(s.name):
            for key in sysctl_keys:
                value = netns.read_sysctl(key)
                if value is not None:
                    ns.sysctls[key] = value
    return ns, ends


def _with(link: Link, **changes: object) -> Link:
    from dataclasses import replace

    return replace(link, **changes)


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
            state.namespaces[ns_name].links[ifname] = _with(
                state.namespaces[ns_name].links[ifname], peer_netns=peer_ns, peer_name=peer_if
            )


def _nsid_of(session: Session, fd: int) -> int | None:
    try:
        return session.ipr.get_netnsid(fd=fd).get("nsid")
    except Exception:
        return None

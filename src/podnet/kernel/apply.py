"""Carry out Changes on the kernel: namespaces in-process, everything else over netlink.

Changes come sorted by ``reconcile``; the per-namespace settings of one namespace (link
state, addresses, routes, neighbours) go to the kernel as one batch of netlink messages,
which is what keeps a pod at a few milliseconds. Every message is idempotent (create-or-
replace, delete-if-present), so a batch interrupted by a crash is simply sent again by the
next run.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import socket
import zlib
from collections.abc import Callable, Iterable

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTM_SETLINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from podnet.errors import KernelError
from podnet.kernel import conntrack, netns, nft, nftcache
from podnet.kernel.netlink import Sessions
from podnet.kernel.observe import PROTO_NUMBER, RTN_TYPE
from podnet.reconcile import Change
from podnet.state import Address, Fdb, Link, Neighbour, Route

REQ = NLM_F_REQUEST | NLM_F_ACK
UPSERT = REQ | NLM_F_CREATE | NLM_F_REPLACE
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RT_SCOPE_HOST = 254
AF_BRIDGE = 7
# Deleting something already gone is success: the goal state is reached.
GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL, errno.EINVAL}
BATCHED = {"set_link", "add_addr", "add_route", "add_neigh", "add_fdb"}

SYSCTL_HINTS = {
    "net.bridge.bridge-nf-call-iptables": (
        " (Services need bridged pod traffic to pass netfilter, as Kubernetes does: load the"
        " br_netfilter module, e.g. `modprobe br_netfilter`)"
    ),
}

ProcessHandler = Callable[[Change], None]
Progress = Callable[[int], None]


def apply(
    changes: list[Change],
    sessions: Sessions,
    on_process: ProcessHandler,
    progress: Progress | None = None,
) -> None:
    created: set[str] = set()
    crash_after = _crash_point()

    # One group: consecutive batched changes of one namespace.
    def group_key(c: Change) -> tuple:
        return (c.netns, "batch") if c.op in BATCHED else (c.netns, c.op, id(c))

    ordered = sorted(changes, key=lambda c: (_group_phase(c.phase), c.netns, c.phase))
    for (ns_name, kind, *_), group in itertools.groupby(ordered, key=group_key):
        group = list(group)
        try:
            if kind == "batch":
                _apply_batch(ns_name, group, sessions, ns_name in created)
            else:
                for change in group:
                    _apply_one(change, sessions, created, on_process)
        except NetlinkError as exc:
            raise KernelError(f"{group[0].describe()}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        except OSError as exc:
            raise KernelError(f"{group[0].describe()}: {exc}") from exc
        if progress is not None:
            progress(len(group))
        if crash_after is not None:
            crash_after -= 1
            if crash_after <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _crash_point() -> int | None:
    """Tests prove crash recovery by having ``up`` SIGKILL itself after N groups of changes."""
    value = os.environ.get("PODNET_TEST_CRASH_AFTER")
    return int(value) if value else None


def _group_phase(phase: int) -> int:
    """Phases 7-10 (settings inside one namespace) share a group so they batch together."""
    return 7 if 7 <= phase <= 10 else phase


def _apply_one(change: Change, sessions: Sessions, created: set[str], on_process: ProcessHandler) -> None:
    op = change.op
    if op == "add_netns":
        netns.create(change.netns)
        created.add(change.netns)
        sessions.get(change.netns, fresh=True)
    elif op == "del_netns":
        sessions.forget(change.netns)
        netns.delete(change.netns)
        nftcache.forget_namespace(change.netns)
    elif op in ("start_process", "reload_process", "stop_process"):
        on_process(change)
    elif op == "set_resolv_conf":
        netns.write_resolv_conf(change.netns, change.obj)
    elif op == "del_resolv_conf":
        netns.remove_etc(change.netns)
    elif op == "set_nft":
        nft.load(change.netns, change.obj, change.peer)
        conntrack.forget_removed_udp_endpoints(change.netns, change.obj, change.peer)
    elif op == "del_nft":
        nft.delete(change.netns, change.obj)
    elif op == "set_sysctl":
        key, value = change.obj
        with netns.entered(change.netns):
            try:
                netns.write_sysctl(key, value)
            except FileNotFoundError:
                raise KernelError(
                    f"{change.netns}: this kernel has no sysctl {key}" + SYSCTL_HINTS.get(key, "")
                ) from None
    elif op == "add_link":
        _add_link(change.netns, change.obj, sessions)
    elif op == "add_veth":
        _add_veth(change.netns, change.obj, change.peer, sessions)
    elif op == "del_link":
        s = sessions.get(change.netns)
        _ignore_gone(lambda: s.ipr.link("del", ifname=change.obj.name))
        s.index.pop(change.obj.name, None)
        if change.obj.kind == "veth" and change.obj.peer_netns not in ("?", None):
            # The other end went with it.
            other = sessions._open.get(change.obj.peer_netns)
            if other is not None:
                other.index.pop(change.obj.peer_name or "", None)
    elif op == "del_addr":
        s = sessions.get(change.netns)
        a: Address = change.obj
        ip, prefix = a.cidr.split("/")
        _ignore_gone(lambda: _send(s, [_addr_msg(RTM_DELADDR, REQ, s.ifindex(a.ifname), ip, int(prefix))]))
    elif op == "del_route":
        s = sessions.get(change.netns)
        _ignore_gone(lambda: _send(s, [_route_msg(RTM_DELROUTE, REQ, change.obj, s)]))
    elif op in ("del_neigh", "del_fdb"):
        s = sessions.get(change.netns)
        _ignore_gone(lambda: _send(s, [_neigh_msg(RTM_DELNEIGH, REQ, change.obj, s)]))
    else:
        raise KernelError(f"unknown change {op}")


def _ignore_gone(fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise
    except LookupError:
        pass  # the interface is gone, and with it what was on it


def _add_link(ns_name: str, link: Link, sessions: Sessions) -> None:
    s = sessions.get(ns_name)
    index = s.next_free_index()
    kwargs: dict = {"ifname": link.name, "kind": link.kind, "index": index}
    if link.kind == "vxlan":
        kwargs.update(vxlan_id=link.vni, vxlan_port=link.dstport, vxlan_learning=int(bool(link.learning)))
        if link.local:
            kwargs["vxlan_local"] = link.local
    if link.kind == "bridge":
        kwargs["br_stp_state"] = 0
    kwargs.update(_common(link, s))
    s.ipr.link("add", **kwargs)
    s.index[link.name] = index


def _common(link: Link, s) -> dict:
    """The creation attributes every kind of link shares: MAC, MTU, bridge, up."""
    kwargs: dict = {}
    if link.mac:
        kwargs["address"] = link.mac
    if link.mtu:
        kwargs["mtu"] = link.mtu
    if link.master:
        kwargs["master"] = s.ifindex(link.master)
    if link.up:
        kwargs["state"] = "up"
    return kwargs


def _stable_index(ns_name: str, ifname: str) -> int:
    """An ifindex derived from the pair's identity: unique across the cluster in practice, so
    observation can match the two ends of a veth by index without asking for netns ids."""
    return 1000 + zlib.crc32(f"{ns_name}/{ifname}".encode()) % (1 << 30)


def _add_veth(ns_name: str, link: Link, peer: Link, sessions: Sessions) -> None:
    s = sessions.get(ns_name)
    other = sessions.get(link.peer_netns or ns_name)
    if not s._complete:
        s.refresh()
    index = _stable_index(ns_name, link.name)
    if index in s.index.values():
        index = s.next_free_index()
    peer_attrs: dict = {"ifname": peer.name, "net_ns_fd": other.fd}
    if peer.mac:
        peer_attrs["address"] = peer.mac
    if peer.mtu:
        peer_attrs["mtu"] = peer.mtu
    kwargs: dict = {"ifname": link.name, "kind": "veth", "index": index, "peer": peer_attrs, **_common(link, s)}
    s.ipr.link("add", **kwargs)
    s.index[link.name] = index
    other.forget_index(peer.name)  # its index is the kernel's choice; looked up if needed


def _apply_batch(ns_name: str, changes: list[Change], sessions: Sessions, fresh: bool) -> None:
    s = sessions.get(ns_name)
    msgs = [m for c in changes for m in _messages(c, s)]
    try:
        _send(s, msgs)
    except NetlinkError:
        # Find the one that failed, to say which; each message is idempotent.
        for change in changes:
            try:
                _send(s, _messages(change, s))
            except NetlinkError as exc:
                raise KernelError(f"{change.describe()}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        raise


def _send(s, msgs: Iterable) -> None:
    s.ipr.nlm_request_batch(list(msgs))


def _messages(change: Change, s) -> list:
    if change.op == "set_link" and change.obj.hairpin is not None:
        # Bridge-port options go in a second message: they apply once the port is enslaved.
        return [_setlink_msg(change.obj, s), _brport_msg(change.obj, s)]
    return [_message(change, s)]


def _brport_msg(link: Link, s):
    msg = ifinfmsg()
    msg["index"] = s.index.get(link.name, 0)
    attrs: list = [] if msg["index"] else [("IFLA_IFNAME", link.name)]
    slave_data = {"attrs": [("IFLA_BRPORT_MODE", int(bool(link.hairpin)))]}
    attrs.append(
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"), ("IFLA_INFO_SLAVE_DATA", slave_data)]})
    )
    msg["attrs"] = attrs
    return _header(msg, RTM_NEWLINK, REQ)


def _message(change: Change, s):
    obj = change.obj
    if change.op == "set_link":
        return _setlink_msg(obj, s)
    if change.op == "add_addr":
        ip, prefix = obj.cidr.split("/")
        return _addr_msg(RTM_NEWADDR, UPSERT, s.ifindex(obj.ifname), ip, int(prefix))
    if change.op == "add_route":
        return _route_msg(RTM_NEWROUTE, UPSERT, obj, s)
    if change.op in ("add_neigh", "add_fdb"):
        return _neigh_msg(RTM_NEWNEIGH, UPSERT, obj, s)
    raise KernelError(f"cannot batch {change.op}")


def _header(msg, msg_type: int, flags: int):
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    return msg


def _setlink_msg(link: Link, s):
    msg = ifinfmsg()
    attrs: list = []
    if link.name in s.index:
        msg["index"] = s.index[link.name]
    else:
        msg["index"] = 0
        attrs.append(("IFLA_IFNAME", link.name))  # the kernel finds it by name
    msg["flags"] = IFF_UP if link.up else 0
    msg["change"] = IFF_UP
    if link.mtu:
        attrs.append(("IFLA_MTU", link.mtu))
    if link.mac:
        attrs.append(("IFLA_ADDRESS", link.mac))
    if link.master:
        attrs.append(("IFLA_MASTER", s.ifindex(link.master)))
    msg["attrs"] = attrs
    return _header(msg, RTM_SETLINK, REQ)


def _addr_msg(msg_type: int, flags: int, index: int, ip: str, prefix: int):
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET
    msg["prefixlen"] = prefix
    msg["index"] = index
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    return _header(msg, msg_type, flags)


def _route_msg(msg_type: int, flags: int, route: Route, s):
    msg = rtmsg()
    dst, dst_len = route.dst.split("/")
    msg["family"] = socket.AF_INET
    msg["dst_len"] = int(dst_len)
    msg["table"] = route.table if route.table < 256 else 252
    msg["proto"] = PROTO_NUMBER.get(route.proto, 4)
    msg["scope"] = RT_SCOPE_HOST if route.kind == "local" else 0
    msg["type"] = RTN_TYPE[route.kind]
    attrs: list = [("RTA_TABLE", route.table)]
    if int(dst_len):
        attrs.append(("RTA_DST", dst))
    if route.prefsrc:
        attrs.append(("RTA_PREFSRC", route.prefsrc))
    if route.metric:
        attrs.append(("RTA_PRIORITY", route.metric))
    if len(route.nexthops) == 1:
        nh = route.nexthops[0]
        if nh.onlink:
            msg["flags"] = RTNH_F_ONLINK
        if nh.gateway:
            attrs.append(("RTA_GATEWAY", nh.gateway))
        if nh.dev:
            attrs.append(("RTA_OIF", s.ifindex(nh.dev)))
    else:
        hops = []
        for nh in route.nexthops:
            hop: dict = {
                "hops": nh.weight - 1,
                "oif": s.ifindex(nh.dev) if nh.dev else 0,
                "flags": RTNH_F_ONLINK if nh.onlink else 0,
                "attrs": [],
            }
            if nh.gateway:
                hop["attrs"].append(("RTA_GATEWAY", nh.gateway))
            hops.append(hop)
        attrs.append(("RTA_MULTIPATH", hops))
    msg["attrs"] = attrs
    return _header(msg, msg_type, flags)


def _neigh_msg(msg_type: int, flags: int, obj: Neighbour | Fdb, s):
    msg = ndmsg()
    msg["ifindex"] = s.ifindex(obj.ifname)
    msg["state"] = NUD_PERMANENT
    if isinstance(obj, Fdb):
        msg["family"] = AF_BRIDGE
        msg["flags"] = NTF_SELF
        msg["attrs"] = [("NDA_LLADDR", obj.mac), ("NDA_DST", obj.dst)]
    else:
        msg["family"] = socket.AF_INET
        msg["attrs"] = [("NDA_DST", obj.ip), ("NDA_LLADDR", obj.mac)]
    return _header(msg, msg_type, flags)

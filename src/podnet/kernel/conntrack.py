"""Conntrack clean-up after a Services sync (a side effect only once the sync succeeded).

UDP has no connection to reset: a client keeps sending to a service, conntrack keeps
translating to the endpoint it chose first, and when that endpoint goes away the flow
black-holes until the entry times out. So when an endpoint (address . port) leaves the
``endpoints-udp`` maps, its UDP entries toward service addresses are deleted, and the next
datagram is balanced afresh.

One netlink socket per node does it: one dump of the namespace's conntrack table, then every
matching entry deleted by its original tuple in one send. ``conntrack -D`` cost a process per
service address and removed endpoint, each walking the table again (1,000 processes, 15 s
or more, for 100 UDP Services losing 10 endpoints); pyroute2's conntrack decodes every
entry with its generic message classes and waits for each delete's answer (tens of times
slower than this). ``bench/services.py`` times all three; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.errors import KernelError
from podnet.kernel import netns, rtdump
from podnet.state import NftTable

NETLINK_NETFILTER = 12
CT_GET, CT_DELETE = 1 << 8 | 1, 1 << 8 | 2  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id
NLMSG = struct.Struct("=IHHII")
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE = 1, 2, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_CAP_ACK, SO_RCVBUFFORCE = 270, 10, 33
SEND_CHUNK = 1 << 16  # bytes of delete messages per send (one skb each)
ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Entry:
    """One UDP conntrack entry as a service sees it, and the bytes that delete it."""

    orig_dst: str  # the service address the client sent to
    reply_src: str  # the endpoint that answers (after DNAT)
    reply_sport: int
    delete: bytes  # CTA_TUPLE_ORIG (and CTA_ZONE) exactly as the kernel dumped them


def _pairs(table: NftTable | None, prefix: str) -> set[str]:
    """Elements of every set whose name starts with ``prefix`` (the endpoint maps are sharded)."""
    if table is None:
        return set()
    return {e for name, s in table.sets.items() if name.startswith(prefix) for e in s.elements}


def forget_removed_udp_endpoints(ns: str, want: NftTable, have: NftTable | None) -> list[Entry]:
    """Delete UDP conntrack entries from service VIPs to endpoints no longer in the map."""
    before = {e.split(" : ", 1)[1] for e in _pairs(have, "endpoints-udp-")}
    after = {e.split(" : ", 1)[1] for e in _pairs(want, "endpoints-udp-")}
    gone = {(ip, int(port)) for ip, port in (t.split(" . ") for t in before - after)}
    if not gone:
        return []
    vips = {e.split(" . ")[0] for e in _pairs(have, "services") if " . udp . " in e}
    return forget(ns, vips, gone)


def forget(ns: str, vips: set[str], endpoints: set[tuple[str, int]]) -> list[Entry]:
    """Delete the UDP entries of namespace ``ns`` sent to one of ``vips`` and answered by one
    of ``endpoints`` (address, port); returns them."""
    with _socket(ns) as sock:
        doomed = [e for e in udp_entries(sock) if e.orig_dst in vips and (e.reply_src, e.reply_sport) in endpoints]
        _delete(sock, doomed)
    return doomed


class _socket:
    """A ctnetlink socket opened inside namespace ``ns``."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def __enter__(self) -> socket.socket:
        try:
            with netns.entered(self.ns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of the request
            self.sock.bind((0, 0))
        except OSError as exc:
            raise KernelError(f"no conntrack netlink socket in {self.ns}: {exc}") from exc
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def udp_entries(sock: socket.socket) -> list[Entry]:
    """Every IPv4 UDP entry of the socket's namespace (one dump)."""
    out = []
    for m in rtdump.dump(sock, CT_GET, NFGENMSG, socket.AF_INET):
        orig, reply = m.attrs.get(CTA_TUPLE_ORIG), m.attrs.get(CTA_TUPLE_REPLY)
        if orig is None or reply is None:
            continue
        _, o_dst, o_proto, _ = _tuple(orig)
        if o_proto != socket.IPPROTO_UDP:
            continue
        r_src, _, _, r_sport = _tuple(reply)
        keep = _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig)
        if CTA_ZONE in m.attrs:
            keep += _attr(CTA_ZONE, m.attrs[CTA_ZONE])
        out.append(Entry(socket.inet_ntoa(o_dst), socket.inet_ntoa(r_src), r_sport, keep))
    return out


# An IPv4 tuple as ctnetlink writes it: CTA_TUPLE_IP { V4_SRC, V4_DST }, CTA_TUPLE_PROTO
# { NUM, SRC_PORT, DST_PORT }, read in one unpack (attribute by attribute, the decoding took
# most of a clean-up's time); attribute by attribute only when the layout is another.
_TUPLE = struct.Struct("=2xH 2xH4s 2xH4s 2xH 2xHB3x 2xH2s2x 2xH2s2x")
_LAYOUT = (CTA_TUPLE_IP | NLA_F_NESTED, CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_TUPLE_PROTO | NLA_F_NESTED)
_LAYOUT += (CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT)


def _tuple(data: bytes) -> tuple[bytes, bytes, int, int]:
    """(source address, destination address, protocol, source port) of a tuple."""
    if len(data) == _TUPLE.size:
        t_ip, t_src, src, t_dst, dst, t_proto, t_num, num, t_sport, sport, t_dport, _ = _TUPLE.unpack(data)
        if (t_ip, t_src, t_dst, t_proto, t_num, t_sport, t_dport) == _LAYOUT:
            return src, dst, num, int.from_bytes(sport, "big")
    parts = rtdump.attributes(data)
    ip, proto = rtdump.attributes(parts[CTA_TUPLE_IP]), rtdump.attributes(parts[CTA_TUPLE_PROTO])
    sport = int.from_bytes(proto.get(CTA_PROTO_SRC_PORT, b"\0\0"), "big")
    return ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST], proto[CTA_PROTO_NUM][0], sport


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _delete(sock: socket.socket, entries: Iterable[Entry]) -> None:
    """Delete each entry by its original tuple, the messages in as few sends as fit. Only the
    last message of a send asks for an answer: the kernel takes them in order, so when it
    comes, every error before it has too (an entry that expired meanwhile is no error)."""
    chunk: list[bytes] = []
    size = 0
    for entry in entries:
        body = NFGENMSG.pack(socket.AF_INET, 0, 0) + entry.delete
        if size + 16 + len(body) > SEND_CHUNK and chunk:
            _send(sock, chunk)
            chunk, size = [], 0
        chunk.append(body)
        size += 16 + len(body)
    if chunk:
        _send(sock, chunk)


def _send(sock: socket.socket, bodies: list[bytes]) -> None:
    last = len(bodies)
    sock.send(
        b"".join(
            NLMSG.pack(16 + len(body), CT_DELETE, NLM_F_REQUEST | (NLM_F_ACK if seq == last else 0), seq, 0) + body
            for seq, body in enumerate(bodies, start=1)
        )
    )
    sock.settimeout(ANSWER_TIMEOUT_S)
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            raise KernelError(f"conntrack did not answer {last} deletes: {exc}") from exc
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, seq, _pid = NLMSG.unpack_from(data, offset)
            offset += (length + 3) & ~3
            if kind != NLMSG_ERROR:
                continue
            (code,) = struct.unpack_from("=i", data, offset - ((length + 3) & ~3) + 16)
            if code not in (0, -errno.ENOENT):
                raise KernelError(f"conntrack refused a delete: {os.strerror(-code)}")
            if seq == last:
                return

"""Netlink for the agent's hot path: raw rtnetlink sockets, in any namespace given by path.

``podnet.kernel`` names namespaces by their pin under ``/run/netns``; a container runtime
hands the agent a *path* instead (``/run/netns/netns-...``, ``/var/run/netns/cni-...``,
``/proc/PID/ns/net``), and the agent's own namespace has no name at all. So this module
enters namespaces by path (through ``netns.entered_fd``), and only the calling thread.

An ADD is a handful of messages, and pyroute2 costs more than the kernel work (parsing one
link dump takes 2 ms, encoding an address and a route message a third of a millisecond), so
the few messages the agent sends are packed here with ``struct`` and go out on a plain
``AF_NETLINK`` socket; only the acknowledgements are read back. They are the messages
``podnet.kernel.apply`` sends for the same objects (create a veth pair, an address, a route
with proto static). A plain socket is cheap to open, so a worker opens one in each container
namespace it configures and closes it right after.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from podnet.kernel import netns

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_GROUP = 27
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_GATEWAY = 5
RTA_OIF = 4
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
_HEADER = struct.Struct("=LHHLL")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread in the namespace at ``path``, then back in the agent's own."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns.entered_fd(fd, path):
            yield
    finally:
        os.close(fd)


def is_namespace(path: str) -> bool:
    """True when ``path`` is a namespace file (on nsfs, like this thread's own)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/thread-self/ns/net").st_dev
    except OSError:
        return False


def same_namespace(path: str) -> bool:
    """True when ``path`` is the namespace this thread is in (a runtime must never hand us that)."""
    here = os.stat("/proc/thread-self/ns/net")
    there = os.stat(path)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class NetlinkError(OSError):
    """The kernel refused one message of a batch."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _mac(value: str) -> bytes:
    return bytes(int(b, 16) for b in value.split(":"))


def _message(msg_type: int, flags: int, body: bytes) -> bytes:
    return _HEADER.pack(16 + len(body), msg_type, flags, 0, 0) + body


def veth_message(
    host_if: str, host_mac: str, master: int, mtu: int, peer_if: str, peer_mac: str, peer_netns_fd: int
) -> bytes:
    """One RTM_NEWLINK: a veth pair, this end enslaved to the bridge and up, the other end in the
    container's namespace with its MTU and MAC. (The kernel cannot open the peer while the pair
    is being created, ENOTCONN: it is brought up from inside, see :func:`up_message`.)"""
    peer = _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(
        [
            _attr(IFLA_IFNAME, _name(peer_if)),
            _attr(IFLA_ADDRESS, _mac(peer_mac)),
            _attr(IFLA_MTU, _u32(mtu)),
            _attr(IFLA_NET_NS_FD, _u32(peer_netns_fd)),
        ]
    )
    linkinfo = _attr(IFLA_INFO_KIND, _name("veth")) + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer)
    )
    body = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + b"".join(
        [
            _attr(IFLA_IFNAME, _name(host_if)),
            _attr(IFLA_ADDRESS, _mac(host_mac)),
            _attr(IFLA_MTU, _u32(mtu)),
            _attr(IFLA_MASTER, _u32(master)),
            _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo),
        ]
    )
    return _message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)


def up_message(ifindex: int) -> bytes:
    return _message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, _IFINFO.pack(0, 0, ifindex, IFF_UP, IFF_UP))


def retire_message(ifname: str, group: int) -> bytes:
    """Take a link down and into ``group``: off the bridge's forwarding at once (a fraction of a
    millisecond), deleted later together with every other link of the group."""
    body = _IFINFO.pack(0, 0, 0, 0, IFF_UP) + _attr(IFLA_IFNAME, _name(ifname)) + _attr(IFLA_GROUP, _u32(group))
    return _message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def delete_group_message(group: int) -> bytes:
    """Delete every link of ``group`` in one message: the kernel unregisters them together and
    waits for one RCU grace period (about 18 ms here) instead of one per link."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_GROUP, _u32(group))
    return _message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def delete_link_message(ifname: str) -> bytes:
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
    return _message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def address_message(ifindex: int, ip: str, prefix: int) -> bytes:
    """RTM_NEWADDR, create-only. (The same message ``podnet.kernel.apply`` builds with pyroute2,
    packed by hand: encoding it through pyroute2 costs a quarter of the agent's ADD.)"""
    packed = socket.inet_aton(ip)
    body = _IFADDR.pack(socket.AF_INET, prefix, 0, 0, ifindex) + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    return _message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)


def default_route_message(ifindex: int, gateway: str) -> bytes:
    """RTM_NEWROUTE 0.0.0.0/0 via ``gateway`` on ``ifindex``, proto static, create-only: a
    default route some other network already set is left alone (the spec asks plugins to be
    ready to skip theirs), and the caller learns it from EEXIST."""
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _attr(RTA_GATEWAY, socket.inet_aton(gateway)) + _attr(RTA_OIF, _u32(ifindex))
    return _message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)


class Rtnl:
    """A raw rtnetlink socket in the namespace at ``path`` (None: this thread's own)."""

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            self.sock = self._open()
        else:
            with entered(path):
                self.sock = self._open()
        self._seq = 0

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, 0))
        return s

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msgs: list[bytes]) -> list[int]:
        """Send the messages as one batch; the errno of each (0: done). Each must ask for an ACK."""
        first = self._seq + 1
        data = bytearray()
        for i, msg in enumerate(msgs):
            buf = bytearray(msg)
            struct.pack_into("=L", buf, 8, first + i)  # sequence number
            data += buf
        self._seq += len(msgs)
        self.sock.sendto(bytes(data), (0, 0))
        results: dict[int, int] = {}
        while len(results) < len(msgs):
            for msg_type, seq, payload in self._recv():
                if msg_type == NLMSG_ERROR and first <= seq < first + len(msgs):
                    results[seq - first] = -struct.unpack_from("=i", payload)[0]
        return [results[i] for i in range(len(msgs))]

    def check(self, msgs: list[bytes], what: list[str], ok: tuple[int, ...] = ()) -> list[int]:
        """:meth:`request`, raising for the first error not in ``ok``."""
        codes = self.request(msgs)
        for code, label in zip(codes, what, strict=True):
            if code and code not in ok:
                raise NetlinkError(code, f"{label}: {os.strerror(code)}")
        return codes

    def _recv(self) -> Iterator[tuple[int, int, bytes]]:
        data = self.sock.recv(1 << 16)
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
            if length < 16:
                break
            yield msg_type, seq, data[offset + 16 : offset + length]
            offset += (length + 3) & ~3

    def ifindex(self, ifname: str) -> int | None:
        """The index of a link by name (None when there is none), without a dump."""
        self._seq += 1
        seq = self._seq
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
        body += _attr(IFLA_EXT_MASK, _u32(RTEXT_FILTER_SKIP_STATS))
        msg = bytearray(_message(RTM_GETLINK, NLM_F_REQUEST, body))
        struct.pack_into("=L", msg, 8, seq)
        self.sock.sendto(bytes(msg), (0, 0))
        while True:
            for msg_type, got_seq, payload in self._recv():
                if got_seq != seq:
                    continue
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code in (errno.ENODEV, errno.ENOENT):
                        return None
                    raise NetlinkError(code, f"get link {ifname}: {os.strerror(code)}")
                if msg_type == RTM_NEWLINK:
                    return _IFINFO.unpack_from(payload)[2]


_local = threading.local()


def host_socket() -> Rtnl:
    """This thread's socket in the agent's own namespace (worker threads never leave it for long)."""
    sock = getattr(_local, "rtnl", None)
    if sock is None:
        sock = _local.rtnl = Rtnl()
    return sock

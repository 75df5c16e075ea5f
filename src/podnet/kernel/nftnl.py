"""A small nf_tables netlink writer: rules and set elements in one batch, without nft.

nft spends its time parsing and evaluating source and listing the table into its cache; for
10,000 Services that is most of a second, and tens of milliseconds for any change. The bulk
of a Services sync is regular: per-service chains with rules from ``podnet.nftcode`` and the
elements of maps whose types are known. This module encodes exactly those into one
nfnetlink batch, which the kernel applies as one transaction, and reports the kernel's
errors. Everything else (tables, base chains, set declarations, other rules) stays with nft.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from podnet.errors import KernelError
from podnet.kernel import netns
from podnet.nftcode import PROTO_NUMBERS, Expr

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
BATCH_BEGIN, BATCH_END = 16, 17
NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, DELSET, NEWSETELEM, DELSETELEM, GETGEN = 3, 5, 6, 8, 11, 12, 14, 16
NLMSG_ERROR = 2
F_REQUEST, F_CREATE, F_APPEND = 0x1, 0x400, 0x800
NLA_F_NESTED = 0x8000
FAMILIES = {"ip": 2, "inet": 1, "bridge": 7, "ip6": 10}
VERDICTS = {"drop": 0, "accept": 1, "jump": -3, "goto": -4}
SOL_NETLINK, NETLINK_EXT_ACK, NETLINK_CAP_ACK = 270, 11, 10
MAX_ELEMENTS_ATTR = 60_000  # an attribute's length is 16 bits
ANSWER_TIMEOUT_S = 30.0  # the kernel applies a batch within send(); the answer follows at once


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def _value(kind: int, data: bytes) -> bytes:
    return _nest(kind, _attr(1, data))  # NFTA_DATA_VALUE


def _verdict(kind: int, verdict: str) -> bytes:
    word, _, chain = verdict.partition(" ")
    parts = [_u32(1, VERDICTS[word])]
    if chain:
        parts.append(_str(2, chain))
    return _nest(kind, _nest(2, *parts))  # NFTA_DATA_VERDICT { CODE, CHAIN }


# --- expressions -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _expr(e: Expr) -> bytes:
    kind = e[0]
    if kind == "meta":
        _, key, dreg = e
        body = _u32(2, key) + _u32(1, dreg)
        name = "meta"
    elif kind == "cmp":
        _, sreg, data = e
        body = _u32(1, sreg) + _u32(2, 0) + _value(3, data)
        name = "cmp"
    elif kind == "payload":
        _, base, offset, length, dreg = e
        body = _u32(1, dreg) + _u32(2, base) + _u32(3, offset) + _u32(4, length)
        name = "payload"
    elif kind == "numgen":
        _, dreg, mod, offset = e
        body = _u32(1, dreg) + _u32(2, mod) + _u32(3, 1) + _u32(4, offset)  # type 1: random
        name = "numgen"
    elif kind == "lookup":
        _, set_name, sreg, dreg = e
        body = _u32(2, sreg) + (_u32(3, dreg) if dreg is not None else b"") + _str(1, set_name)
        name = "lookup"
    elif kind == "immediate":
        _, dreg, data = e
        body = _u32(1, dreg) + _value(2, data)
        name = "immediate"
    elif kind == "verdict":
        _, word, chain = e
        body = _u32(1, 0) + _verdict(2, f"{word} {chain}")
        name = "immediate"
    elif kind == "nat":
        _, addr_reg, proto_reg, flags = e
        body = _u32(1, 1) + _u32(2, FAMILIES["ip"]) + _u32(3, addr_reg) + _u32(5, proto_reg)
        if flags is not None:
            body += _u32(7, flags)
        name = "nat"
    elif kind == "dynset":
        _, set_name, sreg, timeout_ms = e
        body = _u32(4, sreg) + _u32(3, 1) + _attr(6, struct.pack(">Q", timeout_ms)) + _str(1, set_name)
        name = "dynset"
    else:
        raise ValueError(f"no netlink encoding for expression {e!r}")
    return _nest(1, _str(1, name), _nest(2, body))  # NFTA_LIST_ELEM { NAME, DATA }


def rule_attrs(table: str, chain: str, code: Sequence[Expr], comment: str) -> bytes:
    note = comment.encode() + b"\0"
    userdata = struct.pack("BB", 0, len(note)) + note  # NFTNL_UDATA_RULE_COMMENT
    return _str(1, table) + _str(2, chain) + _nest(4, *(_expr(e) for e in code)) + _attr(7, userdata)


# --- set elements --------------------------------------------------------------------------------


_TYPES = {
    "ipv4_addr": "ipv4",
    "ip daddr": "ipv4",
    "ip saddr": "ipv4",
    "inet_service": "port",
    "tcp dport": "port",
    "udp dport": "port",
    "sctp dport": "port",
    "inet_proto": "proto",
    "numgen random mod 2": "int",
    "verdict": "verdict",
}
_HOST_U32 = struct.Struct("=I")
_PORT = struct.Struct(">H2x")
_PROTOS = {name: bytes((number, 0, 0, 0)) for name, number in PROTO_NUMBERS.items()}
_CONVERT: dict[str, Callable[[str], bytes]] = {
    "ipv4": socket.inet_aton,
    "port": lambda text: _PORT.pack(int(text)),
    "proto": _PROTOS.__getitem__,
    "int": lambda text: _HOST_U32.pack(int(text)),
}


def _joined(convs: list[Callable[[str], bytes]]) -> Callable[[str], bytes]:
    """One function converting "a . b" with a converter per component (the common arities unrolled)."""
    if len(convs) == 1:
        return convs[0]
    if len(convs) == 2:
        first, second = convs

        def pair(text: str) -> bytes:
            a, _, b = text.partition(" . ")
            return first(a) + second(b)

        return pair
    return lambda text: b"".join(conv(part) for conv, part in zip(convs, text.split(" . "), strict=True))


@dataclass(frozen=True)
class ElementCodec:
    """How a set's elements (nft source) become key and data bytes; from the set's declaration.

    Every component it accepts takes four bytes (an address, a numgen slot, or a port or
    protocol inside a concatenation), so all elements of a set share one layout: the
    attribute headers are computed once and an element costs its conversions and one
    concatenation.
    """

    key: tuple[str, ...]
    data: tuple[str, ...] | None

    @staticmethod
    def of(decl: str) -> ElementCodec | None:
        """None when the declaration holds something this writer does not encode (flags, intervals)."""
        if ";" in decl:
            return None
        words = decl.removeprefix("typeof ").removeprefix("type ")
        key_text, _, data_text = words.partition(" : ")
        try:
            key = tuple(_TYPES[c.strip()] for c in key_text.split(" . "))
            data = tuple(_TYPES[c.strip()] for c in data_text.split(" . ")) if data_text else None
        except KeyError:
            return None
        if "verdict" in key or (data and "verdict" in data and len(data) > 1):
            return None
        # Inside a concatenation every component takes four bytes; alone, a port takes two
        # and a protocol one, which this writer does not encode.
        if any(len(part) == 1 and part[0] in ("port", "proto") for part in (key, data or ())):
            return None
        return ElementCodec(key, data)

    def encoder(self, with_data: bool) -> Callable[[str], bytes]:
        """A function from one element (nft source) to its NFTA_LIST_ELEM attribute."""
        key_conv = [_CONVERT[k] for k in self.key]
        key_len = 4 * len(key_conv)
        key_attr = struct.pack("=HHHH", 8 + key_len, 1 | NLA_F_NESTED, 4 + key_len, 1)

        key_of = _joined(key_conv)

        if not with_data or self.data is None:
            head = struct.pack("=HH", 4 + len(key_attr) + key_len, 1 | NLA_F_NESTED) + key_attr
            return lambda element: head + key_of(element.partition(" : ")[0])
        if self.data == ("verdict",):

            def verdict_element(element: str) -> bytes:
                key_text, _, verdict = element.partition(" : ")
                return _nest(1, key_attr + key_of(key_text), _verdict(2, verdict))

            return verdict_element
        data_conv = [_CONVERT[k] for k in self.data]
        data_len = 4 * len(data_conv)
        data_attr = struct.pack("=HHHH", 8 + data_len, 2 | NLA_F_NESTED, 4 + data_len, 1)
        head = struct.pack("=HH", 4 + len(key_attr) + key_len + len(data_attr) + data_len, 1 | NLA_F_NESTED) + key_attr

        data_of = _joined(data_conv)

        def element_with_data(element: str) -> bytes:
            key_text, _, data_text = element.partition(" : ")
            return head + key_of(key_text) + data_attr + data_of(data_text)

        return element_with_data


# --- the batch -----------------------------------------------------------------------------------


class Batch:
    """nf_tables messages for one table, sent as one transaction by :meth:`send`."""

    def __init__(self, family: str, table: str) -> None:
        self.family = FAMILIES[family]
        self.table = table
        self.messages: list[tuple[int, int, bytes]] = []  # (message type, flags, attributes)
        self.what: list[str] = []  # what each message does, for error reports

    def _add(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self.messages.append((NFNL_SUBSYS_NFTABLES << 8 | kind, F_REQUEST | flags, body))
        self.what.append(what)

    @property
    def nbytes(self) -> int:
        return sum(len(body) for _, _, body in self.messages)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def add_chain(self, chain: str) -> None:
        self._add(NEWCHAIN, F_CREATE, _str(1, self.table) + _str(3, chain), f"add chain {chain}")

    def delete_chain(self, chain: str) -> None:
        self._add(DELCHAIN, 0, _str(1, self.table) + _str(3, chain), f"delete chain {chain}")

    def delete_set(self, name: str) -> None:
        self._add(DELSET, 0, _str(1, self.table) + _str(2, name), f"delete set {name}")

    def flush_chain(self, chain: str) -> None:
        self._add(DELRULE, 0, _str(1, self.table) + _str(2, chain), f"flush chain {chain}")

    def add_rule(self, chain: str, code: Sequence[Expr], comment: str) -> None:
        self._add(NEWRULE, F_CREATE | F_APPEND, rule_attrs(self.table, chain, code, comment), f"add rule to {chain}")

    def elements(self, verb: str, set_name: str, codec: ElementCodec, elements: Iterable[str]) -> None:
        kind, flags, with_data = (NEWSETELEM, F_CREATE, True) if verb == "add" else (DELSETELEM, 0, False)
        head = _str(1, self.table) + _str(2, set_name)
        encode = codec.encoder(with_data)
        chunk: list[bytes] = []
        size = 0
        for element in elements:
            encoded = encode(element)
            if size + len(encoded) > MAX_ELEMENTS_ATTR:
                self._add(kind, flags, head + _nest(3, *chunk), f"{verb} elements of {set_name}")
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded)
        if chunk:
            self._add(kind, flags, head + _nest(3, *chunk), f"{verb} elements of {set_name}")

    def send(self, ns: str) -> None:
        """Apply the batch in namespace ``ns`` as one transaction; KernelError names what failed."""
        if self.messages:
            with Netfilter(ns) as nf:
                nf.send(self)


def _header(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    return (
        struct.pack("=IHHII", 16 + 4 + len(body), kind, flags, seq, 0)
        + struct.pack("=BBH", family, 0, socket.htons(res_id))
        + body
    )


def _talk(sock: socket.socket, batch: Batch, probe: int) -> None:
    parts = [_header(BATCH_BEGIN, F_REQUEST, 0, 0, NFNL_SUBSYS_NFTABLES, b"")]
    for seq, (kind, flags, body) in enumerate(batch.messages, start=1):
        parts.append(_header(kind, flags, seq, batch.family, 0, body))
    end = len(batch.messages) + 1
    parts.append(_header(BATCH_END, F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, b""))
    data = b"".join(parts)
    sock.setsockopt(socket.SOL_SOCKET, 32, len(data) + 65536)  # SO_SNDBUFFORCE: one message, one skb
    sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
    try:
        sock.send(data)
    except OSError as exc:
        raise KernelError(f"nf_tables refused a batch of {len(batch.messages)} messages: {exc}") from exc
    # A request after the batch: its answer comes after every error the batch produced.
    sock.send(_header(NFNL_SUBSYS_NFTABLES << 8 | GETGEN, F_REQUEST, probe, 0, 0, b""))
    errors: list[str] = []
    answered = False
    sock.settimeout(ANSWER_TIMEOUT_S)
    while not answered:
        try:
            buf = sock.recv(1 << 20)
        except (TimeoutError, OSError) as exc:  # ENOBUFS: more errors than the buffer held
            raise KernelError(f"nf_tables did not answer after the batch: {exc}; " + "; ".join(errors[:5])) from exc
        offset = 0
        while offset + 16 <= len(buf):
            length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, offset)
            start, offset = offset, offset + ((length + 3) & ~3)
            answered = answered or seq == probe
            if kind != NLMSG_ERROR:
                continue
            (code,) = struct.unpack_from("=i", buf, start + 16)  # struct nlmsgerr: error, then the header
            if code != 0:
                what = batch.what[seq - 1] if 1 <= seq <= len(batch.what) else "the transaction"
                errors.append(f"{what}: {os.strerror(-code)} ({errno.errorcode.get(-code, code)})")
    if errors:
        raise KernelError("nf_tables refused the update: " + "; ".join(errors[:5]))


SO_NETNS_COOKIE = 71


class Netfilter:
    """An nf_tables netlink socket in one namespace, for a batch and the generation around it.

    One socket serves a whole sync: closing one costs the kernel about three milliseconds
    (it releases what the socket might own in nf_tables), which was a third of a
    one-service change when each step opened its own."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._seq = 1 << 20  # above any batch's sequence numbers
        try:
            with netns.entered(ns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise KernelError(f"no nf_tables netlink socket in {ns}: {exc}") from exc
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of the message
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError as exc:
            self.sock.close()
            raise KernelError(f"nf_tables netlink in {ns}: {exc}") from exc

    def __enter__(self) -> Netfilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, batch: Batch) -> None:
        self._seq += 1
        try:
            _talk(self.sock, batch, self._seq)
        except OSError as exc:
            raise KernelError(f"nf_tables netlink in {self.ns}: {exc}") from exc

    def generation(self) -> tuple[int, int] | None:
        """(the namespace's cookie, its nf_tables generation): equal twice, nothing was
        committed in between. The cookie tells a namespace from a later one of the same name
        (inode numbers are reused, cookies are not); None where the kernel has no cookies
        (before 5.14)."""
        self._seq += 1
        try:
            cookie = int.from_bytes(self.sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
            self.sock.send(_header(NFNL_SUBSYS_NFTABLES << 8 | GETGEN, F_REQUEST, self._seq, 0, 0, b""))
            self.sock.settimeout(ANSWER_TIMEOUT_S)
            while True:
                buf = self.sock.recv(65536)
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", buf)
                if seq == self._seq:
                    break
            if kind == NLMSG_ERROR:
                return None
            offset = 20  # nlmsghdr, nfgenmsg
            while offset + 4 <= length:
                size, attr = struct.unpack_from("=HH", buf, offset)
                if attr & 0x7FFF == 1:  # NFTA_GEN_ID
                    return cookie, struct.unpack_from(">I", buf, offset + 4)[0]
                offset += (size + 3) & ~3
        except (OSError, struct.error):
            return None
        return None


def generation(ns: str) -> tuple[int, int] | None:
    """The (cookie, generation) of namespace ``ns`` (see :meth:`Netfilter.generation`); None
    when there is no such namespace."""
    try:
        with Netfilter(ns) as nf:
            return nf.generation()
    except KernelError:
        return None

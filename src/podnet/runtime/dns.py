"""``podnet dns-daemon``: the cluster DNS server (what CoreDNS is to a Kubernetes cluster).

One asyncio process per cluster. It reads ``STATE_DIR/dns.json``::

    {"digest": "...", "nonce": "...", "netns": "podnet_demo_...", "zone": <podnet.plan.dns.zone(...)>}

enters namespace ``netns`` just long enough to open a UDP and a TCP socket on port 53 there
(a socket stays in the namespace it was created in) and serves them from one loop:

- A, SRV, PTR (and SOA at the apex) from the zone, authoritative (AA);
- a name of the zone asked for another type: NOERROR without answers (NODATA);
- any other name in the cluster domain or under ``in-addr.arpa``: NXDOMAIN, authoritative,
  with the zone's SOA in the authority section (how long to cache the negative answer);
- anything else: forwarded over UDP to the upstreams in order (TCP when the answer was
  truncated for a TCP client), the answer relayed with RA set and AA cleared; with no
  upstreams REFUSED, and RA is never set: the server is never an open resolver.

Every answer is computed when the zone is loaded: a dict from (lowercase wire name, type)
to the packed answer, authority and additional sections; a query costs one header parse,
one dict lookup and one join. SIGHUP re-reads the file and swaps the zone in place; the
sockets are only reopened when the namespace changed (by name or inode). Readiness, with
each socket's namespace inode and the ``nonce`` of the file it read, is published atomically
to ``STATE_DIR/dns.ready.json`` in the same shape as netexec's. SIGTERM closes everything
and removes the ready file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import random
import socket
import struct
import uuid
from collections import defaultdict
from pathlib import Path

from dnslib import DNSError, DNSRecord

from podnet.kernel import netns
from podnet.plan.dns import absolute, parse_upstream
from podnet.runtime.loop import publish, serve

log = logging.getLogger("podnet.dns")

CONFIG = "dns.json"
READY = "dns.ready.json"
DAEMON_ARG = "dns-daemon"
PORT = 53

QTYPE = {"A": 1, "NS": 2, "SOA": 6, "PTR": 12, "AAAA": 28, "SRV": 33, "OPT": 41, "ANY": 255}
CLASS_IN = 1
ZONE_TRANSFERS = (251, 252)  # IXFR, AXFR: refused, as CoreDNS does unless told otherwise
# header flags
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

EDNS_SIZE = 1232  # the UDP payload size we advertise (the DNS flag day 2020 value)
MAX_UDP = 4096  # never send a datagram larger than this, whatever the client advertised
SOA_TIMERS = (7200, 1800, 86400)  # refresh, retry, expire (CoreDNS's)
REVERSE_APEX = "in-addr.arpa."
FORWARD_TIMEOUT = 2.0  # per upstream
MAX_PENDING_FORWARDS = 1024
TCP_IDLE = 10.0
MAX_TCP_CLIENTS = 256
UDP_BATCH = 64  # datagrams read per wake-up before the loop gets a turn
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO_SPACE = socket.CMSG_SPACE(12)

FORWARD = object()  # returned by Zone.answer: ask the upstreams


def wire(name: str) -> bytes:
    """An absolute name in wire format, lowercase, uncompressed; ValueError if it cannot be one."""
    text = absolute(name)
    out = bytearray()
    for label in text[:-1].split(".") if text != "." else ():
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"{name!r} is not a DNS name (empty label, or one longer than 63 bytes)")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"{name!r} is longer than 255 bytes")
    return bytes(out)


def _rr(owner: bytes, qtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", qtype, CLASS_IN, ttl, len(rdata)) + rdata


def _rdata(kind: str, data: object) -> bytes:
    if kind == "A":
        return ipaddress.IPv4Address(data).packed  # type: ignore[arg-type]
    if kind == "PTR":
        return wire(data)  # type: ignore[arg-type]
    if kind == "SRV":
        d: dict = data  # type: ignore[assignment]
        return struct.pack("!HHH", int(d["priority"]), int(d["weight"]), int(d["port"])) + wire(d["target"])
    raise ValueError(f"record type {kind!r} is not served")


def _label_starts(name: bytes) -> list[int]:
    """Offsets of every label of a wire name (the suffixes that are names themselves)."""
    starts, i = [], 0
    while name[i]:
        starts.append(i)
        i += name[i] + 1
    starts.append(i)
    return starts


def _under(name: bytes, apex: bytes) -> bool:
    cut = len(name) - len(apex)
    return cut >= 0 and name.endswith(apex) and cut in _label_starts(name)


class Entry:
    """A precomputed reply, minus the header's id and the question (copied from the query)."""

    __slots__ = ("body", "counts", "counts_edns", "flags")

    def __init__(self, flags: int, answers: list[bytes], authority: list[bytes], additional: list[bytes]) -> None:
        self.flags = flags
        self.body = b"".join(answers + authority + additional)
        self.counts = struct.pack("!HHH", len(answers), len(authority), len(additional))
        self.counts_edns = struct.pack("!HHH", len(answers), len(authority), len(additional) + 1)


class Zone:
    """A zone compiled for answering: every reply it can give, packed in advance."""

    def __init__(self, data: dict) -> None:
        self.domain = absolute(data["domain"])
        ttl = int(data.get("ttl", 5))
        self.upstreams = [parse_upstream(u) for u in data.get("upstreams", [])]
        ra = RA if self.upstreams else 0
        self.domain_wire = wire(self.domain)
        self.reverse_wire = wire(REVERSE_APEX)

        rrsets: dict[tuple[bytes, int], list[bytes]] = defaultdict(list)
        addresses: dict[bytes, list[bytes]] = defaultdict(list)  # owner -> A rdata, for SRV glue
        for record in data["records"]:
            kind = record["type"]
            rdata = _rdata(kind, record["data"])
            owner = wire(record["name"])
            if rdata not in rrsets[(owner, QTYPE[kind])]:
                rrsets[(owner, QTYPE[kind])].append(rdata)
            if kind == "A":
                addresses[owner].append(rdata)

        soa = data.get("soa") or {}
        serial = int(data.get("serial") or _serial(data))
        mname = soa.get("mname", f"ns.dns.{self.domain}")
        rname = soa.get("rname", f"hostmaster.{self.domain}")
        soa_rdata = wire(mname) + wire(rname) + struct.pack("!IIIII", serial, *SOA_TIMERS, ttl)
        self.soa = {apex: _rr(apex, QTYPE["SOA"], ttl, soa_rdata) for apex in (self.domain_wire, self.reverse_wire)}

        self.answers: dict[tuple[bytes, int], Entry] = {}
        names: set[bytes] = {self.domain_wire, self.reverse_wire}
        by_name: dict[bytes, list[bytes]] = defaultdict(list)
        for (owner, qtype), rdatas in sorted(rrsets.items()):
            answers = [_rr(b"\xc0\x0c", qtype, ttl, r) for r in rdatas]
            by_name[owner] += answers
            glue = []
            if qtype == QTYPE["SRV"]:
                for r in rdatas:
                    target = r[6:]
                    glue += [_rr(target, QTYPE["A"], ttl, a) for a in addresses.get(target, [])]
            self.answers[(owner, qtype)] = Entry(QR | AA | ra | NOERROR, answers, [], glue)
            apex = self.domain_wire if _under(owner, self.domain_wire) else self.reverse_wire
            for start in _label_starts(owner):  # the name and every ancestor down to the apex exist
                names.add(owner[start:])
                if owner[start:] == apex:
                    break
        for owner, answers in by_name.items():
            self.answers[(owner, QTYPE["ANY"])] = Entry(QR | AA | ra, answers, [], [])
        for apex in (self.domain_wire, self.reverse_wire):
            self.answers[(apex, QTYPE["SOA"])] = Entry(QR | AA | ra, [_rr(b"\xc0\x0c", 6, ttl, soa_rdata)], [], [])
        self.names = frozenset(names)
        self.nodata = {apex: Entry(QR | AA | ra | NOERROR, [], [soa], []) for apex, soa in self.soa.items()}
        self.nxdomain = {apex: Entry(QR | AA | ra | NXDOMAIN, [], [soa], []) for apex, soa in self.soa.items()}
        self.refused = Entry(QR | ra | REFUSED, [], [], [])
        self.records = sum(len(v) for v in rrsets.values())

    def _miss(self, qname: bytes, qtype: int) -> Entry | object:
        """The answer for a name with no record of the asked type."""
        if qtype in ZONE_TRANSFERS:
            return self.refused
        for apex in (self.domain_wire, self.reverse_wire):
            if _under(qname, apex):
                return self.nodata[apex] if qname in self.names else self.nxdomain[apex]
        return FORWARD if self.upstreams else self.refused

    def answer(self, data: bytes, udp: bool = True) -> bytes | object | None:
        """The reply to one query message; ``FORWARD`` to ask upstream, None to stay silent."""
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if n < 12:
            return None
        flags = (data[2] << 8) | data[3]
        if flags & QR:
            return None  # a response, not a query: never answer it (no reflection loops)
        if flags & OPCODE_MASK:
            return _header_only(data, QR | (flags & (OPCODE_MASK | RD)) | NOTIMP)
        if data[4:6] != b"\x00\x01":
            return _header_only(data, QR | (flags & RD) | FORMERR)
        i = 12
        try:
            while length := data[i]:
                if length > 63:
                    return _header_only(data, QR | (flags & RD) | FORMERR)
                i += length + 1
        except IndexError:
            return _header_only(data, QR | (flags & RD) | FORMERR)
        end = i + 5  # the zero label, QTYPE, QCLASS
        if end > n:
            return _header_only(data, QR | (flags & RD) | FORMERR)
        qname = data[12 : i + 1].lower()
        qtype = (data[i + 1] << 8) | data[i + 2]
        limit, edns = 512, False
        if data[10:12] != b"\x00\x00" and data[end : end + 3] == b"\x00\x00\x29" and n >= end + 11:
            edns = True
            limit = min(MAX_UDP, max(512, (data[end + 3] << 8) | data[end + 4]))
            if data[end + 6]:  # EDNS version: only 0 exists
                return _badvers(data, end, flags)
        entry = self.answers.get((qname, qtype)) if data[i + 3 : i + 5] == b"\x00\x01" else self.refused
        if entry is None:
            entry = self._miss(qname, qtype)
            if entry is FORWARD:
                return FORWARD
        question = data[12:end]
        opt = _OPT if edns else b""
        if udp and 12 + len(question) + len(entry.body) + len(opt) > limit:
            counts = b"\x00\x00\x00\x00\x00\x01" if edns else b"\x00\x00\x00\x00\x00\x00"
            head = (entry.flags | TC | (flags & (RD | CD))).to_bytes(2, "big")
            return b"".join((data[:2], head, b"\x00\x01", counts, question, opt))
        head = (entry.flags | (flags & (RD | CD))).to_bytes(2, "big")
        counts = entry.counts_edns if edns else entry.counts
        return b"".join((data[:2], head, b"\x00\x01", counts, question, entry.body, opt))


_OPT = b"\x00" + struct.pack("!HHIH", QTYPE["OPT"], EDNS_SIZE, 0, 0)


def _serial(data: dict) -> int:
    text = json.dumps(data.get("records", []), sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") or 1


def _header_only(data: bytes, flags: int) -> bytes:
    return data[:2] + flags.to_bytes(2, "big") + b"\x00" * 8


def _badvers(data: bytes, end: int, flags: int) -> bytes:
    opt = b"\x00" + struct.pack("!HHBBHH", QTYPE["OPT"], EDNS_SIZE, 1, 0, 0, 0)  # extended RCODE 16
    head = (QR | (flags & RD)).to_bytes(2, "big")
    return b"".join((data[:2], head, b"\x00\x01\x00\x00\x00\x00\x00\x01", data[12:end], opt))


def servfail(query: bytes) -> bytes:
    """SERVFAIL for a query we could not get answered upstream (the question echoed)."""
    flags = (query[2] << 8) | query[3]
    i = 12
    while query[i]:
        i += query[i] + 1
    head = (QR | RA | (flags & (RD | CD)) | SERVFAIL).to_bytes(2, "big")
    return b"".join((query[:2], head, b"\x00\x01\x00\x00\x00\x00\x00\x00", query[12 : i + 5]))


class Forwarder:
    """Asks the upstreams, over one UDP socket opened in the server's namespace.

    Each forwarded query gets a fresh random id; a reply is accepted only from the upstream
    it was sent to, with that id and the same question, and is relayed with the client's id.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.pending: dict[int, tuple[asyncio.Future, tuple[str, int], bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        with netns.entered(self.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        loop = asyncio.get_running_loop()
        forwarder = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                forwarder._received(data, addr)

            def error_received(self, exc: Exception) -> None:
                pass

        self.transport, _ = await loop.create_datagram_endpoint(_Protocol, sock=sock)  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for future, _, _ in self.pending.values():
            future.cancel()
        self.pending.clear()

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        waiting = self.pending.get(int.from_bytes(data[:2], "big"))
        if waiting is None:
            return
        future, upstream, question = waiting
        if addr[:2] != upstream or data[12 : 12 + len(question)].lower() != question or future.done():
            return
        future.set_result(data)

    async def ask(self, query: bytes, upstreams: list[tuple[str, int]], tcp: bool) -> bytes:
        """The upstream's answer with the client's id, or SERVFAIL when none answered."""
        i = 12
        while query[i]:
            i += query[i] + 1
        question = query[12 : i + 5].lower()
        loop = asyncio.get_running_loop()
        for upstream in upstreams:
            if len(self.pending) >= MAX_PENDING_FORWARDS or self.transport is None:
                break
            qid = random.getrandbits(16)
            while qid in self.pending:
                qid = random.getrandbits(16)
            future = loop.create_future()
            self.pending[qid] = (future, upstream, question)
            try:
                self.transport.sendto(qid.to_bytes(2, "big") + query[2:], upstream)
                reply = await asyncio.wait_for(future, FORWARD_TIMEOUT)
            except (TimeoutError, OSError):
                continue
            finally:
                self.pending.pop(qid, None)
            if tcp and reply[2] & 0x02:  # truncated, and the client can take it all over TCP
                with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
                    reply = await self._ask_tcp(query, upstream)
            if not _well_formed(reply):
                log.warning("upstream %s:%d sent a malformed answer", *upstream)
                continue
            # We recursed for the client (RA); the answer is the upstream's, not ours (no AA).
            return query[:2] + bytes([reply[2] & ~(AA >> 8) & 0xFF, reply[3] | RA]) + reply[4:]
        return servfail(query)

    async def _ask_tcp(self, query: bytes, upstream: tuple[str, int]) -> bytes:
        with netns.entered(self.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, upstream), FORWARD_TIMEOUT)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), FORWARD_TIMEOUT), "big")
            return await asyncio.wait_for(reader.readexactly(length), FORWARD_TIMEOUT)
        finally:
            writer.close()


def _well_formed(reply: bytes) -> bool:
    """Relay only what parses as a DNS response (dnslib checks every section)."""
    try:
        return bool(DNSRecord.parse(reply).header.qr)
    except (DNSError, ValueError, IndexError, struct.error):
        return False


def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(netns.path(name)).st_ino
    except OSError:
        return None


def _reply_pktinfo(ancdata: list) -> list:
    """Answer from the address the query was sent to (a namespace may have several).

    in_pktinfo is (ifindex, spec_dst, addr): the kernel's spec_dst is the local address the
    packet was for (an interface address when it was sent to a broadcast address), which
    is what the reply must come from; ifindex 0 lets routing pick the way out.
    """
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return [(socket.IPPROTO_IP, IP_PKTINFO, b"\x00\x00\x00\x00" + data[4:8] + b"\x00\x00\x00\x00")]
    return []


class Daemon:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.zone: Zone | None = None
        self.digest: str | None = None
        self.bound: tuple[str, int] | None = None  # (netns, inode) the sockets live in
        self.udp: socket.socket | None = None
        self.tcp_server: asyncio.Server | None = None
        self.forwarder: Forwarder | None = None
        self.tasks: set[asyncio.Task] = set()
        self.tcp_clients = 0

    # --- serving -----------------------------------------------------------------------

    def _on_udp(self) -> None:
        sock = self.udp
        zone = self.zone
        if sock is None or zone is None:
            return
        for _ in range(UDP_BATCH):
            try:
                data, ancdata, _, addr = sock.recvmsg(MAX_UDP, PKTINFO_SPACE)
            except OSError:  # BlockingIOError: drained
                return
            reply = zone.answer(data, True)
            if reply is None:
                continue
            if reply is FORWARD:
                self._spawn(self._forward_udp(sock, data, ancdata, addr, zone))
                continue
            with contextlib.suppress(OSError):  # a full socket buffer drops the reply; the client retries
                sock.sendmsg([reply], _reply_pktinfo(ancdata), 0, addr)  # type: ignore[list-item]

    async def _forward_udp(self, sock: socket.socket, query: bytes, ancdata: list, addr: tuple, zone: Zone) -> None:
        if self.forwarder is None:
            return
        reply = await self.forwarder.ask(query, zone.upstreams, tcp=False)
        with contextlib.suppress(OSError):
            sock.sendmsg([reply], _reply_pktinfo(ancdata), 0, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self.tcp_clients += 1
        try:
            while True:
                length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE), "big")
                query = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                zone = self.zone
                if zone is None:
                    break
                reply = zone.answer(query, False)
                if reply is None:
                    break
                if reply is FORWARD:
                    if self.forwarder is None:
                        break
                    reply = await self.forwarder.ask(query, zone.upstreams, tcp=True)
                writer.write(len(reply).to_bytes(2, "big") + reply)  # type: ignore[arg-type]
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self.tcp_clients -= 1
            writer.close()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- configuration -----------------------------------------------------------------

    def _close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        if self.udp is not None:
            loop.remove_reader(self.udp.fileno())
            self.udp.close()
            self.udp = None
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        self.bound = None

    async def _open_sockets(self, ns: str, inode: int) -> None:
        with netns.entered(ns):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        forwarder = Forwarder(ns)
        try:
            # No SO_REUSEADDR on UDP: another server on port 53 there is an error, not a silent share.
            udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            udp.bind(("0.0.0.0", PORT))
            udp.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(("0.0.0.0", PORT))
            tcp.listen(512)
            tcp.setblocking(False)
            await forwarder.open()
            server = await asyncio.start_server(self._serve_tcp, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            forwarder.close()
            raise
        asyncio.get_running_loop().add_reader(udp.fileno(), self._on_udp)
        self.udp, self.tcp_server, self.forwarder, self.bound = udp, server, forwarder, (ns, inode)

    async def sync(self) -> dict:
        """(Re)read dns.json: swap the zone, reopen the sockets only if the namespace changed."""
        errors: list[str] = []
        nonce = None
        try:
            config = json.loads((self.dir / CONFIG).read_text())
            nonce = config.get("nonce")
            zone = Zone(config["zone"])
            ns = config["netns"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            errors.append(f"{self.dir / CONFIG}: {type(exc).__name__}: {exc} (still serving the previous zone)")
        else:
            self.zone = zone
            self.digest = config.get("digest")
            inode = _ns_inode(ns)
            if self.bound != (ns, inode):
                self._close_sockets()
                if inode is None:
                    errors.append(f"{ns}: namespace is gone")
                else:
                    try:
                        await self._open_sockets(ns, inode)
                    except OSError as exc:
                        errors.append(f"{ns} port {PORT}: {exc}")
        ready = {
            "digest": self.digest,  # the configuration being served
            "nonce": nonce,  # echoed from the file just read: the writer knows we read it
            "pid": os.getpid(),
            "errors": errors,
            "listening": [
                {"netns": self.bound[0], "port": PORT, "protocol": proto, "inode": self.bound[1]}
                for proto in ("TCP", "UDP")
                if self.bound is not None
            ],
        }
        publish(self.dir / READY, ready)
        for e in errors:
            log.warning("%s", e)
        if self.zone is not None:
            log.info(
                "serving %s: %d records, %d upstreams, in %s (config %s)",
                self.zone.domain,
                self.zone.records,
                len(self.zone.upstreams),
                self.bound[0] if self.bound else "no namespace",
                self.digest,
            )
        return ready

    async def run(self) -> None:
        await serve(self.sync)
        self._close_sockets()
        for task in list(self.tasks):
            task.cancel()
        (self.dir / READY).unlink(missing_ok=True)


def write_config(state_dir: Path, netns_name: str, zone: dict, digest: str) -> str:
    """Write dns.json atomically; returns the nonce the daemon's readiness will echo once it
    has read this very file (then start the daemon, or SIGHUP it, and wait for the nonce)."""
    nonce = uuid.uuid4().hex
    tmp = state_dir / (CONFIG + ".tmp")
    tmp.write_text(json.dumps({"digest": digest, "nonce": nonce, "netns": netns_name, "zone": zone}))
    tmp.replace(state_dir / CONFIG)
    return nonce


def main(state_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(Daemon(state_dir).run())

"""``--verify``: send the traced packet for real and capture it at every hop.

A raw packet socket is opened inside each namespace on the interface the packet should leave
by (the last hop: arrive on), all before the probe is sent; then the probe (a TCP connect, a
UDP datagram, an ICMP echo) goes out from the source's namespace with the source port the
trace predicted, and every captured frame is decoded (Ethernet, IPv4, TCP/UDP, VXLAN and the
frame inside it) and matched against the hop's predicted headers. Where the route had several
equal next hops, every member is watched and the one the kernel's hash picked is reported; when
the trace predicted the member (``trace.fib`` computes the kernel's hash), a packet seen on
another one is a difference, as any other header that differs.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from podnet.kernel import netns
from podnet.trace.model import Hop, Packet, TraceResult

ETH_P_ALL = 0x0003
CAPTURE_AFTER = 0.4  # seconds to keep listening once the probe has finished
# A DNS query (id 0x5044, RD) for kube-dns.kube-system.svc.cluster.local, type A: what a UDP
# probe to the cluster DNS server sends, so that it answers.
DNS_QUERY = (
    bytes.fromhex("50440100000100000000000008")
    + b"kube-dns"
    + b"\x0bkube-system\x03svc\x07cluster\x05local\x00"
    + bytes.fromhex("00010001")
)


@dataclass(frozen=True)
class Seen:
    netns: str
    ifname: str
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    proto: str
    sport: int
    dport: int
    ttl: int
    outer: tuple[str, str, int, int] | None  # (src, dst, vni, UDP source port) when inside VXLAN
    arp: str | None = None

    def describe(self) -> str:
        if self.arp:
            return f"{self.ifname}: ARP {self.arp}"
        inner = f"{self.proto} {self.src_ip}:{self.sport} -> {self.dst_ip}:{self.dport} ttl {self.ttl} [{self.src_mac} -> {self.dst_mac}]"
        if self.outer:
            inner += f" inside VXLAN {self.outer[0]}:{self.outer[3]} -> {self.outer[1]} VNI {self.outer[2]}"
        return f"{self.ifname}: {inner}"


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _decode(frame: bytes, ns: str, ifname: str, vxlan_port: int = 4789) -> Seen | None:
    if len(frame) < 14:
        return None
    dst, src, ethertype = frame[0:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806 and len(frame) >= 42:
        op = struct.unpack("!H", frame[20:22])[0]
        spa, tpa = socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42])
        text = f"who-has {tpa} tell {spa}" if op == 1 else f"{spa} is-at {_mac(frame[22:28])}"
        return Seen(ns, ifname, _mac(src), _mac(dst), spa, tpa, "arp", 0, 0, 0, None, text)
    if ethertype != 0x0800:
        return None
    ip = frame[14:]
    if len(ip) < 20:
        return None
    ihl = (ip[0] & 0x0F) * 4
    ttl, proto = ip[8], ip[9]
    s, d = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    l4 = ip[ihl:]
    name = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto))
    sport = dport = 0
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
    if proto == 17 and dport == vxlan_port and len(l4) >= 16:
        vni = int.from_bytes(l4[12:15], "big")
        inner = _decode(l4[16:], ns, ifname, vxlan_port)
        if inner is not None and inner.arp is None:
            return Seen(
                ns,
                ifname,
                inner.src_mac,
                inner.dst_mac,
                inner.src_ip,
                inner.dst_ip,
                inner.proto,
                inner.sport,
                inner.dport,
                inner.ttl,
                (s, d, vni, sport),
            )
        return None
    return Seen(ns, ifname, _mac(src), _mac(dst), s, d, name, sport, dport, ttl, None)


def _open(ns: str, ifname: str) -> socket.socket | None:
    try:
        with netns.entered(ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, 0))
        sock.setblocking(False)
        return sock
    except OSError:
        return None


def _watch_points(result: TraceResult, tracer) -> list[tuple[str, str]]:
    points: list[tuple[str, str]] = []
    for path in (result.hops, result.reply):
        for i, hop in enumerate(path):
            last = i == len(path) - 1
            iface = hop.in_if if last and hop.in_if else hop.out_if
            if iface:
                points.append((hop.netns, iface.split("/")[-1]))
            points += _alternatives(path, i, tracer)
    return sorted(set(points))


def _ecmp_members(hop: Hop, tracer) -> list[tuple[str, str]]:
    """The (namespace, interface) holding each next hop of an ECMP route taken at ``hop``."""
    route = (hop.route or {}).get("underlay") or hop.route or {}
    ecmp = route.get("ecmp")
    ns = tracer.state.namespaces.get(hop.netns)
    out = []
    for member in ecmp or []:
        link = ns.links.get(member["dev"]) if ns else None
        if link is None or not member["gateway"]:
            continue
        for other_ns, other_if in tracer._l2_domain(ns, link.name):
            other = tracer.state.namespaces[other_ns]
            if any(a.ip == member["gateway"] for a in other.addresses if a.ifname == other_if):
                out.append((other_ns, other_if))
    return out


def _alternatives(path: list[Hop], i: int, tracer) -> list[tuple[str, str]]:
    """Where hop ``i`` may see the packet instead when a route chose among equal paths: its own
    other ECMP interfaces, the other routers' interfaces, or the switch ports leading to them."""
    hop = path[i]
    out: list[tuple[str, str]] = []
    own = ((hop.route or {}).get("underlay") or hop.route or {}).get("ecmp") or []
    out += [(hop.netns, m["dev"]) for m in own if m.get("dev")]
    j = i - 1
    while j >= 0 and path[j].kind == "switch":
        j -= 1
    if j < 0:
        return out
    members = _ecmp_members(path[j], tracer)
    if not members:
        return out
    if hop.kind != "switch":
        return out + members
    for router_ns, iface in members:
        router = tracer.state.namespaces.get(router_ns)
        link = router.links.get(iface) if router else None
        if link is not None and link.peer_netns and link.peer_name:
            out.append((link.peer_netns, link.peer_name))  # the switch port facing that router
    return out


def _decision_before(path: list[Hop], i: int) -> dict:
    """The route (the underlay's, for an encapsulated packet) of the hop that chose among equal
    next hops for hop ``i``: the last hop before it that is not a switch."""
    j = i - 1
    while j >= 0 and path[j].kind == "switch":
        j -= 1
    route = (path[j].route or {}) if j >= 0 else {}
    return route.get("underlay") or route


def _member_predicted(path: list[Hop], i: int) -> str | None:
    """The member the trace says the kernel's hash picks for hop ``i`` (None: not known)."""
    if not _decision_before(path, i).get("ecmp_predicted"):
        return None
    nxt = next((h for h in path[i:] if h.kind != "switch"), None)
    return nxt.name if nxt is not None else None


def _member_taken(path: list[Hop], i: int, seen: Seen, tracer) -> str:
    """The router the packet was seen at (or, on a switch, the router behind the port it left by)."""
    if path[i].kind == "switch":
        link = tracer.state.namespaces[seen.netns].links.get(seen.ifname)
        if link is not None and link.peer_netns:
            return tracer.topo.kind_of(link.peer_netns)[1]
    return tracer.topo.kind_of(seen.netns)[1]


def _matches(hop: Hop, seen: Seen, encapsulated: bool) -> bool:
    p: Packet | None = hop.packet
    if p is None or seen.arp:
        return False
    same = (seen.src_ip, seen.dst_ip, seen.proto) == (p.src_ip, p.dst_ip, p.proto)
    if p.proto in ("tcp", "udp"):
        same = same and (seen.sport, seen.dport) == (p.sport, p.dport)
    return same and (seen.outer is not None) == encapsulated


def _probe(result: TraceResult, src_netns: str, done: threading.Event, outcome: dict) -> None:
    p = result.packet
    try:
        with netns.entered(src_netns):
            if p.proto == "tcp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((p.src_ip, p.sport))
                sock.settimeout(2)
                outcome["result"] = "connected" if sock.connect_ex((p.dst_ip, p.dport)) == 0 else "refused or timed out"
                sock.close()
            elif p.proto == "udp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((p.src_ip, p.sport))
                sock.settimeout(2)
                dns = "DNS server" in (result.reason or "")
                sock.sendto(DNS_QUERY if dns else b"hostname", (p.dst_ip, p.dport))
                try:
                    outcome["result"] = f"answer {sock.recv(1500).decode(errors='replace')!r}"
                except OSError as exc:
                    outcome["result"] = f"no answer ({exc})"
                sock.close()
            else:
                ping = subprocess.run(["ping", "-c", "1", "-W", "2", p.dst_ip], capture_output=True, text=True)
                outcome["result"] = "echo reply" if ping.returncode == 0 else "no echo reply"
    except OSError as exc:
        outcome["result"] = f"probe failed: {exc}"
    finally:
        done.set()


def verify(result: TraceResult, tracer, cold: bool = False) -> TraceResult:
    """Send the packet, capture along the path, and mark each hop seen or not; sets result.verified.

    A Service picks its endpoint at random, so every possible pick is traced, all their paths
    are watched, and the one the kernel took is the one reported.
    """
    if not result.hops:
        result.verified = False
        return result
    variants = [result]
    if result.choices and result.choices > 1:
        p = result.packet
        variants = [
            tracer.trace(result.source, result.destination, p.proto, p.dport or None, choice=i)
            for i in range(result.choices)
        ]
    namespaces = sorted({h.netns for v in variants for h in (*v.hops, *v.reply)})
    if cold:
        _flush_neighbours(namespaces)
    points = sorted({pt for v in variants for pt in _watch_points(v, tracer)})
    source = result.hops[0].netns
    seen, outcome = _capture(points, source, result)
    if not any(s.netns == source for s in seen):
        # Not even the source saw its probe leave: a local failure of the probe, not a verdict
        # on the path (its outcome says what happened). It is sent once more.
        first = outcome.get("result", "not sent")
        seen, outcome = _capture(points, source, result)
        result.notes.append(f"the first probe never left {result.source} ({first}); it was sent again")
    best = None
    for v in variants:
        score = _mark(v, tracer, seen, cold)
        if best is None or score > best[0]:
            best = (score, v)
    chosen = best[1]
    if chosen is not result:
        result.hops, result.reply = chosen.hops, chosen.reply
        result.verdict, result.reason, result.reply_verdict = chosen.verdict, chosen.reason, chosen.reply_verdict
    if len(variants) > 1:
        index = variants.index(chosen)
        result.notes.append(f"the kernel picked endpoint {index + 1} of {len(variants)} for this connection")
    result.verified = best[0][0]
    result.hops[0].notes.append(f"probe: {outcome.get('result', 'not sent')}")
    return result


def _flush_neighbours(namespaces: list[str]) -> None:
    for ns in namespaces:
        for state in ("reachable", "stale", "delay", "probe"):
            subprocess.run(["ip", "-n", ns, "neigh", "flush", "nud", state], capture_output=True)


def _capture(points: list[tuple[str, str]], src_netns: str, result: TraceResult) -> tuple[list[Seen], dict]:
    sockets = {}
    for ns, ifname in points:
        sock = _open(ns, ifname)
        if sock is not None:
            sockets[sock.fileno()] = (sock, ns, ifname)
    seen: list[Seen] = []
    done = threading.Event()
    outcome: dict = {}
    thread = threading.Thread(target=_probe, args=(result, src_netns, done, outcome), daemon=True)
    thread.start()
    deadline = None
    try:
        while True:
            if done.is_set() and deadline is None:
                deadline = time.monotonic() + CAPTURE_AFTER
            if deadline is not None and time.monotonic() > deadline:
                break
            ready, _, _ = select.select(list(sockets), [], [], 0.05)
            for fd in ready:
                sock, ns, ifname = sockets[fd]
                with contextlib.suppress(BlockingIOError):
                    while True:
                        frame, _ = sock.recvfrom(65535)
                        decoded = _decode(frame, ns, ifname)
                        if decoded is not None:
                            seen.append(decoded)
    finally:
        for sock, _, _ in sockets.values():
            sock.close()
        thread.join(timeout=5)
    return seen, outcome


def _mark(result: TraceResult, tracer, seen: list[Seen], cold: bool) -> tuple[bool, int]:
    """Mark every hop of one predicted path seen or not; (all seen, how many seen)."""
    ok = True
    count = 0
    for path in (result.hops, result.reply):
        diverged = False  # the kernel took another equal-cost member: MACs downstream differ
        for i, hop in enumerate(path):
            hop.captured = []
            last = i == len(path) - 1
            iface = ((hop.in_if if last and hop.in_if else hop.out_if) or "").split("/")[-1]
            here = [s for s in seen if s.netns == hop.netns and s.ifname == iface]
            if cold:
                hop.captured += [s.describe() for s in here if s.arp]
            if i == 0 and hop.out_if in (None, "lo"):  # delivered locally: nothing crosses a link
                hop.observed = None
                continue
            encapsulated = bool(hop.encap) and not (last and hop.decap)
            match = [s for s in here if _matches(hop, s, encapsulated)]
            if not match:
                alts = [
                    s
                    for (ns, ifn) in _alternatives(path, i, tracer)
                    for s in seen
                    if s.netns == ns and s.ifname == ifn and _matches(hop, s, encapsulated)
                ]
                if alts:
                    diverged = True
                    member, predicted = _member_taken(path, i, alts[0], tracer), _member_predicted(path, i)
                    if predicted is not None and predicted != member:
                        # The trace named the member the kernel's hash picks: another one is a difference.
                        hop.observed = False
                        hop.captured.append(f"via ECMP member {member}, predicted {predicted}: {alts[0].describe()}")
                        continue
                    hop.observed = True
                    count += 1
                    hop.captured.append(f"via ECMP member {member}: {alts[0].describe()}")
                    continue
            hop.observed = bool(match)
            if not match:
                continue
            count += 1
            hop.captured.append(match[0].describe())
            p = hop.packet
            ecmp_here = bool(_ecmp_members(hop, tracer)) or bool(_alternatives(path, i, tracer))
            if (
                p is not None
                and p.src_mac
                and not ecmp_here  # an equal-cost choice changes the next hop's MAC, not the path's sense
                and not diverged
                and (match[0].src_mac, match[0].dst_mac) != (p.src_mac, p.dst_mac)
            ):
                hop.captured.append(
                    f"differs: MACs {match[0].src_mac} -> {match[0].dst_mac}, predicted {p.src_mac} -> {p.dst_mac}"
                )
                ok = False
        # A switch on the link the kernel did not choose is not crossed; when the packet is seen
        # at the next router, it went over the chosen member's link instead.
        for i, hop in enumerate(path):
            if hop.kind != "switch" or hop.observed is not False:
                continue
            nxt = next((h for h in path[i + 1 :] if h.kind != "switch"), None)
            if nxt is not None and nxt.observed and any(h.route and h.route.get("ecmp") for h in path[:i]):
                hop.observed = True
                hop.captured.append("crossed the link of the equal-cost member the kernel chose instead")
                count += 1
    ok = ok and all(h.observed is not False for h in (*result.hops, *result.reply))  # ok: no header differed
    return (ok, count)

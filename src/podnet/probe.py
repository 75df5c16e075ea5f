"""``podnet probe``: every source pod to every destination pod, for real, as a truth table.

Each probe is one socket opened inside the source pod's namespace (a socket stays in the
namespace it was created in), so hundreds of probes run at once from one thread: TCP is a
non-blocking ``connect`` to the destination pod's address, UDP a ``hostname`` datagram that
netexec answers (resent every quarter second). All probes share one deadline, so the whole
matrix takes about one timeout however large it is.

A probe *reached* its destination when the connection was accepted or answered, and also when it
was refused (a TCP reset, an ICMP port unreachable): the network let the packet through and
nothing listened. Policies drop, so a denied probe times out.

Each probe binds its own source port, taken from a cursor kept in the cluster's state
directory, so that two runs never reuse a flow (protocol, addresses and ports) that conntrack
still remembers: a UDP flow allowed a few seconds earlier would otherwise pass as a reply of an
established connection even after a policy forbade it.

``--model`` computes the expected matrix from the policies alone (:func:`podnet.plan.policy.verdict`)
and marks every cell where the kernel disagrees.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import random
import re
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from podnet import fdlimit
from podnet.errors import UsageError
from podnet.kernel import netns
from podnet.plan import policy
from podnet.plan.system import DNS_POD
from podnet.plan.topology import PodInfo, Topology

DEFAULT_TIMEOUT = 1.5  # seconds: a namespace round trip takes well under a millisecond
UDP_RESEND = 0.25
PORTS = range(32768, 61000)  # source ports, the kernel's default ephemeral range
CURSOR = "probe-port"
REACHED = ("connected", "answered", "refused")


# --- selectors ------------------------------------------------------------------------------

_TERM = re.compile(
    r"^\s*(?:(?P<neg>!)\s*(?P<absent>[^\s=!(),]+)"
    r"|(?P<key>[^\s=!(),]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!(),]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


def parse_selector(text: str) -> Callable[[PodInfo], bool]:
    """A pod filter from ``--from``/``--to``: comma-separated terms, all of which must hold.

    A term is ``NS/POD`` (shell wildcards allowed: ``x/*``, ``*/a``), or a label requirement as
    kubectl writes them: ``key=value``, ``key!=value``, ``key in (a,b)``, ``key notin (a)``,
    ``key`` (exists), ``!key`` (does not exist).
    """
    tests: list[Callable[[PodInfo], bool]] = []
    for term in re.split(r",(?![^()]*\))", text):
        term = term.strip()
        if not term:
            raise UsageError(f"selector {text!r}: an empty term")
        if "/" in term and not re.search(r"[=!()]|\s(in|notin)\s", term):
            tests.append(lambda p, pattern=term: fnmatch.fnmatchcase(p.key, pattern))
            continue
        m = _TERM.match(term)
        if m is None:
            raise UsageError(
                f"selector {text!r}: cannot read {term!r} (expected NS/POD, key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key)"
            )
        if m["absent"]:
            tests.append(lambda p, k=m["absent"]: k not in p.labels)
        elif m["op"] in ("=", "=="):
            tests.append(lambda p, k=m["key"], v=m["value"]: p.labels.get(k) == v)
        elif m["op"] == "!=":
            tests.append(lambda p, k=m["key"], v=m["value"]: p.labels.get(k) != v)
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            if m["setop"] == "in":
                tests.append(lambda p, k=m["key"], vs=values: p.labels.get(k) in vs)
            else:
                tests.append(lambda p, k=m["key"], vs=values: p.labels.get(k) not in vs)
        else:
            tests.append(lambda p, k=m["key"]: k in p.labels)
    return lambda pod: all(t(pod) for t in tests)


def select_pods(topo: Topology, selector: str | None) -> list[PodInfo]:
    """The pods a selector picks, by key; without one every pod but the cluster DNS server's."""
    pods = sorted(topo.pods.values(), key=lambda p: (p.namespace, p.name))
    if selector is None:
        return [p for p in pods if p.key != DNS_POD]
    test = parse_selector(selector)
    return [p for p in pods if test(p)]


# --- the probes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    src: PodInfo
    dst: PodInfo
    port: int
    protocol: str  # TCP | UDP


class PortCursor:
    """Source ports handed out in turn, remembered across runs in ``path`` (when given)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        start = None
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                start = int(path.read_text())
        self.next = start if start in PORTS else random.choice(PORTS)

    def take(self) -> int:
        port = self.next
        self.next = PORTS.start if self.next + 1 >= PORTS.stop else self.next + 1
        return port

    def save(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(str(self.next))
                tmp.replace(self.path)


def _batch_size(wanted: int) -> int:
    """How many of ``wanted`` checks may be in flight at once: a socket each, within the open-files limit."""
    fdlimit.raise_to_hard()
    soft = fdlimit.available()
    return wanted if soft is None else max(64, soft - 128)


def run_checks(checks: list[Check], timeout: float = DEFAULT_TIMEOUT, cursor: PortCursor | None = None) -> list[str]:
    """Run every check at once; the outcome of each, in order: connected, answered, refused,
    timeout, unreachable, or ``error: ...``."""
    cursor = cursor or PortCursor(None)
    batch = _batch_size(len(checks))
    outcomes: list[str] = []
    for start in range(0, len(checks), batch):
        outcomes += _run_batch(checks[start : start + batch], timeout, cursor)
    cursor.save()
    return outcomes


def _open(check: Check, cursor: PortCursor) -> socket.socket:
    kind = socket.SOCK_STREAM if check.protocol == "TCP" else socket.SOCK_DGRAM
    with netns.entered(check.src.netns):
        sock = socket.socket(socket.AF_INET, kind)
    sock.setblocking(False)
    if kind == socket.SOCK_STREAM:
        # Closing resets the connection: no TIME_WAIT, and the source port is free at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for _ in range(64):
        try:
            sock.bind(("0.0.0.0", cursor.take()))
            return sock
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    sock.bind(("0.0.0.0", 0))
    return sock


def _run_batch(checks: list[Check], timeout: float, cursor: PortCursor) -> list[str]:
    outcomes: list[str | None] = [None] * len(checks)
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    udp: list[int] = []
    try:
        for i, check in enumerate(checks):
            try:
                sock = _open(check, cursor)
            except OSError as exc:
                outcomes[i] = f"error: {exc.strerror or exc}"
                continue
            socks[i] = sock
            address = (check.dst.ip, check.port)
            if check.protocol == "TCP":
                code = sock.connect_ex(address)
                if code == 0:
                    outcomes[i] = "connected"
                elif code != errno.EINPROGRESS:
                    outcomes[i] = _from_errno(code)
                else:
                    sel.register(sock, selectors.EVENT_WRITE, i)
            else:
                try:
                    sock.connect(address)
                    sock.send(b"hostname")
                except OSError as exc:
                    outcomes[i] = _from_errno(exc.errno)
                    continue
                sel.register(sock, selectors.EVENT_READ, i)
                udp.append(i)
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + UDP_RESEND
        while sel.get_map():
            now = time.monotonic()
            # Past the deadline, one last look without waiting: what arrived while this
            # process was not scheduled (a busy machine) still counts.
            final = now >= deadline
            if not final and now >= resend:
                for i in udp:
                    if outcomes[i] is None:
                        with contextlib.suppress(OSError):
                            socks[i].send(b"hostname")
                resend = now + UDP_RESEND
            for key, _ in sel.select(0 if final else min(deadline, resend) - now):
                i = key.data
                sock = socks[i]
                if checks[i].protocol == "TCP":
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    outcomes[i] = "connected" if code == 0 else _from_errno(code)
                else:
                    try:
                        sock.recv(512)
                        outcomes[i] = "answered"
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        outcomes[i] = _from_errno(exc.errno)
                sel.unregister(sock)
            if final:
                break
    finally:
        sel.close()
        for sock in socks.values():
            sock.close()
    return [o or "timeout" for o in outcomes]


def _from_errno(code: int | None) -> str:
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if code in (errno.ETIMEDOUT,):
        return "timeout"
    return f"error: {os.strerror(code) if code else 'unknown'}"


# --- the use case ---------------------------------------------------------------------------


@dataclass
class Matrix:
    cluster: str
    port: int
    protocol: str
    sources: list[str]
    targets: list[str]
    results: list[dict] = field(default_factory=list)  # {"from", "to", "allowed", "outcome"[, "expected", "reason"]}
    model: bool = False
    seconds: float = 0.0

    @property
    def disagreements(self) -> list[dict]:
        return [r for r in self.results if self.model and r["allowed"] != r["expected"]]

    def cell(self, src: str, dst: str) -> dict:
        return next(r for r in self.results if r["from"] == src and r["to"] == dst)

    def to_json(self) -> dict:
        data = {"cluster": self.cluster, "port": self.port, "protocol": self.protocol, "results": self.results}
        if self.model:
            data["disagreements"] = len(self.disagreements)
        return data


def matrices(
    topo: Topology,
    checks: Iterable[tuple[int, str]],
    sources: list[PodInfo],
    targets: list[PodInfo],
    model: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    cursor: PortCursor | None = None,
) -> list[Matrix]:
    """One matrix per (port, protocol), every probe of every matrix run at once."""
    wanted = [(port, protocol.upper()) for port, protocol in checks]
    runs = [Check(s, d, port, protocol) for port, protocol in wanted for s in sources for d in targets]
    started = time.monotonic()
    outcomes = run_checks(runs, timeout, cursor)
    seconds = time.monotonic() - started
    out = {
        (port, protocol): Matrix(
            topo.cluster,
            port,
            protocol,
            [p.key for p in sources],
            [p.key for p in targets],
            model=model,
            seconds=seconds,
        )
        for port, protocol in wanted
    }
    for check, outcome in zip(runs, outcomes, strict=True):
        row: dict = {"from": check.src.key, "to": check.dst.key, "allowed": outcome in REACHED, "outcome": outcome}
        if model:
            v = policy.verdict(topo, check.src, check.dst, check.protocol, check.port)
            row["expected"] = v.allowed
            row["reason"] = v.reason
        out[(check.port, check.protocol)].results.append(row)
    return list(out.values())


def probe(
    cluster: str,
    port: int = 80,
    protocol: str = "TCP",
    sources: str | None = None,
    targets: str | None = None,
    model: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Matrix:
    """The use case behind ``podnet probe``: one port and protocol."""
    return probe_cluster(cluster, [(port, protocol)], sources, targets, model, timeout)[0]


def probe_cluster(
    cluster: str,
    checks: list[tuple[int, str]],
    sources: str | None = None,
    targets: str | None = None,
    model: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Matrix]:
    """Probe a running cluster on several ports and protocols at once: one matrix each."""
    from podnet.cluster import load_applied
    from podnet.store import cluster_dir

    for port, protocol in checks:
        if not 1 <= port <= 65535:
            raise UsageError(f"port {port} is out of range (expected 1-65535)")
        if protocol.upper() not in ("TCP", "UDP"):
            raise UsageError(f"protocol {protocol!r} is not TCP or UDP")
    if timeout <= 0:
        raise UsageError("the timeout must be positive")
    _, p = load_applied(cluster)
    topo = p.topology
    srcs, dsts = select_pods(topo, sources), select_pods(topo, targets)
    for what, chosen, text in (("source", srcs, sources), ("destination", dsts, targets)):
        if not chosen:
            raise UsageError(f"no {what} pod matches {text!r}" if text else f"cluster {cluster!r} has no {what} pods")
    missing = sorted({pod.key for pod in srcs if not netns.exists(pod.netns)})
    if missing:
        raise UsageError(f"pods without a namespace (run 'podnet up' first): {', '.join(missing)}")
    cursor = PortCursor(cluster_dir(cluster) / CURSOR)
    return matrices(topo, checks, srcs, dsts, model, timeout, cursor)


def render(matrix: Matrix, console) -> None:
    """The truth table: a row per source, a column per destination; ``.`` reached, ``X`` denied;
    with ``--model``, ``!`` after a cell where the kernel disagrees with the policies."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(f"{matrix.protocol}/{matrix.port}", style="bold")
    for dst in matrix.targets:
        table.add_column(dst, justify="center")
    cells = {(r["from"], r["to"]): r for r in matrix.results}
    for src in matrix.sources:
        row = []
        for dst in matrix.targets:
            r = cells[(src, dst)]
            mark = "." if r["allowed"] else "X"
            if matrix.model and r["allowed"] != r["expected"]:
                row.append(f"[bold red]{mark}![/]")
            else:
                row.append(mark if r["allowed"] else f"[yellow]{mark}[/]")
        table.add_row(src, *row)
    console.print(table)
    allowed = sum(r["allowed"] for r in matrix.results)
    console.print(
        f"{len(matrix.results)} probes in {matrix.seconds:.1f} s: {allowed} reached (.), "
        f"{len(matrix.results) - allowed} denied (X)"
    )
    if matrix.model:
        wrong = matrix.disagreements
        if not wrong:
            console.print("[green]the kernel agrees with the policies on every cell[/]")
        else:
            console.print(f"[bold red]{len(wrong)} cells disagree with the policies (marked !):[/]")
            for r in wrong:
                got = "reached" if r["allowed"] else "denied"
                console.print(f"  {r['from']} -> {r['to']}: {got} ({r['outcome']}); the policies say: {r['reason']}")

"""The cluster DNS daemon on the real kernel: asked with dig from inside its namespace.

Every namespace here is this module's own (``podnet_dnstest<hex>_*``); the addresses of
the forwarding test (10.250.0.0/30) exist only on a veth pair between two of them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet.kernel import netns
from podnet.plan.dns import DnsEndpoint, DnsPod, DnsPort, DnsService, digest, zone
from podnet.runtime.dns import DAEMON_ARG, READY, write_config
from podnet.runtime.process import cmdline

pytestmark = pytest.mark.root

TAG = uuid.uuid4().hex[:8]
CLUSTER = f"dnstest{TAG}"
PREFIX = f"podnet_{CLUSTER}_"
READY_TIMEOUT = 30.0

SERVICES = [
    DnsService(
        "shop",
        "web",
        "10.96.0.20",
        (DnsPort("http", "TCP", 80), DnsPort(None, "TCP", 8080)),
        (DnsEndpoint("web-1", "10.244.0.2"),),
    ),
    DnsService("shop", "db", None, (DnsPort("pg", "TCP", 5432),), (DnsEndpoint("db-0", "10.244.1.3"),)),
]
PODS = [DnsPod("shop", "web-1", "10.244.0.2"), DnsPod("shop", "db-0", "10.244.1.3")]


def our_processes() -> list[int]:
    return [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and DAEMON_ARG in (argv := cmdline(int(p))) and CLUSTER in argv
    ]


def our_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


@dataclass
class Server:
    """One dns-daemon serving ``dns.json`` in ``state_dir``."""

    state_dir: Path
    ns: str
    proc: subprocess.Popen | None = None

    def configure(self, zone_data: dict, ns: str | None = None) -> str:
        """Write dns.json; returns the nonce the daemon echoes once it has read it."""
        return write_config(self.state_dir, ns or self.ns, zone_data, digest(zone_data))

    def start(self, zone_data: dict) -> dict:
        nonce = self.configure(zone_data)
        argv = [sys.executable, "-m", "podnet", DAEMON_ARG, "--cluster", CLUSTER, "--state-dir", str(self.state_dir)]
        with open(self.state_dir / "dns.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self.wait_ready(nonce)

    def reload(self, zone_data: dict, ns: str | None = None) -> dict:
        nonce = self.configure(zone_data, ns)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_ready(nonce)

    def wait_ready(self, nonce: str) -> dict:
        """Poll the ready file (the daemon's only signal) until it echoes this configuration's nonce."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                ready = json.loads((self.state_dir / READY).read_text())
            except (OSError, ValueError):
                ready = None
            if ready and ready["pid"] == self.proc.pid and ready["nonce"] == nonce:
                return ready
            if self.proc.poll() is not None:
                pytest.fail(f"dns-daemon exited {self.proc.returncode}: {self.log()}")
            time.sleep(0.01)
        pytest.fail(f"dns-daemon did not read its configuration {nonce} in {READY_TIMEOUT}s: {self.log()}")

    def log(self) -> str:
        return (self.state_dir / "dns.log").read_text(errors="replace")

    def sockets(self) -> set[str]:
        """The socket inodes the daemon holds open (to see that a reload reopened none)."""
        assert self.proc is not None
        fds = Path(f"/proc/{self.proc.pid}/fd")
        return {t for fd in fds.iterdir() if (t := os.readlink(fd)).startswith("socket:")}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Lab:
    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)

    def netns(self, suffix: str) -> str:
        name = PREFIX + suffix
        netns.create(name)
        self.namespaces.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def server(self, ns: str) -> Server:
        state = self.tmp / f"state-{len(self.servers)}"
        state.mkdir()
        s = Server(state, ns)
        self.servers.append(s)
        return s


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        for s in made.servers:
            s.stop()
        for name in made.namespaces:
            netns.delete(name)
    assert our_namespaces() == [], "namespaces left behind"
    assert our_processes() == [], "dns-daemon processes left behind"
    for s in made.servers:
        assert not (s.state_dir / READY).exists(), "the daemon did not remove its ready file on SIGTERM"


@dataclass
class Dig:
    status: str
    flags: set[str]
    answer: list[tuple[str, str, str]]  # (name, type, data)
    authority: list[tuple[str, str, str]]
    text: str


def dig(ns: str, *args: str, server: str = "127.0.0.1") -> Dig:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "dig", f"@{server}", "+time=3", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    text = proc.stdout
    status = re.search(r"status: (\w+)", text)
    assert proc.returncode == 0 and status, f"dig {' '.join(args)} failed: {proc.returncode}\n{text}{proc.stderr}"
    flags = set(re.search(r";; flags: ([\w ]*);", text).group(1).split())  # type: ignore[union-attr]
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in text.splitlines():
        if m := re.match(r";; (\w+) SECTION:", line):
            current = m.group(1)
        elif not line.strip() or line.startswith(";"):
            if not line.strip():
                current = None
        elif current in sections:
            name, _ttl, _cls, kind, data = line.split(None, 4)
            sections[current].append((name, kind, data))
    return Dig(status.group(1), flags, sorted(sections["ANSWER"]), sections["AUTHORITY"], text)


def test_answers_every_record_kind(lab: Lab) -> None:
    ns = lab.netns("srv")
    server = lab.server(ns)
    ready = server.start(zone("cluster.local", SERVICES, PODS, []))
    inode = os.stat(netns.path(ns)).st_ino
    assert ready["errors"] == [] and ready["digest"] == digest(zone("cluster.local", SERVICES, PODS, []))
    assert sorted(ready["listening"], key=lambda x: x["protocol"]) == [
        {"netns": ns, "port": 53, "protocol": "TCP", "inode": inode},
        {"netns": ns, "port": 53, "protocol": "UDP", "inode": inode},
    ]

    r = dig(ns, "web.shop.svc.cluster.local", "A")
    assert (r.status, "aa" in r.flags, "ra" in r.flags) == ("NOERROR", True, False)
    assert r.answer == [("web.shop.svc.cluster.local.", "A", "10.96.0.20")]
    assert dig(ns, "db.shop.svc.cluster.local").answer == [("db.shop.svc.cluster.local.", "A", "10.244.1.3")]
    assert dig(ns, "db-0.db.shop.svc.cluster.local").answer == [("db-0.db.shop.svc.cluster.local.", "A", "10.244.1.3")]
    assert dig(ns, "10-244-0-2.shop.pod.cluster.local").answer == [
        ("10-244-0-2.shop.pod.cluster.local.", "A", "10.244.0.2")
    ]
    assert dig(ns, "_http._tcp.web.shop.svc.cluster.local", "SRV").answer == [
        ("_http._tcp.web.shop.svc.cluster.local.", "SRV", "0 100 80 web.shop.svc.cluster.local.")
    ]
    assert dig(ns, "_pg._tcp.db.shop.svc.cluster.local", "SRV").answer == [
        ("_pg._tcp.db.shop.svc.cluster.local.", "SRV", "0 100 5432 db-0.db.shop.svc.cluster.local.")
    ]
    assert dig(ns, "-x", "10.96.0.20").answer == [("20.0.96.10.in-addr.arpa.", "PTR", "web.shop.svc.cluster.local.")]
    assert dig(ns, "-x", "10.244.1.3").answer == [
        ("3.1.244.10.in-addr.arpa.", "PTR", "10-244-1-3.shop.pod.cluster.local.")
    ]


def test_negative_answers_and_no_open_resolver(lab: Lab) -> None:
    ns = lab.netns("neg")
    lab.server(ns).start(zone("cluster.local", SERVICES, PODS, []))
    nodata = dig(ns, "web.shop.svc.cluster.local", "AAAA")
    assert (nodata.status, "aa" in nodata.flags, nodata.answer) == ("NOERROR", True, [])
    assert [a[1] for a in nodata.authority] == ["SOA"]
    for name in ("nope.shop.svc.cluster.local", "web.other.svc.cluster.local", "example.com.shop.svc.cluster.local"):
        r = dig(ns, name)
        assert (r.status, "aa" in r.flags) == ("NXDOMAIN", True), name
    reverse = dig(ns, "-x", "10.244.9.9")
    assert (reverse.status, "aa" in reverse.flags) == ("NXDOMAIN", True)
    refused = dig(ns, "example.com")
    assert (refused.status, "aa" in refused.flags, "ra" in refused.flags) == ("REFUSED", False, False)


def test_tcp(lab: Lab) -> None:
    ns = lab.netns("tcp")
    many = DnsService("shop", "big", None, (), tuple(DnsEndpoint(f"p{i}", f"10.244.2.{i}") for i in range(1, 80)))
    lab.server(ns).start(zone("cluster.local", [*SERVICES, many], PODS, []))
    r = dig(ns, "+tcp", "web.shop.svc.cluster.local")
    assert r.answer == [("web.shop.svc.cluster.local.", "A", "10.96.0.20")]
    assert dig(ns, "+tcp", "nope.cluster.local").status == "NXDOMAIN"
    # 79 addresses do not fit a 512-byte datagram: truncated over UDP, complete over TCP
    truncated = dig(ns, "+noedns", "+ignore", "big.shop.svc.cluster.local")
    assert "tc" in truncated.flags and truncated.answer == []
    assert len(dig(ns, "+noedns", "big.shop.svc.cluster.local").answer) == 79  # dig retried over TCP itself
    assert len(dig(ns, "+tcp", "+noedns", "big.shop.svc.cluster.local").answer) == 79


def test_sighup_reload_swaps_records_keeping_the_sockets(lab: Lab) -> None:
    ns = lab.netns("hup")
    server = lab.server(ns)
    first = server.start(zone("cluster.local", SERVICES, PODS, []))
    assert dig(ns, "api.shop.svc.cluster.local").status == "NXDOMAIN"
    sockets = server.sockets()
    api = DnsService("shop", "api", "10.96.0.30", (DnsPort("grpc", "TCP", 9000),), ())
    second = server.reload(zone("cluster.local", [*SERVICES, api], PODS, []))
    assert second["digest"] != first["digest"] and second["listening"] == first["listening"]
    assert server.sockets() == sockets, "the reload reopened sockets"
    assert dig(ns, "api.shop.svc.cluster.local").answer == [("api.shop.svc.cluster.local.", "A", "10.96.0.30")]
    assert dig(ns, "_grpc._tcp.api.shop.svc.cluster.local", "SRV").answer == [
        ("_grpc._tcp.api.shop.svc.cluster.local.", "SRV", "0 100 9000 api.shop.svc.cluster.local.")
    ]
    # and a record that went away answers NXDOMAIN
    server.reload(zone("cluster.local", [api], PODS, []))
    assert dig(ns, "web.shop.svc.cluster.local").status == "NXDOMAIN"
    # a different namespace: the sockets move there
    other = lab.netns("hup2")
    moved = server.reload(zone("cluster.local", [api], PODS, []), ns=other)
    assert [x["netns"] for x in moved["listening"]] == [other, other]
    assert dig(other, "api.shop.svc.cluster.local").answer == [("api.shop.svc.cluster.local.", "A", "10.96.0.30")]
    # a configuration that cannot be served is reported, and the previous zone stays in service
    bad = {"domain": "cluster.local.", "records": [{"name": "x.cluster.local.", "type": "MX", "data": "y."}]}
    (server.state_dir / "dns.json").write_text(
        json.dumps({"digest": "bad", "nonce": "n-bad", "netns": other, "zone": bad})
    )
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    refused = server.wait_ready("n-bad")
    assert refused["errors"] and refused["digest"] == moved["digest"] and refused["listening"] == moved["listening"]
    assert dig(other, "api.shop.svc.cluster.local").answer == [("api.shop.svc.cluster.local.", "A", "10.96.0.30")]
    assert server.proc.poll() is None


def test_forwards_outside_names_to_the_upstream(lab: Lab) -> None:
    cluster_ns = lab.netns("fwd")
    upstream_ns = lab.netns("up")
    subprocess.run(
        ["ip", "-n", cluster_ns, "link", "add", "dnsv0", "type", "veth", "peer", "name", "dnsv1", "netns", upstream_ns],
        check=True,
    )
    for ns, dev, addr in ((cluster_ns, "dnsv0", "10.250.0.1/30"), (upstream_ns, "dnsv1", "10.250.0.2/30")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)

    # The upstream: a second daemon, authoritative for another domain.
    www = DnsService("site", "www", "192.0.2.80", (DnsPort("http", "TCP", 80),), ())
    big = DnsService("site", "big", None, (), tuple(DnsEndpoint(f"p{i}", f"192.0.2.{i}") for i in range(1, 80)))
    lab.server(upstream_ns).start(zone("example.test", [www, big], [], []))
    lab.server(cluster_ns).start(zone("cluster.local", SERVICES, PODS, ["10.250.0.2"]))

    inside = dig(cluster_ns, "web.shop.svc.cluster.local")
    assert (inside.answer, "aa" in inside.flags, "ra" in inside.flags) == (
        [("web.shop.svc.cluster.local.", "A", "10.96.0.20")],
        True,
        True,
    )
    forwarded = dig(cluster_ns, "www.site.svc.example.test")
    assert (forwarded.status, "ra" in forwarded.flags, "aa" in forwarded.flags) == ("NOERROR", True, False)
    assert forwarded.answer == [("www.site.svc.example.test.", "A", "192.0.2.80")]
    assert dig(cluster_ns, "+tcp", "_http._tcp.www.site.svc.example.test", "SRV").answer == [
        ("_http._tcp.www.site.svc.example.test.", "SRV", "0 100 80 www.site.svc.example.test.")
    ]
    assert dig(cluster_ns, "nope.example.test").status == "NXDOMAIN"  # the upstream's own answer, relayed
    assert dig(cluster_ns, "example.org").status == "REFUSED"  # ... and so is its refusal
    # truncated upstream over UDP: a TCP client gets the whole answer (we retry upstream over TCP)
    assert len(dig(cluster_ns, "+tcp", "+noedns", "big.site.svc.example.test").answer) == 79


def test_answers_from_the_address_it_was_asked_at(lab: Lab) -> None:
    """A VIP on the server's namespace (not its primary address): replies must come from it."""
    client_ns, server_ns = lab.netns("cli"), lab.netns("vip")
    subprocess.run(
        ["ip", "-n", client_ns, "link", "add", "dnsv0", "type", "veth", "peer", "name", "dnsv1", "netns", server_ns],
        check=True,
    )
    for ns, dev, addr in ((client_ns, "dnsv0", "10.250.0.1/30"), (server_ns, "dnsv1", "10.250.0.2/30")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    subprocess.run(["ip", "-n", server_ns, "addr", "add", "10.96.0.10/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "-n", client_ns, "route", "add", "10.96.0.10/32", "via", "10.250.0.2"], check=True)
    lab.server(server_ns).start(zone("cluster.local", SERVICES, PODS, []))
    for server in ("10.96.0.10", "10.250.0.2"):
        r = dig(client_ns, "web.shop.svc.cluster.local", server=server)
        assert r.answer == [("web.shop.svc.cluster.local.", "A", "10.96.0.20")], server
        assert f"SERVER: {server}#53" in r.text and "unexpected source" not in r.text


def test_unreachable_upstream_gives_servfail(lab: Lab) -> None:
    ns = lab.netns("dead")
    lab.server(ns).start(zone("cluster.local", SERVICES, PODS, ["127.0.0.1:5353"]))
    r = dig(ns, "+time=5", "example.com")
    assert r.status == "SERVFAIL"
    assert dig(ns, "web.shop.svc.cluster.local").answer == [("web.shop.svc.cluster.local.", "A", "10.96.0.20")]

"""VXLAN over ECMP on the real kernel (examples/racks.yaml): overlay flows spread over both spines,
each on the spine the trace predicted, and the trace's multipath hash is the kernel's."""

from __future__ import annotations

import contextlib
import select
import socket
import sys
from collections.abc import Iterator

import pytest

from podnet import cluster as usecases
from podnet.cluster import observe_cluster
from podnet.kernel import netns
from podnet.trace import Tracer, fib
from podnet.trace.verify import ETH_P_ALL, _decode
from tests.conftest import Cluster, example_cluster

pytestmark = pytest.mark.root

FLOWS = 40
FIRST_PORT = 42000
SPINES = ("spine-1", "spine-2")
# 40 TCP connections from one pod, source ports FIRST_PORT.., each reset at close (no TIME_WAIT).
CONNECT = """
import socket, struct, sys
dst, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for sport in range(first, first + n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.bind(("0.0.0.0", sport))
    s.settimeout(3)
    s.connect((dst, 80))
    s.sendall(b"GET /hostname HTTP/1.0\\r\\n\\r\\n")
    s.recv(100)
    s.close()
"""


@pytest.fixture(scope="module")
def racks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "racks.yaml", "ecmp") as c:
        yield c


def _observed_tracer(c: Cluster) -> Tracer:
    _, p = usecases.load_applied(c.name)
    observed, _ = observe_cluster(c.name, p.state)
    return Tracer(observed, p.topology, p.state, p.dns_config, mode="observed")


def _rx_packets(c: Cluster, router: str) -> int:
    return int(c.exec(router, "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)


@contextlib.contextmanager
def _capture(namespaces: dict[str, str]) -> Iterator[list]:
    """Raw sockets on eth0 of each named namespace; what they saw, decoded, once the block ends."""
    sockets = {}
    for name, ns in namespaces.items():
        with netns.entered(ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind(("eth0", 0))
        sock.setblocking(False)
        sockets[sock.fileno()] = (sock, name)
    seen: list = []
    try:
        yield seen
        while True:  # drain: the frames are queued on the sockets already
            ready, _, _ = select.select(list(sockets), [], [], 0.2)
            if not ready:
                break
            for fd in ready:
                sock, name = sockets[fd]
                with contextlib.suppress(BlockingIOError):
                    while True:
                        decoded = _decode(sock.recv(65535), name, "eth0")
                        if decoded is not None and decoded.outer is not None:
                            seen.append(decoded)
    finally:
        for sock, _ in sockets.values():
            sock.close()


def test_overlay_flows_spread_over_both_spines_each_on_the_predicted_one(racks: Cluster) -> None:
    tracer = _observed_tracer(racks)
    web2 = racks.pod("shop/web-2")["ip"]
    predicted = {
        sport: tracer.trace("shop/web-1", "shop/web-2", port=80, sport=sport).hops[3].name
        for sport in range(FIRST_PORT, FIRST_PORT + FLOWS)
    }
    assert all(
        tracer.trace("shop/web-1", "shop/web-2", sport=s).hops[1].route["underlay"]["ecmp_predicted"] for s in predicted
    )
    before = {s: _rx_packets(racks, s) for s in SPINES}
    spines = {s: tracer.topo.routers[s].netns for s in SPINES}
    with _capture(spines) as seen:
        proc = racks.exec("shop/web-1", sys.executable, "-c", CONNECT, web2, str(FIRST_PORT), str(FLOWS), timeout=60)
        assert proc.returncode == 0, proc.stderr
    grew = {s: _rx_packets(racks, s) - before[s] for s in SPINES}
    assert all(n >= 5 for n in grew.values()), grew  # packets crossed both spines

    taken: dict[int, set[str]] = {}
    for frame in seen:
        if frame.src_ip == "10.244.0.2" and frame.dport == 80 and FIRST_PORT <= frame.sport < FIRST_PORT + FLOWS:
            taken.setdefault(frame.sport, set()).add(frame.netns)
    assert set(taken) == set(predicted), "every flow was captured on a spine"
    assert {sport: spines for sport, spines in taken.items()} == {s: {p} for s, p in predicted.items()}
    assert set(predicted.values()) == set(SPINES)


def test_the_trace_hash_is_the_kernels_for_forwarded_packets(racks: Cluster) -> None:
    # `ip route get ... iif` routes a packet as if it arrived on that device: the kernel's own
    # answer for forwarded traffic (pod egress through node-2's two default routes).
    tracer = _observed_tracer(racks)
    node2 = tracer.state.namespaces[tracer.topo.nodes["node-2"].netns]
    route = next(r for r in node2.routes.values() if r.dst == "0.0.0.0/0")
    assert len(route.nexthops) == 2
    web2 = racks.pod("shop/web-2")["ip"]
    for sport in range(41000, 41100):
        out = racks.exec(
            "node-2", "ip", "route", "get", "203.0.113.10", "from", web2, "iif", "cni0",
            "ipproto", "tcp", "sport", str(sport), "dport", "80",
        ).stdout  # fmt: skip
        decision = fib.lookup(node2, "203.0.113.10", (web2, "203.0.113.10", "tcp", sport, 80), forwarded=True)
        assert decision.predicted and f"via {decision.nexthop.gateway} " in out, (sport, out)

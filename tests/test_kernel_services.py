"""Services on the real kernel, observed with real clients (examples/services.yaml)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from podnet import cluster as usecases
from podnet.runtime import netexec
from tests import sctp
from tests.conftest import (
    Cluster,
    assert_observed_equals_plan,
    cluster_yaml,
    example_cluster,
    run_cli,
    status_json,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "services.yaml", "s") as c:
        yield c


def service(c: Cluster, name: str) -> dict:
    return next(s for s in status_json(c.name)["services"] if s["name"] == name)


def node_ip(c: Cluster, node: str) -> str:
    return next(n["underlay_ip"] for n in c.status()["nodes"] if n["name"] == node)


def hits(c: Cluster, source: str, url: str, n: int) -> Counter:
    return Counter(c.curl(source, url) for _ in range(n))


def test_observed_equals_plan_with_services(svc: Cluster) -> None:
    assert_observed_equals_plan(svc.name)
    assert run_cli("up", str(svc.file), "-o", "json", check=True).stdout.count('"changes": 0') == 1


def test_status_lists_services(svc: Cluster) -> None:
    web = service(svc, "web")
    assert web["type"] == "ClusterIP" and web["cluster_ip"].startswith("10.96.")
    http = next(p for p in web["ports"] if p["name"] == "http")
    assert sorted(http["endpoint_pods"]) == ["shop/web-1", "shop/web-2", "shop/web-3"]
    assert all(e.endswith(":8080") for e in http["endpoints"])  # targetPort by name
    assert service(svc, "web-np")["ports"][0]["node_port"] == 30080
    assert service(svc, "web-headless")["cluster_ip"] is None
    assert service(svc, "nobody")["ports"][0]["endpoints"] == []


def test_cluster_ip_reaches_every_endpoint(svc: Cluster) -> None:
    vip = service(svc, "web")["cluster_ip"]
    seen = hits(svc, "shop/shell", f"http://{vip}/hostname", 30)
    assert set(seen) == {"web-1", "web-2", "web-3"}, seen
    # Pod-to-service keeps the client's address: DNAT only, no SNAT.
    shell_ip = svc.pod("shop/shell")["ip"]
    assert svc.curl("shop/shell", f"http://{vip}/clientip").split(":")[0] == shell_ip


def test_udp_service_by_named_target_port(svc: Cluster) -> None:
    vip = service(svc, "web")["cluster_ip"]
    answers = {svc.udp("shop/shell", vip, 53, "hostname") for _ in range(12)}
    assert answers <= {"web-1", "web-2", "web-3"} and answers


def test_session_affinity_keeps_one_endpoint(svc: Cluster) -> None:
    vip = service(svc, "web-sticky")["cluster_ip"]
    seen = hits(svc, "shop/shell", f"http://{vip}/hostname", 15)
    assert len(seen) == 1, seen


def test_node_port_from_the_external_host_cluster_policy_masquerades(svc: Cluster) -> None:
    seen = Counter()
    clients = set()
    for node in ("node-1", "node-2"):
        url = f"http://{node_ip(svc, node)}:30080"
        seen.update(hits(svc, "client", f"{url}/hostname", 12))
        clients.add(svc.curl("client", f"{url}/clientip").split(":")[0])
    assert set(seen) == {"web-1", "web-2", "web-3"}, seen  # any node, any endpoint
    assert "203.0.113.10" not in clients  # Cluster policy: masqueraded by the node


def test_node_port_local_policy_keeps_client_address_and_stays_local(svc: Cluster) -> None:
    url1, url2 = (f"http://{node_ip(svc, n)}:30081" for n in ("node-1", "node-2"))
    assert set(hits(svc, "client", f"{url1}/hostname", 8)) == {"web-1"}
    assert set(hits(svc, "client", f"{url2}/hostname", 12)) <= {"web-2", "web-3"}
    assert svc.curl("client", f"{url2}/clientip").split(":")[0] == "203.0.113.10"


def test_hairpin_a_pod_reaching_itself_through_its_service(svc: Cluster) -> None:
    vip = service(svc, "loner")["cluster_ip"]
    assert svc.curl("shop/loner", f"http://{vip}/hostname") == "loner"
    # The reply must come back through the node, so the source is rewritten to the node's side.
    assert svc.curl("shop/loner", f"http://{vip}/clientip").split(":")[0] != svc.pod("shop/loner")["ip"]


def test_service_without_endpoints_rejects_at_once(svc: Cluster) -> None:
    vip = service(svc, "nobody")["cluster_ip"]
    proc = svc.exec("shop/shell", "curl", "-sv", "--max-time", "5", f"http://{vip}/")
    assert proc.returncode == 7  # "failed to connect": not timed out (28)
    assert "Connection refused" in proc.stderr  # a reset; not "Network is unreachable"


def test_sctp_service_and_node_port_dnat_to_the_endpoints(svc: Cluster) -> None:
    """No SCTP sockets on this kernel: raw INITs, caught by raw sockets in the endpoints."""
    vip = service(svc, "signal")["cluster_ip"]
    node_port = service(svc, "signal")["ports"][0]["node_port"]
    web = {name: svc.pod(f"shop/{name}")["ip"] for name in ("web-1", "web-2", "web-3")}
    for i, (source, dst, port) in enumerate(
        [
            ("shop/shell", vip, 9000),
            ("client", node_ip(svc, "node-1"), node_port),
            ("client", node_ip(svc, "node-2"), node_port),
        ]
    ):
        receivers = [sctp.Receiver(usecases.exec_target(svc.name, f"shop/{n}")) for n in web]
        try:
            sctp.send_init(usecases.exec_target(svc.name, source), dst, port, 42_000 + i)
            got = next((g for r in receivers if (g := r.wait_for(42_000 + i, within=0.5))), None)
        finally:
            for r in receivers:
                r.sock.close()
        assert got is not None and got.dst in web.values() and got.dport == 9000, (source, dst, got)
        if source == "client":
            assert got.src != "203.0.113.10"  # NodePort, externalTrafficPolicy Cluster: masqueraded


def test_status_says_once_whether_sctp_is_served(svc: Cluster) -> None:
    data = status_json(svc.name)
    web = [p for p in data["pods"] if p["name"].startswith("web-")]
    assert all(p["ready"] for p in web), web
    reason = netexec.sctp_unsupported()
    if reason is None:  # a kernel with SCTP sockets: netexec serves the port like any other
        assert all(p["not_served"] == [] for p in web) and data["notes"] == []
        return
    assert all(p["not_served"] == ["9000/SCTP"] for p in web), web
    ports = ", ".join(f"shop/web-{i} 9000/SCTP" for i in (1, 2, 3))
    assert data["notes"] == [f"not served: {ports}: {reason}"]
    assert reason in run_cli("status", "-c", svc.name, check=True).stdout.replace("\n", "")


def test_nftables_ruleset_is_podnet_s_own_table(svc: Cluster) -> None:
    ruleset = svc.exec("node-1", "nft", "list", "ruleset").stdout
    assert "table ip podnet" in ruleset
    assert "vmap @services" in ruleset and "map @endpoints-tcp" in ruleset


UDP_FIXED_PORT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40000))
s.settimeout(2)
s.sendto(b"hostname", (sys.argv[1], int(sys.argv[2])))
try:
    sys.stdout.write(s.recv(100).decode())
except TimeoutError:
    pass
"""


def test_udp_moves_to_remaining_endpoints_when_one_goes_away(make_cluster) -> None:
    pods = [
        {"name": "a", "node": "node-1", "ports": [(53, "UDP")], "labels": "app: dns"},
        {"name": "b", "node": "node-2", "ports": [(53, "UDP")]},
        {"name": "c", "node": "node-2", "ports": [(53, "UDP")]},
        {"name": "client", "node": "node-1"},
    ]
    service_doc = """---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  clusterIP: 10.96.0.53
  selector: {app: dns}
  ports: [{port: 53, protocol: UDP}]
"""

    def text(name: str, members: list[dict]) -> str:
        return (
            _labelled(cluster_yaml(name, pods=members), [p["name"] for p in members if p["name"] != "client"])
            + service_doc
        )

    c = make_cluster(lambda n: text(n, pods))
    c.up()

    def ask() -> str:
        return c.exec("client", sys.executable, "-c", UDP_FIXED_PORT, "10.96.0.53", "53").stdout

    first = ask()
    assert first in {"a", "b", "c"}
    assert ask() == first  # the same flow (same source port) sticks to its endpoint
    c.write(text(c.name, [p for p in pods if p["name"] != first]))
    c.up()
    after = ask()
    assert after and after != first  # the stale entry was removed: the flow found a live endpoint


def _labelled(text: str, names: list[str]) -> str:
    for name in names:
        text = text.replace(
            f"metadata: {{name: {name}, namespace: default}}",
            f"metadata: {{name: {name}, namespace: default, labels: {{app: dns}}}}",
        )
    return text

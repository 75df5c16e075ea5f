"""The routed underlay, the VXLAN overlay and the edge, on the real kernel (examples/racks.yaml)."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import cluster as usecases
from tests.conftest import (
    REPO,
    Cluster,
    assert_observed_equals_plan,
    example_cluster,
    example_text,
    status_json,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def racks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "racks.yaml", "r") as c:
        yield c


def info(c: Cluster) -> dict:
    return status_json(c.name)


def node_ip(c: Cluster, node: str) -> str:
    return next(n["underlay_ip"] for n in info(c)["nodes"] if n["name"] == node)


def test_observed_equals_plan(racks: Cluster) -> None:
    assert_observed_equals_plan(racks.name)


def test_status_lists_routers_and_external_hosts(racks: Cluster) -> None:
    data = info(racks)
    assert {r["name"] for r in data["routers"]} == {"spine-1", "spine-2", "edge"}
    edge = next(r for r in data["routers"] if r["name"] == "edge")
    assert edge["edge"] and {i["subnet"] for i in edge["interfaces"]} == {"rack-a", "internet"}
    assert [h["name"] for h in data["external_hosts"]] == ["example"]
    assert data["external_hosts"][0]["ip"] == "203.0.113.10" and data["external_hosts"][0]["ready"]
    assert data["mtu"] == 1450
    proc = racks.exec("edge", "ip", "-4", "-o", "addr")
    assert "203.0.113.1/24" in proc.stdout


def test_cross_rack_pod_to_pod_over_vxlan_keeps_pod_address(racks: Cluster) -> None:
    web1, web2 = racks.pod("shop/web-1")["ip"], racks.pod("shop/web-2")["ip"]
    assert racks.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"
    assert racks.curl("shop/web-1", f"http://{web2}/clientip").split(":")[0] == web1
    assert racks.curl("shop/web-2", f"http://{web1}/clientip").split(":")[0] == web2
    assert racks.udp("shop/web-2", web1, 53, "hostname") == "web-1"


def test_underlay_capture_shows_vxlan_with_vni_and_inner_addresses(racks: Cluster) -> None:
    web1, web2 = racks.pod("shop/web-1")["ip"], racks.pod("shop/web-2")["ip"]
    node1 = usecases.exec_target(racks.name, "node-1")
    capture = subprocess.Popen(
        ["ip", "netns", "exec", node1, "tcpdump", "-l", "-nn", "-v", "-i", "eth0", "-c", "1", "udp", "port", "4789"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listening = threading.Event()

    def watch() -> None:
        for line in capture.stderr:  # type: ignore[union-attr]
            if "listening on" in line:
                listening.set()

    threading.Thread(target=watch, daemon=True).start()
    assert listening.wait(10), "tcpdump did not start"
    racks.curl("shop/web-1", f"http://{web2}/hostname")
    out, _ = capture.communicate(timeout=10)
    assert "VXLAN" in out and "vni 1" in out
    assert re.search(rf"{re.escape(node_ip(racks, 'node-1'))}\.\d+ > {re.escape(node_ip(racks, 'node-2'))}\.4789", out)
    assert f"{web1}." in out and f"{web2}.80" in out  # the inner packet: pod to pod


def test_full_size_packet_passes_and_one_byte_more_is_refused(racks: Cluster) -> None:
    web2 = racks.pod("shop/web-2")["ip"]
    largest = 1450 - 28  # pod MTU less IPv4 and ICMP headers
    ok = racks.exec("shop/web-1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(largest), web2)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = racks.exec("shop/web-1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(largest + 1), web2)
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()


def test_egress_to_external_host_is_masqueraded_to_the_node(racks: Cluster) -> None:
    seen = racks.curl("shop/web-1", "http://203.0.113.10/clientip").split(":")[0]
    assert seen == node_ip(racks, "node-1")
    seen = racks.curl("shop/web-2", "http://203.0.113.10/clientip").split(":")[0]
    assert seen == node_ip(racks, "node-2")  # across the spines and the edge


def test_host_port_from_the_external_host(racks: Cluster) -> None:
    url = f"http://{node_ip(racks, 'node-1')}:8080"
    assert racks.curl("example", f"{url}/hostname") == "web-1"
    assert racks.curl("example", f"{url}/clientip").split(":")[0] == "203.0.113.10"


def _rx_packets(c: Cluster, router: str, ifname: str) -> int:
    out = c.exec(router, "cat", f"/sys/class/net/{ifname}/statistics/rx_packets")
    if out.returncode != 0:  # /sys shows the namespace `ip netns exec` mounted, so this works there
        raise AssertionError(out.stderr)
    return int(out.stdout)


def test_ecmp_spreads_flows_over_both_spines(racks: Cluster) -> None:
    # Flows from rack-b into rack-a: web-2's egress to the internet (routed by node-2) and
    # node-2's own connections to node-1's hostPort. Each connection is a new source port,
    # and with L4 hashing a new choice of spine. (VXLAN traffic between one pair of nodes
    # keeps one path: the kernel caches the route per remote VTEP.)
    node1 = node_ip(racks, "node-1")
    before = {r: _rx_packets(racks, r, "eth1") for r in ("spine-1", "spine-2")}
    for _ in range(16):
        racks.curl("shop/web-2", "http://203.0.113.10/hostname")
        racks.curl("node-2", f"http://{node1}:8080/hostname")
    after = {r: _rx_packets(racks, r, "eth1") for r in ("spine-1", "spine-2")}
    grew = {r: after[r] - before[r] for r in before}
    assert all(n >= 10 for n in grew.values()), grew  # each spine carried several flows' packets
    route = racks.exec("node-2", "ip", "route", "show", "172.31.1.0/24").stdout
    assert route.count("nexthop via") == 2


def test_longest_prefix_match_beats_shorter_routes_and_the_default(racks: Cluster) -> None:
    # On the edge router: rack-b (/24 over both spines) is more specific than the default route.
    got = racks.exec("edge", "ip", "-o", "route", "get", "172.31.2.3").stdout
    assert "via 172.31.1.1" in got or "via 172.31.1.2" in got
    got = racks.exec("edge", "ip", "-o", "route", "get", "198.51.100.7").stdout
    assert "dev eth1" in got and "via" not in got  # the gateway of last resort
    # A shorter prefix beside a longer one: the /24 still wins for rack-b, the /16 takes the rest.
    racks.exec("node-1", "ip", "route", "add", "172.31.0.0/16", "via", "172.31.1.3")
    try:
        assert "nexthop" in racks.exec("node-1", "ip", "route", "show", "172.31.2.0/24").stdout
        got = racks.exec("node-1", "ip", "-o", "route", "get", "172.31.2.3").stdout
        assert "via 172.31.1.1" in got or "via 172.31.1.2" in got
        got = racks.exec("node-1", "ip", "-o", "route", "get", "172.31.9.9").stdout
        assert "via 172.31.1.3" in got
    finally:
        racks.exec("node-1", "ip", "route", "del", "172.31.0.0/16")
    assert_observed_equals_plan(racks.name)


def test_host_gw_across_racks_is_refused_with_a_reason(tmp_path: Path) -> None:
    text = (REPO / "examples" / "racks.yaml").read_text().replace("backend: vxlan", "backend: host-gw")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    from tests.conftest import run_cli

    proc = run_cli("up", str(bad))
    assert proc.returncode == 2
    assert "spec.backend" in proc.stderr and "vxlan" in proc.stderr and "Traceback" not in proc.stderr


def test_backend_switch_on_a_running_cluster_converges(make_cluster) -> None:
    from tests.conftest import cluster_yaml
    from tests.rootsnap import differences, snapshot

    before = snapshot()
    pods = [
        {"name": "a", "node": "node-1", "ports": [(80, "TCP")]},
        {"name": "b", "node": "node-2", "ports": [(80, "TCP")]},
    ]
    c = make_cluster(lambda n: cluster_yaml(n, pods=pods))
    c.up()
    b_ip = c.pod("b")["ip"]
    assert c.curl("a", f"http://{b_ip}/hostname") == "b"

    c.write(cluster_yaml(c.name, pods=pods).replace("backend: host-gw", "backend: vxlan"))
    switched = c.up()
    assert switched["summary"]["add_link"] == 2  # one vxlan0 per node
    assert_observed_equals_plan(c.name)
    assert "vxlan0" in c.exec("node-1", "ip", "route", "show", c.status()["nodes"][1]["pod_cidr"]).stdout
    assert "mtu 1450" in c.exec("a", "ip", "link", "show", "eth0").stdout
    assert c.curl("a", f"http://{b_ip}/clientip").split(":")[0] == c.pod("a")["ip"]

    c.write(cluster_yaml(c.name, pods=pods))
    back = c.up()
    assert back["summary"]["del_link"] == 2  # the vxlan devices go
    assert_observed_equals_plan(c.name)
    assert "vxlan0" not in c.exec("node-1", "ip", "link").stdout
    assert c.curl("a", f"http://{b_ip}/hostname") == "b"

    c.down()
    assert differences(before, snapshot()) == {}


def test_racks_down_leaves_root_namespace_identical(make_cluster) -> None:
    from tests.rootsnap import differences, snapshot

    before = snapshot()
    c = make_cluster(lambda n: example_text("racks.yaml", n))
    c.up()
    assert differences(before, snapshot()).keys() <= {"netns"}
    c.down()
    assert differences(before, snapshot()) == {}

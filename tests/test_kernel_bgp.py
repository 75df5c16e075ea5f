"""backend bgp on the real kernel with real BIRD daemons (examples/fabric.yaml: 2 spines, 2 leaves,
3 nodes, a border leaf to the internet).

One fabric cluster is shared by the module; every test that breaks it heals it and waits for BGP
to converge again (the kernel holding exactly the routes ``plan.bgp`` expects) before it ends.
Waiting is always on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from podnet import cluster as usecases
from podnet import faults, outage
from podnet.kernel.observe import observe
from podnet.plan.bgp import normalized
from podnet.runtime import bird
from podnet.store import cluster_dir
from tests.conftest import Cluster, assert_observed_equals_plan, example_cluster, leftovers, run_cli

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _bird_installed() -> None:
    """BIRD is part of what podnet needs (backend bgp): its absence fails, never skips."""
    if shutil.which("bird") is None:
        pytest.fail("BIRD is not installed: make deps installs bird2")


CONVERGE_S = 20.0


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "fabric.yaml", "b", ready=converge) as c:
        yield c


def wait_for(condition: Callable[[], object], what: str, deadline_s: float = CONVERGE_S) -> float:
    """Poll ``condition`` until it is true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(0.02)


def bird_routes(netns: list[str]) -> dict[str, set]:
    """The routes BIRD installed in each namespace, next hops in a fixed order."""
    state = observe(netns, set())
    return {
        ns: {normalized(r) for r in state.namespaces[ns].routes.values() if r.proto == "bird"}
        for ns in netns
        if ns in state.namespaces
    }


def converge(c: Cluster) -> float:
    """Wait until every namespace holds exactly the routes BGP is expected to give it."""
    _, p = usecases.load_applied(c.name)
    expected = {ns: {normalized(r) for r in routes.values()} for ns, routes in p.bgp.expected_routes().items()}

    def done() -> bool:
        return bird_routes(list(expected)) == expected

    return wait_for(done, f"BGP to converge in {c.name}")


def netns_of(c: Cluster, name: str) -> str:
    return usecases.exec_target(c.name, name)


def holders(c: Cluster, prefix: str) -> set[str]:
    """The nodes and routers with a BIRD route to ``prefix``."""
    _, p = usecases.load_applied(c.name)
    names = {s.netns: n for n, s in p.bgp.speakers.items()} if p.bgp else {}
    routes = bird_routes(list(names))
    return {names[ns] for ns, rs in routes.items() if any(r.dst == prefix for r in rs)}


def block_of(c: Cluster, node: str) -> str:
    return next(n["pod_cidr"] for n in c.status()["nodes"] if n["name"] == node)


def test_pods_on_different_leaves_reach_each_other_over_bgp_routes(fabric: Cluster) -> None:
    web1, web2 = fabric.pod("shop/web-1")["ip"], fabric.pod("shop/web-2")["ip"]
    assert fabric.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"
    assert fabric.curl("shop/web-2", f"http://{web1}/clientip").split(":")[0] == web2  # no NAT between pods
    assert fabric.udp("client", web1, 53, "hostname") == "web-1"
    route = fabric.exec("node-1", "ip", "route", "show", block_of(fabric, "node-2")).stdout
    assert "proto bird" in route and "metric 32" in route
    ecmp = fabric.exec("leaf-1", "ip", "route", "show", block_of(fabric, "node-2")).stdout
    assert "proto bird" in ecmp and ecmp.count("nexthop via") == 2  # one per spine
    assert "proto static" not in fabric.exec("leaf-2", "ip", "route").stdout


def test_observed_equals_plan_and_bird_routes_equal_the_expected(fabric: Cluster) -> None:
    assert_observed_equals_plan(fabric.name)  # BIRD's routes aside
    converge(fabric)  # BIRD's routes: exactly what plan.bgp expects
    assert usecases.up(str(fabric.file)).changes == []


def test_services_dns_and_egress_cross_the_fabric(fabric: Cluster) -> None:
    assert fabric.curl("client", "http://web.shop/hostname") in ("web-1", "web-2")
    node2 = next(n["underlay_ip"] for n in fabric.status()["nodes"] if n["name"] == "node-2")
    # Out through the border leaf by the default route it announces, masqueraded to the node.
    assert fabric.curl("shop/web-2", "http://203.0.113.10/clientip").split(":")[0] == node2


def _rx(c: Cluster, router: str, ifname: str) -> int:
    return int(c.exec(router, "cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


def test_ecmp_spreads_flows_over_both_spines(fabric: Cluster) -> None:
    # Spine eth0 faces leaf-1: web-1's connections to web-2 (each a new source port, with L4
    # hashing on leaf-1) enter the spines there.
    web2 = fabric.pod("shop/web-2")["ip"]
    before = {s: _rx(fabric, s, "eth0") for s in ("spine-1", "spine-2")}
    for _ in range(16):
        fabric.curl("shop/web-1", f"http://{web2}/hostname")
    grew = {s: _rx(fabric, s, "eth0") - before[s] for s in before}
    assert all(n >= 10 for n in grew.values()), grew


def probe(c: Cluster, source: str, ip: str, port: int, duration: float) -> subprocess.Popen:
    return outage.probe_stream(netns_of(c, source), ip, port, duration)


@pytest.mark.parametrize("keep_carrier", [False, True], ids=["carrier-lost", "gray-failure-bfd"])
def test_cutting_a_spine_link_keeps_traffic_flowing_through_the_other_spine(
    fabric: Cluster, record_property, keep_carrier: bool
) -> None:
    # Carrier lost: both ends see it at once (check link). Gray failure: frames dropped with the
    # link up, found by BFD after 3 x 100 ms. Either way leaf-1 hears the withdrawal by BGP.
    web2 = fabric.pod("shop/web-2")["ip"]
    prober = probe(fabric, "shop/web-1", web2, 53, duration=4.0)
    try:
        assert prober.stdout is not None
        assert prober.stdout.readline().strip() == "flowing", prober.stderr.read() if prober.stderr else ""
        # Which spine carries the flow: the one whose leaf-1 side counts the probes (500/s).
        base = {s: _rx(fabric, s, "eth0") for s in ("spine-1", "spine-2")}
        used: list[str] = []

        def one_spine_carries_it() -> bool:
            grew = {s: _rx(fabric, s, "eth0") - base[s] for s in base}
            busy = [s for s, n in grew.items() if n >= 100]
            used[:] = busy
            return len(busy) == 1

        wait_for(one_spine_carries_it, "the probe flow to show on one spine", 5)
        spine = used[0]
        cut_at = time.monotonic()
        faults.inject(fabric.name, ["link", "down", "leaf-2", spine], keep_carrier=keep_carrier)
        done_at = time.monotonic()
        out, _ = prober.communicate(timeout=20)
    finally:
        if prober.poll() is None:
            prober.kill()
        faults.heal(fabric.name)
    result = outage.outage(outage.report(out), cut_at, done_at)
    record_property("bgp_failover_outage_ms", result["outage_ms"])
    print(f"\nlink leaf-2 <-> {spine} cut ({'frames dropped' if keep_carrier else 'carrier lost'}): {result}")
    assert result["answered_after"] > 100, result  # flowing again, through the other spine
    assert result["outage_ms"] is not None and result["outage_ms"] < 1000, result
    converge(fabric)


def test_stopping_a_nodes_bird_withdraws_its_block_everywhere(fabric: Cluster) -> None:
    block = block_of(fabric, "node-2")
    assert holders(fabric, block) == {"node-1", "node-3", "leaf-1", "leaf-2", "spine-1", "spine-2"}
    web2 = fabric.pod("shop/web-2")["ip"]
    try:
        faults.inject(fabric.name, ["router", "stop", "node-2"])
        wait_for(lambda: not holders(fabric, block), f"{block} to be withdrawn everywhere")
        refused = fabric.exec("shop/web-1", "curl", "-s", "--max-time", "2", f"http://{web2}/hostname")
        assert refused.returncode != 0
    finally:
        faults.heal(fabric.name)
    converge(fabric)
    assert fabric.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"


def test_without_bgp_pods_on_different_leaves_cannot_reach_each_other(fabric: Cluster) -> None:
    _, p = usecases.load_applied(fabric.name)
    web2 = fabric.pod("shop/web-2")["ip"]
    try:
        for speaker in p.bgp.speakers:
            faults.inject(fabric.name, ["router", "stop", speaker])
        assert bird.find(fabric.name) == {}
        assert all(not routes for routes in bird_routes([s.netns for s in p.bgp.speakers.values()]).values())
        failed = fabric.exec("shop/web-1", "curl", "-s", "--max-time", "2", f"http://{web2}/hostname")
        assert failed.returncode != 0  # no static route for the block anywhere: BGP was all there was
        assert fabric.curl("shop/web-1", f"http://{fabric.pod('shop/web-1')['ip']}/hostname") == "web-1"
    finally:
        faults.heal(fabric.name)
    converge(fabric)
    assert fabric.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"


def test_up_restarts_a_stopped_bird_and_restores_a_cut_link(fabric: Cluster) -> None:
    faults.inject(fabric.name, ["router", "stop", "spine-2"])
    faults.inject(fabric.name, ["link", "down", "leaf-1", "spine-1"])
    result = usecases.up(str(fabric.file)).to_json()
    assert result["summary"] == {"set_link": 2, "start_process": 1}, result
    converge(fabric)
    faults.heal(fabric.name)  # the record is stale: healing what is healed changes nothing
    assert faults.active(fabric.name) == []
    assert usecases.up(str(fabric.file)).changes == []


def test_a_recreated_namespace_gets_a_fresh_bird(fabric: Cluster) -> None:
    from podnet.kernel import netns

    ns = netns_of(fabric, "node-3")
    old = next(pid for pid, where in bird.find(fabric.name).items() if where == ns)
    netns.delete(ns)  # as after a crash: the node is gone, its BIRD runs on in the dead namespace
    _, p = usecases.load_applied(fabric.name)
    observed, _ = usecases.observe_cluster(fabric.name, p.state)
    assert observed.processes["bird:node-3"].digest == "stale"
    details = usecases.up(str(fabric.file)).to_json()["details"]
    assert "reload_process  process bird:node-3" in details
    assert old not in bird.find(fabric.name)
    converge(fabric)
    assert fabric.curl("shop/web-1", f"http://{fabric.pod('client')['ip']}:8080/hostname") == "client"


def test_routes_command_shows_sessions_rib_and_fib(fabric: Cluster) -> None:
    data = json.loads(run_cli("routes", "-c", fabric.name, "leaf-1", "-o", "json", check=True).stdout)
    assert data["asn"] == 65001 and data["bird"] == "running"
    sessions = {s["peer"]: s for s in data["sessions"]}
    assert set(sessions) == {"node-1", "spine-1", "spine-2"}
    assert all(s["state"] == "Established" and s["bfd"] == "Up" for s in sessions.values()), sessions
    block = block_of(fabric, "node-2")
    entry = next(e for e in data["rib"] if e["prefix"] == block)
    assert {p["from"] for p in entry["paths"]} == {"spine-1", "spine-2"}
    assert all(p["in_fib"] and p["as_path"][0] == 65000 for p in entry["paths"])
    best = next(p for p in entry["paths"] if p["best"])
    assert "ECMP" in best["why"]
    fib = next(r for r in data["fib"] if r["dst"] == block)
    assert fib["proto"] == "bird" and len(fib["nexthops"]) == 2
    table = run_cli("routes", "-c", fabric.name, "node-3", check=True).stdout
    assert "AS 64514" in table and "Established" in table and "KERNEL FIB" in table


def test_fault_cli_link_and_router_and_heal(fabric: Cluster) -> None:
    down = run_cli("fault", "-c", fabric.name, "link", "down", "node-3", "leaf-2", check=True).stdout
    assert "frames dropped" in down  # a shared rack: BFD finds it, not the carrier
    block = block_of(fabric, "node-3")
    try:
        took = wait_for(lambda: "leaf-2" not in holders(fabric, block), "leaf-2 to drop node-3's block", 5)
        print(f"\nBFD noticed the filtered link in {took * 1000:.0f} ms")
        bad = run_cli("fault", "-c", fabric.name, "link", "down", "node-1", "node-3")
        assert bad.returncode == 2 and "share no segment" in bad.stderr
    finally:
        healed = run_cli("fault", "-c", fabric.name, "--heal", check=True).stdout
    assert "no active faults" in healed
    converge(fabric)


def test_removing_a_node_and_up_withdraws_its_block(fabric: Cluster) -> None:
    original = fabric.file.read_text()
    block = block_of(fabric, "node-3")
    assert "spine-1" in holders(fabric, block)
    text = original.replace("  - {name: node-3, leaf: leaf-2}\n", "").replace("nodeName: node-3", "nodeName: node-2")
    try:
        fabric.write(text)
        result = usecases.up(str(fabric.file)).to_json()
        assert "stop_process  process bird:node-3" in result["details"]
        assert "reload_process  process bird:leaf-2" in result["details"]
        wait_for(lambda: not holders(fabric, block), f"{block} to be withdrawn")
        converge(fabric)
        assert_observed_equals_plan(fabric.name)
    finally:
        fabric.write(original)
        usecases.up(str(fabric.file))
    converge(fabric)


def test_full_mesh_backend_switch_and_down_without_state(make_cluster) -> None:
    from tests.conftest import cluster_yaml

    pods = [
        {"name": "a", "node": "node-1", "ports": [(80, "TCP")]},
        {"name": "b", "node": "node-2", "ports": [(80, "TCP")]},
    ]
    c = make_cluster(lambda n: cluster_yaml(n, pods=pods, extra="  dns: {enabled: false}\n"))
    c.up()
    b_ip = c.pod("b")["ip"]
    assert "proto static" in c.exec("node-1", "ip", "route", "show", c.status()["nodes"][1]["pod_cidr"]).stdout
    assert c.curl("a", f"http://{b_ip}/hostname") == "b"

    c.write(
        cluster_yaml(c.name, pods=pods, extra="  dns: {enabled: false}\n").replace("backend: host-gw", "backend: bgp")
    )
    switched = c.up()
    assert switched["summary"].get("del_route") == 2 and switched["summary"]["start_process"] == 2, switched
    converge(c)
    route = c.exec("node-1", "ip", "route", "show", c.status()["nodes"][1]["pod_cidr"]).stdout
    assert "proto bird" in route and "via 172.31.0.3" in route  # iBGP: straight to the owner
    assert c.curl("a", f"http://{b_ip}/hostname") == "b"
    assert_observed_equals_plan(c.name)
    assert len(bird.find(c.name)) == 2

    shutil.rmtree(cluster_dir(c.name))  # down must find every BIRD by its command line alone
    assert not os.path.exists(cluster_dir(c.name))
    c.down()
    assert bird.find(c.name) == {}
    assert leftovers(c.name) == []


def test_trace_shows_bgp_routes_and_verify_follows_the_fabric(fabric: Cluster) -> None:
    converge(fabric)
    for proto in ("tcp", "udp", "icmp"):
        r = usecases.trace(
            "shop/web-1", "shop/web-2", proto=proto, port=80 if proto == "tcp" else 53, cluster=fabric.name, verify=True
        )
        assert r.verified, (r.hops[0].notes, [(h.name, h.observed, h.captured) for h in (*r.hops, *r.reply)])
        node1 = next(h for h in r.hops if h.name == "node-1")
        assert node1.route["chosen"]["proto"] == "bird"  # learned by BGP, and said so
        leaf1 = next(h for h in r.hops if h.name == "leaf-1")
        assert leaf1.route["chosen"]["proto"] == "bird" and len(leaf1.route["ecmp"]) == 2
        assert {h.name for h in r.hops} & {"spine-1", "spine-2"}

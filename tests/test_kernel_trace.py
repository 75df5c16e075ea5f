"""podnet trace on running clusters: --verify proves every path kind on the real kernel,
trace(planned) equals trace(observed), and drift is found where a cluster was broken by hand."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from podnet import cluster as usecases
from podnet.trace import Tracer
from tests.conftest import Cluster, cluster_yaml, example_cluster

pytestmark = pytest.mark.root


def _cluster(tmp_path_factory: pytest.TempPathFactory, example: str) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, example, "v") as c:
        yield c


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path_factory, "quickstart.yaml")


@pytest.fixture(scope="module")
def racks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path_factory, "racks.yaml")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _cluster(tmp_path_factory, "services.yaml")


def verified(c: Cluster, src: str, dst: str, **kw: object):
    r = usecases.trace(src, dst, cluster=c.name, verify=True, **kw)
    unseen = [(h.name, h.captured) for h in (*r.hops, *r.reply) if h.observed is False]
    assert r.verified, f"not seen: {unseen}"
    assert r.drift == []
    return r


def test_verify_same_node(quick: Cluster) -> None:
    r = verified(quick, "shop/web-1", "shop/db", port=5432)
    assert [h.kind for h in r.hops] == ["pod", "node", "pod"] and r.hops[1].bridge["port"]


def test_verify_cross_node_host_gw(quick: Cluster) -> None:
    r = verified(quick, "shop/web-1", "shop/web-2")
    assert [h.kind for h in r.hops] == ["pod", "node", "switch", "node", "pod"]
    assert [h.packet.ttl for h in r.hops] == [64, 63, 63, 62, 62]


def test_verify_udp_and_icmp(quick: Cluster) -> None:
    assert verified(quick, "client", "shop/web-1", proto="udp", port=53).verdict == "delivered"
    assert verified(quick, "client", "shop/web-1", proto="icmp").verdict == "delivered"


def test_a_probe_that_never_left_is_sent_again(quick: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that fails in its own namespace (nothing leaves the source) says nothing about
    the path: verify sends it once more, and says so."""
    from podnet.trace import verify

    real = verify._probe
    calls: list[str] = []

    def first_fails(result, src_netns, done, outcome) -> None:
        calls.append(src_netns)
        if len(calls) == 1:
            outcome["result"] = "probe failed: simulated"
            done.set()
            return
        real(result, src_netns, done, outcome)

    monkeypatch.setattr(verify, "_probe", first_fails)
    r = verified(quick, "shop/web-1", "shop/web-2")
    assert len(calls) == 2
    assert any("never left" in n and "simulated" in n for n in r.notes), r.notes


def test_verify_pod_to_itself_and_loopback(quick: Cluster) -> None:
    for dst in ("shop/web-1", "127.0.0.1"):
        r = verified(quick, "shop/web-1", dst)
        assert len(r.hops) == 1 and r.hops[0].out_if == "lo"


def test_verify_cross_rack_vxlan(racks: Cluster) -> None:
    r = verified(racks, "shop/web-1", "shop/web-2")
    assert r.hops[1].encap["vni"] == 1 and r.hops[5].decap is not None
    assert any("inside VXLAN" in c for c in r.hops[2].captured)


def test_verify_egress_with_masquerade(racks: Cluster) -> None:
    r = verified(racks, "shop/web-2", "example")
    assert "masquerade" in r.hops[1].nat and r.hops[-1].packet.src_ip == racks.status()["nodes"][1]["underlay_ip"]


def test_verify_host_port(racks: Cluster) -> None:
    node1 = racks.status()["nodes"][0]["underlay_ip"]
    r = verified(racks, "example", node1, port=8080)
    assert "hostPort" in r.hops[-2].nat and r.hops[-1].name == "shop/web-1"


def test_verify_service_vip_dns_name_and_hairpin(svc: Cluster) -> None:
    r = verified(svc, "shop/shell", "web.shop")
    assert r.dns["chosen"].startswith("10.96.") and "DNAT" in r.hops[1].nat
    r = verified(svc, "shop/loner", "loner.shop")
    assert "hairpin" in r.hops[1].nat and r.hops[-1].name == "shop/loner"
    r = verified(svc, "shop/web-1", "kube-dns.kube-system", proto="udp", port=53)
    assert "DNS server" in r.reason


def test_verify_refused_service_without_endpoints(svc: Cluster) -> None:
    r = verified(svc, "shop/shell", "nobody.shop")
    assert r.verdict == "refused"


def _signature(result) -> tuple:
    hops = [
        (
            h.netns,
            h.in_if,
            h.out_if,
            h.nat,
            h.packet
            and (
                h.packet.src_ip,
                h.packet.dst_ip,
                h.packet.sport,
                h.packet.dport,
                h.packet.ttl,
                h.packet.src_mac,
                h.packet.dst_mac,
            ),
        )
        for h in (*result.hops, *result.reply)
    ]
    return (result.verdict, result.reason, hops)


def _random_cluster(seed: int, name: str) -> str:
    rnd = random.Random(seed)
    nodes = rnd.randint(1, 3)
    pods = [
        {
            "name": f"p{i}",
            "namespace": rnd.choice(["default", "blue"]),
            "node": rnd.choice([None, *[f"node-{n + 1}" for n in range(nodes)]]),
            "ports": [(80, "TCP")] if rnd.random() < 0.8 else [],
        }
        for i in range(rnd.randint(3, 6))
    ]
    text = cluster_yaml(name, nodes=nodes, pods=pods)
    return text.replace("backend: host-gw", f"backend: {rnd.choice(['host-gw', 'vxlan'])}")


@pytest.mark.parametrize("seed", [1, 2])
def test_trace_of_planned_equals_trace_of_observed(make_cluster, seed: int) -> None:
    c = make_cluster(lambda n: _random_cluster(seed, n))
    c.up()
    _, p = usecases.load_applied(c.name)
    observed, _ = usecases.observe_cluster(c.name, p.state)
    planned_tracer = Tracer(p.state, p.topology, p.state, p.dns_config)
    observed_tracer = Tracer(observed, p.topology, p.state, p.dns_config, mode="observed")
    rnd = random.Random(seed)
    pods = sorted(p.topology.pods)
    for _ in range(12):
        a, b = rnd.choice(pods), rnd.choice(pods)
        assert _signature(planned_tracer.trace(a, b)) == _signature(observed_tracer.trace(a, b)), (a, b)


def test_deleted_route_is_drift_and_verify_fails_at_that_node(make_cluster) -> None:
    c = make_cluster(
        lambda n: cluster_yaml(
            n,
            pods=[
                {"name": "a", "node": "node-1", "ports": [(80, "TCP")]},
                {"name": "b", "node": "node-2", "ports": [(80, "TCP")]},
            ],
        )
    )
    c.up()
    block2 = c.status()["nodes"][1]["pod_cidr"]
    c.exec("node-1", "ip", "route", "del", block2)
    r = usecases.trace("a", "b", cluster=c.name, verify=True)
    assert any(block2 in d and "node-1" in d for d in r.drift)
    assert r.verified is False
    first_unseen = next(h for h in r.hops if h.observed is False)
    assert first_unseen.name == "node-1"  # the packet reached node-1 but never left it
    assert any("no route" in n for n in r.notes)  # what the kernel does instead


def test_poisoned_neighbour_is_drift_and_verify_fails_at_that_node(make_cluster) -> None:
    c = make_cluster(
        lambda n: cluster_yaml(
            n,
            pods=[
                {"name": "a", "node": "node-1", "ports": [(80, "TCP")]},
                {"name": "b", "node": "node-2", "ports": [(80, "TCP")]},
            ],
        ).replace("backend: host-gw", "backend: vxlan")
    )
    c.up()
    vtep2 = c.status()["nodes"][1]["pod_cidr"].split("/")[0]
    c.exec(
        "node-1", "ip", "neigh", "replace", vtep2, "lladdr", "02:00:00:00:00:99", "dev", "vxlan0", "nud", "permanent"
    )
    r = usecases.trace("a", "b", cluster=c.name, verify=True)
    assert any("neighbour" in d and vtep2 in d for d in r.drift)
    assert r.verified is False
    assert next(h for h in r.hops if h.observed is False).name == "node-1"


def test_rule_removed_by_hand_is_drift_and_verify_fails_at_the_node(svc: Cluster) -> None:
    r0 = usecases.trace("shop/shell", "web.shop", cluster=svc.name)
    chain = r0.hops[1].nat.split("in chain ")[1].strip()
    svc.exec("node-1", "nft", "flush", "chain", "ip", "podnet", chain)
    try:
        r = usecases.trace("shop/shell", "web.shop", cluster=svc.name, verify=True)
        assert any(chain in d for d in r.drift)
        assert r.verified is False
        assert next(h for h in r.hops if h.observed is False).name == "node-1"
    finally:
        svc.up()  # repair: the next up restores the chain
    assert usecases.trace("shop/shell", "web.shop", cluster=svc.name).drift == []


def test_cold_verify_sees_the_arp_exchange(quick: Cluster) -> None:
    r = usecases.trace("shop/web-1", "shop/web-2", cluster=quick.name, verify=True, cold=True)
    assert r.verified
    first = r.hops[0]
    assert any("ARP who-has 10.244.0.1" in c for c in first.captured), first.captured  # the pod asks for its gateway
    assert any("is-at" in c for h in r.hops for c in h.captured)

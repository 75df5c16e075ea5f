"""podnet trace on the planned state: every path kind, longest-prefix match, ECMP, the
gateway of last resort. No root needed: the tracer walks the State the planner produced."""

from __future__ import annotations

import json

from podnet.plan import plan
from podnet.spec import load_text
from podnet.trace import Tracer
from tests.conftest import REPO, run_cli


def tracer(example: str) -> Tracer:
    p = plan(load_text((REPO / "examples" / example).read_text(), example))
    return Tracer(p.state, p.topology, p.state, p.dns_config)


QUICK = tracer("quickstart.yaml")
RACKS = tracer("racks.yaml")
SVC = tracer("services.yaml")


def kinds(result) -> list[tuple[str, str]]:
    return [(h.kind, h.name) for h in result.hops]


def test_same_node_pod_to_pod_is_bridged_on_the_node() -> None:
    r = QUICK.trace("shop/web-1", "shop/db", port=5432)
    assert r.verdict == "delivered"
    assert kinds(r) == [("pod", "shop/web-1"), ("node", "node-1"), ("pod", "shop/db")]
    node = r.hops[1]
    assert node.bridge["bridge"] == "cni0" and node.bridge["port"] == node.out_if
    assert node.route is None  # bridged: no IP routing on the node
    assert r.hops[0].neighbour["mac"] == r.hops[2].packet.dst_mac  # ARP for the peer pod itself
    assert r.hops[-1].packet.ttl == 64


def test_cross_node_host_gw_routes_via_the_other_node() -> None:
    r = QUICK.trace("shop/web-1", "shop/web-2")
    assert r.verdict == "delivered"
    assert kinds(r) == [
        ("pod", "shop/web-1"),
        ("node", "node-1"),
        ("switch", "underlay"),
        ("node", "node-2"),
        ("pod", "shop/web-2"),
    ]
    node1 = r.hops[1]
    assert node1.route["chosen"]["dst"] == "10.244.1.0/24"
    assert node1.route["nexthop"] == {"gateway": "172.31.0.3", "dev": "eth0"}
    # MACs change at every routed hop; the IPs do not; TTL counts the routers.
    assert {h.packet.src_ip for h in r.hops} == {"10.244.0.2"} and {h.packet.dst_ip for h in r.hops} == {"10.244.1.2"}
    assert [h.packet.ttl for h in r.hops] == [64, 63, 63, 62, 62]
    assert r.hops[0].packet.dst_mac != r.hops[1].packet.dst_mac
    assert r.reply_verdict == "delivered" and r.reply[-1].name == "shop/web-1"


def test_cross_rack_vxlan_encapsulates_and_decapsulates() -> None:
    r = RACKS.trace("shop/web-1", "shop/web-2")
    assert r.verdict == "delivered"
    assert [k for k, _ in kinds(r)] == ["pod", "node", "switch", "router", "switch", "node", "pod"]
    encap = r.hops[1].encap
    assert (encap["vni"], encap["outer_src"], encap["outer_dst"], encap["udp_dport"]) == (
        1,
        "172.31.1.4",
        "172.31.2.3",
        4789,
    )
    assert r.hops[3].name in {"spine-1", "spine-2"}  # one member of the ECMP set
    assert r.hops[1].route["underlay"]["ecmp"] is not None
    assert r.hops[5].decap["vni"] == 1
    assert r.hops[-1].packet.src_ip == "10.244.0.2"  # pod-to-pod keeps the pod address


def test_egress_is_masqueraded_and_the_reply_reversed() -> None:
    r = RACKS.trace("shop/web-1", "example")
    assert r.verdict == "delivered"
    assert "masquerade 10.244.0.2 -> 172.31.1.4" in r.hops[1].nat
    assert r.hops[-1].packet.src_ip == "172.31.1.4"
    assert kinds(r)[-3:] == [("router", "edge"), ("switch", "internet"), ("external", "example")]
    assert any("reverse SNAT 172.31.1.4 -> 10.244.0.2" in (h.nat or "") for h in r.reply)
    assert r.reply[-1].packet.dst_ip == "10.244.0.2"


def test_host_port_is_dnat_on_the_node() -> None:
    r = RACKS.trace("example", "172.31.1.4", port=8080)
    assert r.verdict == "delivered" and r.hops[-1].name == "shop/web-1"
    assert "hostPort 172.31.1.4:8080 -> DNAT 10.244.0.2:80" in r.hops[-2].nat
    assert any("reverse DNAT 10.244.0.2:80 -> 172.31.1.4:8080" in (h.nat or "") for h in r.reply)


def test_service_vip_dnat_names_the_endpoint_and_its_odds() -> None:
    vip = SVC.topo.services["shop/web"].cluster_ip
    r = SVC.trace("shop/shell", vip)
    assert r.verdict == "delivered"
    assert "of 3 (probability 1/3" in r.hops[1].nat
    assert r.hops[-1].name in {"shop/web-1", "shop/web-2", "shop/web-3"}
    assert r.hops[-1].packet.dport == 8080  # targetPort by name


def test_dns_name_resolved_as_the_pod_would() -> None:
    r = SVC.trace("shop/shell", "web.shop")
    assert r.dns["server"] == "10.96.0.10"
    assert [t["query"] for t in r.dns["tried"]] == ["web.shop.shop.svc.cluster.local.", "web.shop.svc.cluster.local."]
    assert r.dns["chosen"] == SVC.topo.services["shop/web"].cluster_ip
    assert r.verdict == "delivered"


def test_hairpin_pod_to_its_own_service() -> None:
    vip = SVC.topo.services["shop/loner"].cluster_ip
    r = SVC.trace("shop/loner", vip)
    assert r.verdict == "delivered" and r.hops[-1].name == "shop/loner"
    assert "hairpin" in r.hops[1].nat
    assert r.hops[-1].packet.src_ip == "10.244.0.1"  # masqueraded to the bridge's address


def test_pod_to_itself_and_loopback_never_leave_the_pod() -> None:
    for dst in ("shop/web-1", "127.0.0.1"):
        r = QUICK.trace("shop/web-1", dst)
        assert r.verdict == "delivered" and len(r.hops) == 1
        assert r.hops[0].out_if == "lo"


def test_service_without_endpoints_is_refused() -> None:
    r = SVC.trace("shop/shell", SVC.topo.services["shop/nobody"].cluster_ip)
    assert r.verdict == "refused" and "no endpoints" in r.reason


def test_nothing_listening_is_refused() -> None:
    r = QUICK.trace("shop/web-1", "shop/web-2", port=9999)
    assert r.verdict == "refused" and "nothing listens" in r.reason


def test_longest_prefix_match_beats_shorter_and_default() -> None:
    r = RACKS.trace("edge", "172.31.2.3", proto="icmp")
    route = r.hops[0].route
    assert route["chosen"]["dst"] == "172.31.2.0/24"
    assert [c["dst"] for c in route["candidates"]] == ["172.31.2.0/24", "0.0.0.0/0"]
    assert "longest prefix" in route["reason"]


def test_gateway_of_last_resort_on_the_edge() -> None:
    r = RACKS.trace("edge", "198.51.100.7", proto="icmp")
    route = r.hops[0].route
    assert route["chosen"]["dst"] == "0.0.0.0/0" and "gateway of last resort" in route["reason"]
    assert r.verdict == "dropped" and "ARP" in r.reason  # nothing owns that address on the internet segment


def test_ecmp_choice_is_one_of_the_equal_next_hops_and_stable_per_flow() -> None:
    choices = set()
    for port in range(80, 120):
        r = RACKS.trace("node-2", "172.31.1.4", port=port)
        route = r.hops[0].route
        assert len(route["ecmp"]) == 2
        choices.add(route["nexthop"]["gateway"])
        assert RACKS.trace("node-2", "172.31.1.4", port=port).hops[0].route["nexthop"] == route["nexthop"]
    assert choices == {"172.31.2.1", "172.31.2.2"}  # different flows, different spines


def test_cli_trace_of_a_file_prints_the_documented_json() -> None:
    proc = run_cli("trace", "-f", str(REPO / "examples" / "racks.yaml"), "shop/web-1", "shop/web-2", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "delivered" and data["reason"]
    for hop in data["hops"] + data["reply"]:
        assert {
            "netns",
            "kind",
            "in_if",
            "out_if",
            "src_mac",
            "dst_mac",
            "src_ip",
            "dst_ip",
            "ttl",
            "nat",
            "encap",
            "route",
            "observed",
        } <= hop.keys()
    assert data["hops"][1]["route"].keys() >= {"table", "candidates", "chosen"}
    human = run_cli("trace", "-f", str(REPO / "examples" / "racks.yaml"), "shop/web-1", "example")
    assert "masquerade" in human.stdout and "delivered" in human.stdout


def test_unknown_endpoint_is_a_usage_error() -> None:
    proc = run_cli("trace", "-f", str(REPO / "examples" / "racks.yaml"), "shop/nope", "shop/web-2")
    assert proc.returncode == 2 and "no pod, node, router or external host" in proc.stderr


def test_service_addresses_on_a_node_without_a_default_route() -> None:
    """No edge, so no default route: the service CIDR is still routed (locally) on the node,
    and what no endpoint took is rejected or dropped there, as on a cluster with an edge."""
    from tests import test_kernel_service_reject as rj

    p = plan(load_text(rj.cluster_text("noedge", "host-gw", edge=False), "noedge.yaml"))
    t = Tracer(p.state, p.topology, p.state, p.dns_config)
    for source in ("default/client", "node-1"):
        for proto in ("tcp", "udp"):
            r = t.trace(source, rj.NOBODY, port=80 if proto == "tcp" else 53, proto=proto)
            assert r.verdict == "refused" and "rejected: no endpoints" in r.reason, (source, proto, r.reason)
            node = next(h for h in r.hops if h.name == "node-1")
            assert node.route["chosen"]["dst"] == "10.96.0.0/12" and "local route" in node.route["reason"]
        other_port = t.trace(source, rj.WEB, port=81)
        assert other_port.verdict == "refused" and "has no such port" in other_port.reason
        nobody = t.trace(source, rj.UNALLOCATED, port=80)
        assert nobody.verdict == "dropped" and "no service has it" in nobody.reason
        served = t.trace(source, rj.WEB, port=80)
        assert served.verdict == "delivered" and served.hops[-1].name == "default/server"


def test_sctp_through_a_service_and_a_node_port() -> None:
    vip = SVC.topo.services["shop/signal"].cluster_ip
    r = SVC.trace("shop/shell", vip, proto="sctp", port=9000)
    assert r.verdict == "delivered" and r.hops[-1].name in {"shop/web-1", "shop/web-2", "shop/web-3"}
    assert "service shop/signal/sctp/9000: DNAT" in r.hops[1].nat
    node_port = SVC.topo.services["shop/signal"].ports[0].node_port
    r = SVC.trace("client", SVC.topo.nodes["node-2"].underlay_ip, proto="sctp", port=node_port)
    assert r.verdict == "delivered" and any("NodePort" in (h.nat or "") for h in r.hops)

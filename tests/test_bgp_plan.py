"""backend bgp in the planner: ASN plan, sessions, BIRD configs (golden files), the routes BIRD
is expected to install, and reading BIRD's answers. No root needed.

Regenerate the golden files after an intended change with ``PODNET_UPDATE_GOLDEN=1 pytest
tests/test_bgp_plan.py`` and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from podnet.plan import Plan, plan
from podnet.plan.bgp import is_bird, process_name, with_expected_routes
from podnet.routes import RibPath, decide, explain, parse_bfd, parse_protocols, parse_routes
from podnet.spec import load_text
from podnet.state import NextHop
from podnet.trace import Tracer
from tests.conftest import REPO

GOLDEN = Path(__file__).resolve().parent / "golden" / "bgp"
FABRIC = (REPO / "examples" / "fabric.yaml").read_text()
FULL_MESH = """apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {name: mesh}
spec:
  backend: bgp
  underlay: {cidr: 172.31.0.0/24}
  nodes: [{name: node-1}, {name: node-2}, {name: node-3}]
  dns: {enabled: false}
"""


def planned(text: str, previous: dict | None = None) -> Plan:
    return plan(load_text(text, "f.yaml"), previous)


P = planned(FABRIC)


def test_no_static_route_for_a_pod_block_or_between_subnets() -> None:
    pod_cidr = ipaddress.IPv4Network("10.244.0.0/16")
    for ns in P.state.namespaces.values():
        for route in ns.routes.values():
            if route.proto == "kernel":
                continue  # the connected and local routes of the namespace's own addresses
            assert not ipaddress.IPv4Network(route.dst).subnet_of(pod_cidr), (ns.name, route)
    infra = {n.netns for n in P.topology.nodes.values()} | {r.netns for r in P.topology.routers.values()}
    # (The service CIDR's local route on every node leads nowhere: plan.services.service_route.)
    static = {
        (ns, r.dst)
        for ns in infra
        for r in P.state.namespaces[ns].routes.values()
        if r.proto != "kernel" and r.type == "unicast"
    }
    # The border leaf's gateway of last resort is podnet's (BIRD only announces it).
    assert static == {("podnet_fabric_leaf-1", "0.0.0.0/0")}


def test_rfc7938_asn_plan() -> None:
    asn = {name: s.asn for name, s in P.bgp.speakers.items()}
    assert asn == {
        "spine-1": 65000,
        "spine-2": 65000,
        "leaf-1": 65001,
        "leaf-2": 65002,
        "node-1": 64512,
        "node-2": 64513,
        "node-3": 64514,
    }
    assert P.allocations["asn"] == {"node:node-1": "64512", "node:node-2": "64513", "node:node-3": "64514"}


def test_node_asns_are_stable_when_another_node_leaves() -> None:
    text = FABRIC.replace("  - {name: node-2, leaf: leaf-2}\n", "").replace("nodeName: node-2", "nodeName: node-3")
    again = planned(text, P.allocations)
    assert again.bgp.speakers["node-3"].asn == 64514
    fresh = planned(text)
    assert fresh.bgp.speakers["node-3"].asn == 64513


def test_sessions_nodes_to_their_leaf_leaves_to_every_spine() -> None:
    pairs = {(s.a, s.b) for s in P.bgp.sessions}
    assert pairs == {
        ("node-1", "leaf-1"),
        ("node-2", "leaf-2"),
        ("node-3", "leaf-2"),
        ("spine-1", "leaf-1"),
        ("spine-1", "leaf-2"),
        ("spine-2", "leaf-1"),
        ("spine-2", "leaf-2"),
    }


def test_one_bird_process_per_speaker_with_its_config_digest() -> None:
    birds = {name: proc for name, proc in P.state.processes.items() if is_bird(name)}
    assert set(birds) == {process_name(s) for s in P.bgp.speakers}
    for name, speaker in P.bgp.speakers.items():
        proc = birds[process_name(name)]
        assert proc.digest == P.bgp.configs[name].digest
        assert proc.argv[-1] == speaker.netns
    # A config change (a new node on leaf-1) reloads leaf-1 and starts the node; nothing else.
    grown = planned(
        FABRIC.replace(
            "  - {name: node-3, leaf: leaf-2}\n", "  - {name: node-3, leaf: leaf-2}\n  - {name: node-4, leaf: leaf-1}\n"
        ),
        P.allocations,
    )
    changed = {n for n, c in grown.bgp.configs.items() if n not in P.bgp.configs or c.digest != P.bgp.configs[n].digest}
    assert changed == {"leaf-1", "node-4"}


def test_config_digest_ignores_the_log_file() -> None:
    config = P.bgp.configs["leaf-1"]
    assert config.with_log("/x/y.log").digest == config.digest
    assert 'log "/x/y.log"' in config.with_log("/x/y.log").render()


def _golden(kind: str, p: Plan) -> None:
    directory = GOLDEN / kind
    rendered = {f"{name}.conf": config.render() for name, config in p.bgp.configs.items()}
    if os.environ.get("PODNET_UPDATE_GOLDEN"):
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.conf"):
            old.unlink()
        for name, text in rendered.items():
            (directory / name).write_text(text)
    assert sorted(p.name for p in directory.glob("*.conf")) == sorted(rendered)
    for name, text in rendered.items():
        assert text == (directory / name).read_text(), f"{kind}/{name} differs from the golden file"


def test_fabric_configs_match_golden_files() -> None:
    _golden("fabric", P)


def test_full_mesh_configs_match_golden_files() -> None:
    _golden("full-mesh", planned(FULL_MESH))


def test_bird_accepts_every_rendered_config(tmp_path: Path) -> None:
    if shutil.which("bird") is None:
        pytest.fail("BIRD is not installed: make deps installs bird2")
    for kind in ("fabric", "full-mesh"):
        for conf in (GOLDEN / kind).glob("*.conf"):
            proc = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{kind}/{conf.name}: {proc.stderr}"


def _hops(p: Plan, netns: str, dst: str) -> set[tuple[str | None, str | None]]:
    route = next(r for r in p.bgp.expected_routes()[netns].values() if r.dst == dst)
    assert route.proto == "bird" and route.metric == 32
    return {(h.gateway, h.dev) for h in route.nexthops}


def test_expected_routes_ecmp_over_both_spines_and_direct_next_hops_in_a_rack() -> None:
    blocks = {n.name: n.pod_cidr for n in P.topology.nodes.values()}
    ip = {n.name: n.underlay_ip for n in P.topology.nodes.values()}
    assert _hops(P, "podnet_fabric_leaf-1", blocks["node-2"]) == {("172.30.0.0", "eth1"), ("172.30.0.2", "eth2")}
    assert _hops(P, "podnet_fabric_node-1", blocks["node-2"]) == {("172.31.0.1", "eth0")}
    # Two nodes of one rack: the leaf passes on the owner's address (third-party next hop).
    assert _hops(P, "podnet_fabric_node-2", blocks["node-3"]) == {(ip["node-3"], "eth0")}
    # The default route the border leaf announces, everywhere else.
    assert _hops(P, "podnet_fabric_node-3", "0.0.0.0/0") == {("172.31.1.1", "eth0")}
    assert _hops(P, "podnet_fabric_leaf-2", "0.0.0.0/0") == {("172.30.0.4", "eth1"), ("172.30.0.6", "eth2")}
    # A spine never learns a path through the other spine (they share an AS).
    for spine in ("spine-1", "spine-2"):
        for paths in P.bgp.rib[spine].values():
            assert all(p.as_path.count(65000) == 0 for p in paths)


def test_full_mesh_is_ibgp_with_the_owner_as_next_hop() -> None:
    p = planned(FULL_MESH)
    assert {s.asn for s in p.bgp.speakers.values()} == {64512}
    assert len(p.bgp.sessions) == 3
    assert all(n.asn == 64512 for n in p.bgp.configs["node-1"].neighbors)
    blocks = {n.name: n.pod_cidr for n in p.topology.nodes.values()}
    assert _hops(p, "podnet_mesh_node-1", blocks["node-3"]) == {("172.31.0.4", "eth0")}
    assert "asn" not in p.allocations


def test_routers_form_gives_each_router_its_own_asn_and_ecmp() -> None:
    text = (REPO / "examples" / "racks.yaml").read_text().replace("backend: vxlan", "backend: bgp")
    p = planned(text)
    assert {r: p.bgp.speakers[r].asn for r in ("spine-1", "spine-2", "edge")} == {
        "spine-1": 65000,
        "spine-2": 65001,
        "edge": 65002,
    }
    # node-2 (rack-b) reaches the edge's default through either spine, as the static plan did.
    assert _hops(p, "podnet_racks_node-2", "0.0.0.0/0") == {("172.31.2.1", "eth0"), ("172.31.2.2", "eth0")}
    blocks = {n.name: n.pod_cidr for n in p.topology.nodes.values()}
    assert _hops(p, "podnet_racks_node-1", blocks["node-2"]) == {("172.31.1.1", "eth0"), ("172.31.1.2", "eth0")}


def test_trace_of_a_planned_bgp_cluster_follows_the_expected_bird_routes() -> None:
    state = with_expected_routes(P.state, P.bgp)
    t = Tracer(state, P.topology, state, P.dns_config, mode="planned")
    web2 = P.topology.pods["shop/web-2"].ip
    r = t.trace("shop/web-1", web2)
    assert r.verdict == "delivered", r.reason
    routed = [h for h in r.hops if h.kind != "switch"]
    names = [h.name for h in routed]
    assert names[:3] == ["shop/web-1", "node-1", "leaf-1"] and names[-3:] == ["leaf-2", "node-2", "shop/web-2"]
    assert names[3] in ("spine-1", "spine-2")
    leaf = routed[2]
    assert leaf.route["chosen"]["proto"] == "bird" and len(leaf.route["ecmp"]) == 2


BIRD_ROUTES = [
    (1007, "Table master4:"),
    (1007, "10.244.1.0/24        unicast [spine_1 09:34:25.383] * (100) [AS64513i]"),
    (1007, "\tvia 172.30.0.0 on eth1"),
    (1008, "\tType: BGP univ"),
    (1012, "\tBGP.origin: IGP"),
    (1012, "\tBGP.as_path: 65000 65002 64513"),
    (1012, "\tBGP.next_hop: 172.30.0.0"),
    (1012, "\tBGP.local_pref: 100"),
    (1007, "                     unicast [spine_2 09:34:25.986] (100) [AS64513i]"),
    (1007, "\tvia 172.30.0.2 on eth2"),
    (1012, "\tBGP.origin: IGP"),
    (1012, "\tBGP.as_path: 65000 65002 64513"),
    (1007, "172.30.0.0/31        unicast [direct1 09:34:24.481] * (240)"),
    (1007, "\tdev eth1"),
    (1007, "                     unicast [spine_1 09:34:25.243] (100) [AS65000i]"),
    (1007, "\tvia 172.30.0.0 on eth1"),
    (1012, "\tBGP.as_path: 65000"),
    (0, ""),
]


def test_parse_bird_routes_and_explain_the_best() -> None:
    paths = parse_routes(BIRD_ROUTES)
    assert [(p.prefix, p.protocol, p.best, p.next_hop, p.dev, p.as_path) for p in paths] == [
        ("10.244.1.0/24", "spine_1", True, "172.30.0.0", "eth1", [65000, 65002, 64513]),
        ("10.244.1.0/24", "spine_2", False, "172.30.0.2", "eth2", [65000, 65002, 64513]),
        ("172.30.0.0/31", "direct1", True, None, "eth1", []),
        ("172.30.0.0/31", "spine_1", False, "172.30.0.0", "eth1", [65000]),
    ]
    ecmp = paths[:2]
    ecmp[0].peer_id, ecmp[1].peer_id = "172.30.0.0", "172.30.0.2"
    explain(ecmp)
    assert ecmp[0].why.startswith("best: ECMP with 1 equal path")
    assert "lower router id, 172.30.0.0" in ecmp[1].why
    connected = paths[2:]
    explain(connected)
    assert "preference 240 (connected) over 100 (BGP)" in connected[1].why


def test_decide_follows_birds_order() -> None:
    short = RibPath("p", "a", 100, True, "", as_path=[1, 2])
    long = RibPath("p", "b", 100, False, "", as_path=[1, 2, 3])
    assert decide(short, long) == "shorter AS path (2 < 3 ASes)"
    ebgp = RibPath("p", "a", 100, True, "", as_path=[1])
    ibgp = RibPath("p", "b", 100, False, "", as_path=[1], internal=True)
    assert decide(ebgp, ibgp) == "eBGP over iBGP"
    assert decide(short, RibPath("p", "c", 100, False, "", as_path=[5, 6])) is None


def test_parse_protocols_and_bfd() -> None:
    protocols = parse_protocols(
        [
            (2002, "Name       Proto      Table      State  Since         Info"),
            (1002, "spine_1    BGP        ---        up     09:34:25.238  Established   "),
            (1006, "  BGP state:          Established"),
            (1006, "    Neighbor ID:      172.30.0.0"),
            (1002, "spine_2    BGP        ---        start  09:36:04.886  Active        Socket: Connection refused"),
            (0, ""),
        ]
    )
    assert [(p["name"], p["state"], p["info"]) for p in protocols] == [
        ("spine_1", "up", "Established"),
        ("spine_2", "start", "Active        Socket: Connection refused"),
    ]
    assert protocols[0]["details"]["Neighbor ID"] == "172.30.0.0"
    bfd = parse_bfd(
        [
            (1020, "bfd1:"),
            (1020, "IP address                Interface  State      Since         Interval  Timeout"),
            (1020, "172.30.0.2                eth2       Up         09:34:25.225    0.100    0.300"),
        ]
    )
    assert bfd == {"172.30.0.2": "Up"}


def test_expected_route_next_hops_are_ordered() -> None:
    route = next(r for r in P.bgp.expected_routes()["podnet_fabric_leaf-1"].values() if r.dst == "172.31.1.0/24")
    assert route.nexthops == (NextHop("172.30.0.0", "eth1"), NextHop("172.30.0.2", "eth2"))

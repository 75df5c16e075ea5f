"""plan(): pure, deterministic, stable address allocation and the host-gw State. No root needed."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from podnet import names
from podnet.plan import Plan, plan
from podnet.spec import load_text
from podnet.state import LOCAL_TABLE, NextHop, Route

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"
# These tests count pods, addresses and changes: leave the cluster DNS pod out of them
# (tests/test_plan.py::test_cluster_dns_adds_its_pod_and_service covers it).
NO_DNS = "  dns: {enabled: false}\n"


def example_text() -> str:
    return EXAMPLE.read_text().replace(
        "  nodes: [{name: node-1}, {name: node-2}]", NO_DNS + "  nodes: [{name: node-1}, {name: node-2}]"
    )


def cluster_yaml(
    nodes: tuple[str, ...] = ("node-1", "node-2"),
    name: str = "demo",
    pod_cidr: str = "10.244.0.0/16",
    mask: int = 24,
) -> str:
    node_list = "".join(f"  - name: {n}\n" for n in nodes)
    return (
        "apiVersion: podnet.io/v1alpha1\nkind: Cluster\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  podCIDR: {pod_cidr}\n  nodeCIDRMaskSize: {mask}\n  serviceCIDR: 10.96.0.0/12\n{NO_DNS}"
        "  underlay:\n    cidr: 172.31.0.0/24\n"
        f"  nodes:\n{node_list}"
    )


def namespace_yaml(name: str) -> str:
    return f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"


def pod_yaml(name: str, namespace: str | None = None, node: str | None = None, ports: tuple[int, ...] = ()) -> str:
    text = f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n"
    if namespace:
        text += f"  namespace: {namespace}\n"
    text += "spec:\n"
    if node:
        text += f"  nodeName: {node}\n"
    text += "  containers:\n  - name: main\n"
    if ports:
        text += "    ports:\n" + "".join(f"    - containerPort: {p}\n" for p in ports)
    return text


def make_plan(text: str, previous: dict | None = None) -> Plan:
    return plan(load_text(text, "f.yaml"), previous)


def pods(*names_: str) -> str:
    return "".join(pod_yaml(n) for n in names_)


# --- allocation ------------------------------------------------------------------------------


def test_node_blocks_gateways_and_underlay_ips_in_order() -> None:
    p = make_plan(cluster_yaml(("node-1", "node-2", "node-3")))
    nodes = p.topology.nodes
    assert [n.pod_cidr for n in nodes.values()] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert [n.gateway for n in nodes.values()] == ["10.244.0.1", "10.244.1.1", "10.244.2.1"]
    assert [n.underlay_ip for n in nodes.values()] == ["172.31.0.2", "172.31.0.3", "172.31.0.4"]
    assert all(n.underlay_prefix == 24 for n in nodes.values())
    assert p.allocations["node_cidr"] == {
        "node-1": "10.244.0.0/24",
        "node-2": "10.244.1.0/24",
        "node-3": "10.244.2.0/24",
    }


def test_pod_ips_start_at_dot_2_of_their_node_block() -> None:
    text = cluster_yaml() + "".join(pod_yaml(n, node="node-1") for n in ("a", "b")) + pod_yaml("c", node="node-2")
    p = make_plan(text)
    assert p.allocations["pod_ip"] == {"default/a": "10.244.0.2", "default/b": "10.244.0.3", "default/c": "10.244.1.2"}
    a = p.topology.pods["default/a"]
    assert (a.ip, a.prefix, a.node) == ("10.244.0.2", 24, "node-1")


def test_addresses_are_on_the_planned_interfaces() -> None:
    p = make_plan(cluster_yaml() + pod_yaml("a", node="node-2"))
    node = p.state.namespaces["podnet_demo_node-2"]
    assert {(a.ifname, a.cidr) for a in node.addresses} == {("eth0", "172.31.0.3/24"), ("cni0", "10.244.1.1/24")}
    pod = p.state.namespaces["podnet_demo_default_a"]
    assert {(a.ifname, a.cidr) for a in pod.addresses} == {("eth0", "10.244.1.2/24")}


def test_plan_is_deterministic() -> None:
    text = example_text()
    one, two = make_plan(text), make_plan(text)
    assert one.state.to_json() == two.state.to_json()
    assert one.state == two.state
    assert one.allocations == two.allocations
    assert one.topology.to_json() == two.topology.to_json()
    assert one.netexec_config == two.netexec_config


def test_plan_does_not_depend_on_hash_seed() -> None:
    script = (
        "import json, sys\n"
        "from podnet.spec import load_file\n"
        "from podnet.plan import plan\n"
        "p = plan(load_file(sys.argv[1]))\n"
        "print(json.dumps([p.state.to_json(), p.allocations, p.topology.to_json()], sort_keys=True))\n"
    )
    outputs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        result = subprocess.run(
            [sys.executable, "-c", script, str(EXAMPLE)], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1]


# --- stability across runs -------------------------------------------------------------------


def test_adding_a_pod_keeps_every_address() -> None:
    before = make_plan(cluster_yaml() + pods("a", "b", "c", "d"))
    # The new pod comes first in the file: allocation in file order would shift everyone.
    after = make_plan(cluster_yaml() + pods("new", "a", "b", "c", "d"), before.allocations)
    for kind in ("node_cidr", "underlay_ip", "pod_node", "pod_ip"):
        for owner, value in before.allocations[kind].items():
            assert after.allocations[kind][owner] == value, (kind, owner)
    new_ip = after.allocations["pod_ip"]["default/new"]
    assert new_ip not in before.allocations["pod_ip"].values()
    assert len(set(after.allocations["pod_ip"].values())) == 5


def test_removing_a_pod_keeps_the_others_and_does_not_hand_its_address_to_them() -> None:
    before = make_plan(cluster_yaml() + pods("a", "b", "c", "d", "e"))
    removed_ip = before.allocations["pod_ip"]["default/a"]
    after = make_plan(cluster_yaml() + pods("b", "c", "d", "e"), before.allocations)
    assert "default/a" not in after.allocations["pod_ip"]
    assert "default/a" not in after.allocations["pod_node"]
    for owner in ("default/b", "default/c", "default/d", "default/e"):
        assert after.allocations["pod_ip"][owner] == before.allocations["pod_ip"][owner]
        assert after.allocations["pod_node"][owner] == before.allocations["pod_node"][owner]
    assert removed_ip not in after.allocations["pod_ip"].values()
    assert "podnet_demo_default_a" not in after.state.namespaces


def test_removing_a_node_keeps_the_other_nodes_addresses() -> None:
    before = make_plan(cluster_yaml(("node-1", "node-2", "node-3")))
    after = make_plan(cluster_yaml(("node-1", "node-3")), before.allocations)
    assert set(after.topology.nodes) == {"node-1", "node-3"}
    for n in ("node-1", "node-3"):
        old, new = before.topology.nodes[n], after.topology.nodes[n]
        assert (new.pod_cidr, new.gateway, new.underlay_ip) == (old.pod_cidr, old.gateway, old.underlay_ip)


def test_previous_allocations_outside_the_ranges_are_replaced() -> None:
    before = make_plan(cluster_yaml(pod_cidr="10.244.0.0/16") + pods("a"))
    after = make_plan(cluster_yaml(pod_cidr="10.32.0.0/16") + pods("a"), before.allocations)
    assert after.allocations["node_cidr"] == {"node-1": "10.32.0.0/24", "node-2": "10.32.1.0/24"}
    assert after.allocations["pod_ip"] == {"default/a": "10.32.0.2"}


def check_blocks(p: Plan, pod_cidr: str, mask: int) -> None:
    net = ipaddress.IPv4Network(pod_cidr)
    for node in p.topology.nodes.values():
        block = ipaddress.IPv4Network(node.pod_cidr)
        assert block.subnet_of(net), (node.name, block, net)
        assert block.prefixlen == mask, (node.name, block)
        assert ipaddress.IPv4Address(node.gateway) in block
    for pod in p.topology.pods.values():
        assert ipaddress.IPv4Address(pod.ip) in ipaddress.IPv4Network(p.topology.nodes[pod.node].pod_cidr)
        assert pod.prefix == mask


def test_previous_blocks_do_not_survive_a_change_of_pod_cidr_with_a_large_split() -> None:
    # 100.0.0.0/8 split into /26 is 2**18 blocks: more than the planner checks by listing them all.
    before = make_plan(cluster_yaml(pod_cidr="10.244.0.0/16", mask=24) + pods("a"))
    after = make_plan(cluster_yaml(pod_cidr="100.0.0.0/8", mask=26) + pods("a"), before.allocations)
    check_blocks(after, "100.0.0.0/8", 26)


def test_previous_blocks_do_not_survive_a_change_of_node_mask() -> None:
    before = make_plan(cluster_yaml(pod_cidr="100.0.0.0/8", mask=24) + pods("a"))
    after = make_plan(cluster_yaml(pod_cidr="100.0.0.0/8", mask=25) + pods("a"), before.allocations)
    check_blocks(after, "100.0.0.0/8", 25)


# --- placement -------------------------------------------------------------------------------


def test_pods_without_node_go_to_the_least_loaded_node() -> None:
    text = cluster_yaml(("node-1", "node-2", "node-3"))
    text += pod_yaml("p1", node="node-1") + pod_yaml("p2", node="node-1")
    text += pods("a", "b", "c", "d")
    placement = make_plan(text).allocations["pod_node"]
    # Loads start at node-1: 2; ties go to the node declared first.
    assert placement == {
        "default/p1": "node-1",
        "default/p2": "node-1",
        "default/a": "node-2",
        "default/b": "node-3",
        "default/c": "node-2",
        "default/d": "node-3",
    }


def test_pods_spread_evenly() -> None:
    p = make_plan(cluster_yaml(("node-1", "node-2", "node-3")) + pods(*(f"p{i}" for i in range(9))))
    counts = {n: 0 for n in p.topology.nodes}
    for node in p.allocations["pod_node"].values():
        counts[node] += 1
    assert counts == {"node-1": 3, "node-2": 3, "node-3": 3}


def test_a_placed_pod_keeps_its_node() -> None:
    before = make_plan(cluster_yaml() + pods("a", "b"))
    assert before.allocations["pod_node"] == {"default/a": "node-1", "default/b": "node-2"}
    # node-2 is now much busier; b stays there all the same.
    text = cluster_yaml() + pods("a", "b") + "".join(pod_yaml(f"x{i}", node="node-2") for i in range(3))
    after = make_plan(text, before.allocations)
    assert after.allocations["pod_node"]["default/b"] == "node-2"
    assert after.allocations["pod_ip"]["default/b"] == before.allocations["pod_ip"]["default/b"]
    assert after.topology.pods["default/b"].node == "node-2"


def test_a_placed_pod_whose_node_is_gone_is_placed_again() -> None:
    before = make_plan(cluster_yaml(("node-1", "node-2")) + pods("a", "b"))
    after = make_plan(cluster_yaml(("node-1", "node-3")) + pods("a", "b"), before.allocations)
    assert after.allocations["pod_node"]["default/b"] == "node-3"


# --- names -----------------------------------------------------------------------------------


def test_macs_are_derived_from_ips() -> None:
    p = make_plan(cluster_yaml() + pod_yaml("a", node="node-1"))
    pod = p.topology.pods["default/a"]
    assert pod.mac == "0a:58:0a:f4:00:02"
    assert p.state.namespaces[pod.netns].links["eth0"].mac == "0a:58:0a:f4:00:02"
    node = p.state.namespaces["podnet_demo_node-1"]
    assert node.links["cni0"].mac == "0a:58:0a:f4:00:01"  # from the gateway 10.244.0.1
    assert node.links["eth0"].mac == "0a:58:ac:1f:00:02"  # from the underlay address 172.31.0.2
    assert names.mac_for_ip("10.244.1.2") == "0a:58:0a:f4:01:02"


def test_macs_are_unique() -> None:
    p = make_plan(example_text())
    macs = [link.mac for ns in p.state.namespaces.values() for link in ns.links.values() if link.mac]
    assert len(macs) == len(set(macs))
    assert all(m.startswith("0a:58:") for m in macs)


def test_namespace_names() -> None:
    p = make_plan(example_text())
    assert {n.netns for n in p.topology.nodes.values()} == {"podnet_demo_node-1", "podnet_demo_node-2"}
    assert p.topology.pods["shop/web-1"].netns == "podnet_demo_shop_web-1"
    assert p.topology.pods["default/client"].netns == "podnet_demo_default_client"
    expected = {"podnet_demo_node-1", "podnet_demo_node-2"}
    expected |= {f"podnet_demo_{pod.namespace}_{pod.name}" for pod in p.topology.pods.values()}
    assert expected <= set(p.state.namespaces)
    # Everything else (the underlay switch) is findable from the cluster name too, and is no node or pod name.
    for name in set(p.state.namespaces) - expected:
        assert name.startswith(names.cluster_prefix("demo"))
        assert "." in name.removeprefix(names.cluster_prefix("demo"))


def test_interface_names_fit_15_bytes() -> None:
    long = "x" * 63
    node = "n" * 63
    text = cluster_yaml((node, "node-2"), name="c" * 63) + namespace_yaml(long)
    text += pod_yaml("p" * 63, namespace=long, node=node) + pod_yaml("q" * 63, node="node-2")
    p = make_plan(text)
    for ns in p.state.namespaces.values():
        for link in ns.links.values():
            assert len(link.name.encode()) <= 15, (ns.name, link.name)
            if link.peer_name is not None:
                assert len(link.peer_name.encode()) <= 15, (ns.name, link.peer_name)


def test_veth_ends_point_at_each_other() -> None:
    p = make_plan(example_text())
    for ns in p.state.namespaces.values():
        for link in ns.links.values():
            if link.kind == "veth":
                peer = p.state.namespaces[link.peer_netns].links[link.peer_name]
                assert (peer.kind, peer.peer_netns, peer.peer_name) == ("veth", ns.name, link.name)


# --- host-gw ---------------------------------------------------------------------------------


def test_every_node_routes_to_every_other_nodes_block_via_its_underlay_ip() -> None:
    p = make_plan(cluster_yaml(("node-1", "node-2", "node-3")))
    nodes = p.topology.nodes.values()
    for node in nodes:
        routes = [r for r in p.state.namespaces[node.netns].routes.values() if r.proto != "kernel"]
        expected = {
            Route(other.pod_cidr, (NextHop(gateway=other.underlay_ip, dev="eth0"),))
            for other in nodes
            if other.name != node.name
        }
        assert set(routes) == expected, node.name


def test_pods_have_a_default_route_via_their_nodes_gateway() -> None:
    p = make_plan(example_text())
    for pod in p.topology.pods.values():
        gateway = p.topology.nodes[pod.node].gateway
        routes = [r for r in p.state.namespaces[pod.netns].routes.values() if r.proto != "kernel"]
        assert routes == [Route("0.0.0.0/0", (NextHop(gateway=gateway, dev="eth0"),))], pod.key


def test_nodes_forward() -> None:
    p = make_plan(example_text())
    for node in p.topology.nodes.values():
        assert p.state.namespaces[node.netns].sysctls["net.ipv4.ip_forward"] == "1"
    for pod in p.topology.pods.values():
        assert p.state.namespaces[pod.netns].sysctls.get("net.ipv4.ip_forward", "0") == "0"


def test_switches_bridge_without_ip_netfilter_and_nodes_with_it() -> None:
    """Nodes need bridged pod traffic to pass netfilter (Services); a switch is pure L2."""
    p = make_plan(example_text())
    for subnet in p.topology.subnets.values():
        sysctls = p.state.namespaces[subnet.switch_netns].sysctls
        assert sysctls["net.ipv4.ip_forward"] == "0"
        assert all(sysctls[f"net.bridge.bridge-nf-call-{t}"] == "0" for t in ("iptables", "ip6tables", "arptables"))
    for node in p.topology.nodes.values():
        assert p.state.namespaces[node.netns].sysctls["net.bridge.bridge-nf-call-iptables"] == "1"


def test_pod_veths_hang_on_the_node_bridge() -> None:
    p = make_plan(example_text())
    for pod in p.topology.pods.values():
        node = p.state.namespaces[p.topology.nodes[pod.node].netns]
        host = node.links[pod.host_veth]
        assert (host.kind, host.master, host.peer_netns, host.peer_name) == ("veth", "cni0", pod.netns, "eth0")
        assert node.links["cni0"].kind == "bridge"


# --- netexec ---------------------------------------------------------------------------------


def test_no_netexec_without_ports() -> None:
    p = make_plan(cluster_yaml() + pods("a", "b"))
    assert p.state.processes == {}
    assert p.netexec_config["pods"] == []


def test_netexec_when_a_pod_has_ports() -> None:
    p = make_plan(cluster_yaml() + pod_yaml("a") + pod_yaml("web", ports=(80,)))
    assert set(p.state.processes) == {"netexec"}
    assert [e["pod"] for e in p.netexec_config["pods"]] == ["default/web"]
    assert p.netexec_config["pods"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]


def test_netexec_digest_follows_the_ports() -> None:
    def digest(ports: tuple[int, ...]) -> str:
        return make_plan(cluster_yaml() + pod_yaml("web", ports=ports)).state.processes["netexec"].digest

    assert digest((80,)) == digest((80,))
    assert digest((80,)) != digest((8080,))
    assert digest((80,)) != digest((80, 443))


def test_cluster_dns_adds_its_pod_and_service() -> None:
    p = plan(load_text(EXAMPLE.read_text(), "f.yaml"))
    dns_pod = p.topology.pods["kube-system/coredns"]
    service = p.topology.services["kube-system/kube-dns"]
    assert service.cluster_ip == "10.96.0.10"  # the tenth address, as kubeadm places kube-dns
    assert [e.ip for port in service.ports for e in port.endpoints] == [dns_pod.ip, dns_pod.ip]
    assert "kube-system/coredns" not in {s["pod"] for s in p.netexec_config["pods"]}  # DNS daemon serves it
    assert p.dns_config is not None and p.dns_config["netns"] == dns_pod.netns
    web = p.state.namespaces[p.topology.pods["shop/web-1"].netns]
    assert (
        web.resolv_conf
        == "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert "dns" in p.state.processes


def test_every_address_has_the_kernels_routes_and_no_planned_route_takes_their_place() -> None:
    from podnet.plan.connected import kernel_routes

    for example in sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml")):
        p = make_plan(example.read_text())
        for ns in p.state.namespaces.values():
            expected = kernel_routes(ns)
            assert [ns.routes[r.key] for r in expected] == expected, (example.name, ns.name)
            # lo's 127.0.0.0/8 and 127.0.0.1, and a local route for each address (in the local
            # table; a node's service CIDR is a local route of the main table, plan.services)
            local = [r for r in ns.routes.values() if r.type == "local" and r.table == LOCAL_TABLE]
            assert len(local) == 2 + len(ns.addresses), ns.name

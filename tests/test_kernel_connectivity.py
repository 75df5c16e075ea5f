"""Pod networking on the real kernel: one shared cluster, read-only tests against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import cluster as usecases
from podnet.cluster import observe_cluster
from podnet.kernel import netns
from tests.conftest import Cluster, cluster_yaml, leftovers, run_cli, status_json, unique_name

pytestmark = pytest.mark.root

PODS = [
    {"name": "a1", "namespace": "shop", "node": "node-1", "ports": [(80, "TCP"), (53, "UDP")]},
    {"name": "a2", "namespace": "shop", "node": "node-1", "ports": [(80, "TCP")]},
    {"name": "b1", "namespace": "shop", "node": "node-2", "ports": [(80, "TCP"), (53, "UDP")]},
    {"name": "client", "node": "node-2"},
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    name = unique_name("c")
    file = tmp_path_factory.mktemp("shared") / "cluster.yaml"
    c = Cluster(name, Path(file))
    c.write(cluster_yaml(name, pods=PODS))
    c.up()
    yield c
    usecases.down(name)
    assert leftovers(name) == []


def ip_of(c: Cluster, key: str) -> str:
    return c.pod(key)["ip"]


def test_pod_to_pod_same_node_tcp(shared: Cluster) -> None:
    target = ip_of(shared, "shop/a1")
    assert shared.curl("shop/a2", f"http://{target}/hostname") == "a1"
    assert shared.curl("shop/a2", f"http://{target}/clientip").split(":")[0] == ip_of(shared, "shop/a2")


def test_pod_to_pod_across_nodes_tcp(shared: Cluster) -> None:
    target = ip_of(shared, "shop/b1")
    assert shared.curl("shop/a1", f"http://{target}/hostname") == "b1"
    # host-gw routes: the packet keeps the pod's own source address across nodes.
    assert shared.curl("shop/a1", f"http://{target}/clientip").split(":")[0] == ip_of(shared, "shop/a1")
    assert shared.curl("client", f"http://{ip_of(shared, 'shop/a1')}/echo?msg=hello%20podnet") == "hello podnet"


def test_pod_to_pod_udp(shared: Cluster) -> None:
    assert shared.udp("client", ip_of(shared, "shop/a1"), 53, "hostname") == "a1"
    assert shared.udp("shop/a1", ip_of(shared, "shop/b1"), 53, "echo ping") == "ping"
    client_seen = shared.udp("client", ip_of(shared, "shop/b1"), 53, "clientip")
    assert client_seen.split(":")[0] == ip_of(shared, "client")


def test_status_json_has_the_documented_keys(shared: Cluster) -> None:
    data = status_json(shared.name)
    assert data["cluster"] == shared.name
    assert {n["name"] for n in data["nodes"]} == {"node-1", "node-2"}
    for node in data["nodes"]:
        assert {"name", "netns", "underlay_ip", "pod_cidr"} <= node.keys()
        assert netns.exists(node["netns"])
    assert len(data["pods"]) == len(PODS) + 1  # and the cluster DNS pod, kube-system/coredns
    assert any(p["namespace"] == "kube-system" and p["name"] == "coredns" for p in data["pods"])
    for pod in data["pods"]:
        assert {"namespace", "name", "node", "ip", "mac", "netns", "ready"} <= pod.keys()
        assert pod["ready"] is True
        assert netns.exists(pod["netns"])
    listed = run_cli("status", "-c", shared.name, check=True).stdout
    assert "node-1" in listed and "a1" in listed


def test_observed_state_equals_plan(shared: Cluster) -> None:
    _, p = usecases.load_applied(shared.name)
    observed, extra = observe_cluster(shared.name, p.state)
    assert extra == []
    assert set(observed.namespaces) == set(p.state.namespaces)
    for name, want in p.state.namespaces.items():
        have = observed.namespaces[name]
        for link_name, link in want.links.items():
            assert link_name in have.links, f"{name}: missing {link_name}"
            assert have.links[link_name].satisfies(link), f"{name}: {have.links[link_name]} != {link}"
        assert set(have.links) == set(want.links), name
        assert have.addresses == want.addresses, name
        assert have.routes == want.routes, name
        assert have.neighbours == want.neighbours, name
        assert {k: have.sysctls.get(k) for k in want.sysctls} == want.sysctls, name
        assert have.nft == want.nft, name
    assert set(observed.processes) == set(p.state.processes)
    assert observed.processes["netexec"].digest == p.state.processes["netexec"].digest


def test_up_again_changes_nothing(shared: Cluster) -> None:
    proc = run_cli("up", str(shared.file), "-o", "json", check=True)
    import json

    assert json.loads(proc.stdout)["changes"] == 0


def test_exec_forwards_exit_code_and_output(shared: Cluster) -> None:
    proc = run_cli("exec", "-c", shared.name, "shop/a1", "--", "sh", "-c", "hostname -I; exit 7")
    assert proc.returncode == 7
    assert ip_of(shared, "shop/a1") in proc.stdout
    node = run_cli("exec", "-c", shared.name, "node-1", "--", "ip", "-4", "route", check=True).stdout
    assert ip_of(shared, "shop/b1").rsplit(".", 1)[0] in node  # the route to node-2's block


def test_exec_unknown_target_is_a_usage_error(shared: Cluster) -> None:
    proc = run_cli("exec", "-c", shared.name, "shop/nope", "--", "true")
    assert proc.returncode == 2
    assert "no pod, node, router or host" in proc.stderr and "Traceback" not in proc.stderr

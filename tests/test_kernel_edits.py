"""One `up` reaches the plan after any edit of the cluster file, and back again.

Every edit below is applied to a running cluster, then undone: after each `up` the kernel
holds exactly the plan and a second `up` has nothing to do. What one `up` changes can take
other things with it (deleting a link's last address flushes its routes and neighbours, a new
MAC flushes the neighbours, a recreated VXLAN device loses its FDB): the changes must be
ordered and completed so that nothing is left for a second run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from podnet import cluster as usecases
from tests.conftest import assert_observed_equals_plan

pytestmark = pytest.mark.root

Docs = list[dict]


def base(name: str, backend: str = "host-gw") -> Docs:
    cluster = {
        "apiVersion": "podnet.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {
            "podCIDR": "10.244.0.0/16",
            "nodeCIDRMaskSize": 24,
            "serviceCIDR": "10.96.0.0/12",
            "backend": backend,
            "underlay": {"cidr": "172.31.0.0/24", "mtu": 1500},
            "nodes": [{"name": "node-1"}, {"name": "node-2"}, {"name": "node-3"}],
        },
    }
    return [
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        pod("web-1", "node-1", {"app": "web"}, [80]),
        pod("web-2", "node-2", {"app": "web"}, [80]),
        pod("db", "node-3", {"app": "db"}, [5432]),
        pod("client", "node-1", {"app": "client"}, []),
    ]


def pod(name: str, node: str | None, labels: dict, ports: list[int]) -> dict:
    spec: dict = {"containers": [{"name": "main", "ports": [{"containerPort": p} for p in ports]}]}
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": spec,
    }


def spec_of(docs: Docs) -> dict:
    return docs[0]["spec"]


def find(docs: Docs, name: str) -> dict:
    return next(d for d in docs if d["metadata"]["name"] == name and d["kind"] != "Cluster")


def mask(size: int) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        spec_of(docs)["nodeCIDRMaskSize"] = size

    return edit


def add_node(docs: Docs) -> None:
    spec_of(docs)["nodes"].append({"name": "node-4"})
    docs.append(pod("web-4", "node-4", {"app": "web"}, [80]))


def remove_node(docs: Docs) -> None:
    spec_of(docs)["nodes"].pop()  # node-3: db moves to another node
    del find(docs, "db")["spec"]["nodeName"]


def move_pod(docs: Docs) -> None:
    find(docs, "web-1")["spec"]["nodeName"] = "node-2"


def backend(name: str) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        spec_of(docs)["backend"] = name

    return edit


def vxlan(**settings: int) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        spec_of(docs)["vxlan"] = settings

    return edit


def mtu(docs: Docs) -> None:
    spec_of(docs)["underlay"]["mtu"] = 1400


def underlay_cidr(docs: Docs) -> None:
    spec_of(docs)["underlay"]["cidr"] = "172.30.0.0/24"


def pod_cidr(docs: Docs) -> None:
    spec_of(docs)["podCIDR"] = "10.245.0.0/16"


def add_edge(docs: Docs) -> None:
    spec_of(docs)["underlay"]["routers"] = [{"name": "edge", "subnets": ["underlay"], "uplink": "internet"}]
    spec_of(docs)["external"] = {
        "name": "internet",
        "cidr": "203.0.113.0/24",
        "hosts": [{"name": "ext", "address": "203.0.113.10", "ports": [{"containerPort": 80}]}],
    }


def add_service(docs: Docs) -> None:
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "type": "NodePort", "ports": [{"port": 80, "targetPort": 80}]},
        }
    )


def add_policy(docs: Docs) -> None:
    docs.append(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "web-from-client", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
            },
        }
    )


def relabel(docs: Docs) -> None:
    find(docs, "web-2")["metadata"]["labels"] = {"app": "db"}


def change_port(docs: Docs) -> None:
    find(docs, "web-1")["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]


def add_pod(docs: Docs) -> None:
    docs.append(pod("web-3", None, {"app": "web"}, [80]))


def remove_pod(docs: Docs) -> None:
    docs.remove(find(docs, "web-2"))


def no_dns(docs: Docs) -> None:
    spec_of(docs)["dns"] = {"enabled": False}


def both(*edits: Callable[[Docs], None]) -> Callable[[Docs], None]:
    def edit(docs: Docs) -> None:
        for e in edits:
            e(docs)

    return edit


EDITS: dict[str, tuple[str, Callable[[Docs], None]]] = {
    "mask 24 -> 25": ("host-gw", mask(25)),
    "mask 24 -> 23": ("host-gw", mask(23)),
    "vxlan mask 24 -> 25": ("vxlan", mask(25)),
    "pod CIDR moved": ("host-gw", pod_cidr),
    "node added": ("host-gw", add_node),
    "node removed": ("host-gw", remove_node),
    "vxlan node removed": ("vxlan", remove_node),
    "pod moved to another node": ("host-gw", move_pod),
    "host-gw -> vxlan": ("host-gw", backend("vxlan")),
    "vxlan VNI changed": ("vxlan", vxlan(vni=7)),
    "vxlan port changed": ("vxlan", vxlan(port=8472)),
    "underlay MTU changed": ("vxlan", mtu),
    "underlay CIDR changed": ("host-gw", underlay_cidr),
    "edge router and external host added": ("host-gw", add_edge),
    "service added": ("host-gw", add_service),
    "policy added": ("host-gw", add_policy),
    "pod relabelled under a policy": ("host-gw", both(add_policy, relabel)),
    "pod port changed": ("host-gw", change_port),
    "pod added": ("host-gw", add_pod),
    "pod removed": ("host-gw", remove_pod),
    "DNS disabled": ("host-gw", no_dns),
}


def up_converges(c) -> None:
    """This `up` leaves nothing for the next one, and the kernel holds exactly the plan."""
    c.up()
    again = c.up()
    assert again["changes"] == 0, again["details"]
    assert_observed_equals_plan(c.name)


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_one_up_reaches_the_plan_after_an_edit_and_after_undoing_it(make_cluster, edit: str) -> None:
    start, change = EDITS[edit]
    docs: Docs = []

    def write(name: str) -> str:
        docs.extend(base(name, start))
        return yaml.safe_dump_all(docs, sort_keys=False)

    c = make_cluster(write)
    usecases.up(str(c.file))
    edited = copy.deepcopy(docs)
    change(edited)
    c.write(yaml.safe_dump_all(edited, sort_keys=False))
    up_converges(c)
    c.write(yaml.safe_dump_all(docs, sort_keys=False))
    up_converges(c)

"""up/down lifecycle on the real kernel: idempotence, incremental change, clean-up, crashes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from podnet import cluster as usecases
from podnet.cluster import observe_cluster
from podnet.reconcile import diff
from podnet.store import cluster_dir
from tests.conftest import assert_observed_equals_plan, cluster_yaml, leftovers, run_cli
from tests.rootsnap import differences, snapshot

pytestmark = pytest.mark.root

BASE = [
    {"name": "web-1", "namespace": "shop", "node": "node-1", "ports": [(80, "TCP")]},
    {"name": "web-2", "namespace": "shop", "node": "node-2", "ports": [(80, "TCP"), (53, "UDP")]},
    {"name": "client"},
]


def converged(name: str) -> bool:
    """True when the kernel holds exactly the plan: diffing again finds nothing to do."""
    _, p = usecases.load_applied(name)
    observed, extra = observe_cluster(name, p.state)
    return diff(p.state, observed, extra) == []


def test_down_leaves_root_namespace_identical(make_cluster) -> None:
    before = snapshot()
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    c.up()
    during = snapshot()
    # Even while the cluster runs, the root namespace holds nothing of it.
    assert differences(before, during).keys() <= {"netns"}
    down = run_cli("down", "-c", c.name, "-o", "json", check=True)
    assert json.loads(down.stdout)["namespaces"] == 1 + 2 + 3 + 1  # the switch, 2 nodes, 3 pods, the DNS pod
    assert differences(before, snapshot()) == {}
    assert leftovers(c.name) == []


def test_incremental_change_touches_only_the_difference(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    c.up()
    ip_before = {p["name"]: p["ip"] for p in c.status()["pods"]}

    # Add a pod: one namespace, one veth pair, its settings, and a netexec reload.
    c.write(cluster_yaml(c.name, pods=[*BASE, {"name": "web-3", "namespace": "shop", "ports": [(80, "TCP")]}]))
    added = c.up()
    assert added["summary"]["add_netns"] == 1
    assert added["summary"]["add_veth"] == 1
    assert added["summary"]["reload_process"] == 2  # netexec serves it; DNS learns its pod record
    assert [d for d in added["details"] if d.startswith("add_netns")] == [f"add_netns podnet_{c.name}_shop_web-3"]
    # Only the new pod's namespace and its node change (and the daemons reload); nothing is deleted.
    pod_ns = f"podnet_{c.name}_shop_web-3"
    node_ns = f"podnet_{c.name}_" + next(p["node"] for p in c.status()["pods"] if p["name"] == "web-3")
    touched = {d.split()[1] for d in added["details"] if not d.startswith("reload_process")}
    assert touched <= {pod_ns, node_ns}, touched
    assert not [d for d in added["details"] if d.startswith("del_")]
    after = {p["name"]: p["ip"] for p in c.status()["pods"]}
    assert {k: after[k] for k in ip_before} == ip_before  # existing pods keep their addresses
    assert c.curl("client", f"http://{after['web-3']}/hostname") == "web-3"

    # Remove a pod: exactly its namespace goes.
    c.write(cluster_yaml(c.name, pods=[*BASE[:2], {"name": "web-3", "namespace": "shop", "ports": [(80, "TCP")]}]))
    removed = c.up()
    assert removed["summary"].get("del_netns") == 1
    assert "add_netns" not in removed["summary"]
    assert any("default_client" in d for d in removed["details"] if d.startswith("del_netns"))

    # Add a node: its namespace, its underlay port, and a route to it on every other node.
    c.write(
        cluster_yaml(c.name, nodes=3, pods=[*BASE[:2], {"name": "web-3", "namespace": "shop", "ports": [(80, "TCP")]}])
    )
    grown = c.up()
    assert grown["summary"]["add_netns"] == 1
    route_changes = [d for d in grown["details"] if d.startswith("add_route")]
    # node-1 and node-2 learn node-3; node-3 learns both, and routes the service CIDR itself.
    assert len(route_changes) == 2 + 2 + 1
    assert [d for d in route_changes if "10.96.0.0/12" in d] == [
        f"add_route podnet_{c.name}_node-3 route 10.96.0.0/12 via lo"
    ]
    assert c.up()["changes"] == 0
    assert converged(c.name)


def test_up_is_idempotent_from_the_cli(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    first = json.loads(run_cli("up", str(c.file), "-o", "json", check=True).stdout)
    assert first["cluster"] == c.name and first["changes"] > 0
    second = json.loads(run_cli("up", str(c.file), "-o", "json", check=True).stdout)
    assert second["changes"] == 0
    dry = json.loads(run_cli("up", str(c.file), "--dry-run", "-o", "json", check=True).stdout)
    assert dry["changes"] == 0 and dry["dry_run"] is True


def test_dry_run_creates_nothing(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    dry = json.loads(run_cli("up", str(c.file), "--dry-run", "-o", "json", check=True).stdout)
    assert dry["changes"] > 0
    assert leftovers(c.name) == []


@pytest.mark.parametrize("crash_after", [1, 2, 4, 6, 9])
def test_crash_during_up_is_repaired_by_next_up(make_cluster, crash_after: int) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    crashed = run_cli("up", str(c.file), env={"PODNET_TEST_CRASH_AFTER": str(crash_after)})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL: no clean-up code ran
    run_cli("up", str(c.file), check=True)
    assert converged(c.name)
    assert all(p["ready"] for p in c.status()["pods"])
    web2 = c.pod("shop/web-2")["ip"]
    assert c.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"


@pytest.mark.parametrize("crash_after", [2, 5])
def test_crash_during_up_is_cleaned_by_down(make_cluster, crash_after: int) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    crashed = run_cli("up", str(c.file), env={"PODNET_TEST_CRASH_AFTER": str(crash_after)})
    assert crashed.returncode == -9
    run_cli("down", "-c", c.name, check=True)
    assert leftovers(c.name) == []


def test_down_works_without_state(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    c.up()
    shutil.rmtree(cluster_dir(c.name))
    result = json.loads(run_cli("down", "-c", c.name, "-o", "json", check=True).stdout)
    assert result["namespaces"] == 7 and result["processes"] == 2  # with the DNS pod and the DNS daemon
    assert leftovers(c.name) == []


def test_down_of_one_cluster_leaves_another_alone(make_cluster) -> None:
    a = make_cluster(lambda n: cluster_yaml(n, pods=BASE[:1]))
    b = make_cluster(lambda n: cluster_yaml(n, pods=BASE[:1]))
    a.up()
    b.up()
    a.down()
    assert leftovers(a.name) == []
    assert converged(b.name)
    assert all(p["ready"] for p in b.status()["pods"])


def test_concurrent_ups_do_not_corrupt(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    env = {**os.environ}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "podnet", "up", str(c.file), "-o", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    changes = sorted(json.loads(out)["changes"] for out, _ in results)
    assert changes[0] == 0 and changes[1] > 0  # one built it, the other waited and found nothing to do
    assert converged(c.name)


def test_deleted_pod_namespace_is_recreated_and_served(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    c.up()
    subprocess.run(["ip", "netns", "del", c.pod("shop/web-2")["netns"]], check=True)
    result = c.up()
    assert result["summary"]["add_netns"] == 1
    assert result["summary"]["reload_process"] == 1  # netexec reopens its sockets in the new namespace
    assert c.curl("shop/web-1", f"http://{c.pod('shop/web-2')['ip']}/hostname") == "web-2"
    assert converged(c.name)


@pytest.mark.parametrize(
    "table,route",
    [("main", "{block} dev cni0"), ("local", "local {gateway} dev cni0")],
    ids=["connected", "local"],
)
def test_a_deleted_kernel_route_is_drift_and_up_repairs_it(make_cluster, table: str, route: str) -> None:
    """The kernel adds routes for every address (a connected one in main, a local one in local):
    the plan depends on them, so one that goes missing is drift, in trace and in up."""
    c = make_cluster(lambda n: cluster_yaml(n, pods=BASE))
    c.up()
    node = next(n for n in c.status()["nodes"] if n["name"] == "node-1")
    gateway = node["pod_cidr"].replace(".0/24", ".1")
    subprocess.run(
        ["ip", "-n", node["netns"], "route", "del", *route.format(block=node["pod_cidr"], gateway=gateway).split()],
        check=True,
    )
    web2 = c.pod("shop/web-2")["ip"]
    traced = usecases.trace("shop/web-2", "shop/web-1", cluster=c.name)
    assert any(d.startswith(f"add_route {node['netns']}") for d in traced.drift), traced.drift
    repaired = c.up()
    assert repaired["summary"] == {"add_route": 1}, repaired["details"]
    assert converged(c.name)
    assert_observed_equals_plan(c.name)
    assert usecases.trace("shop/web-2", "shop/web-1", cluster=c.name).drift == []
    assert c.curl("shop/web-1", f"http://{web2}/hostname") == "web-2"


def test_up_removing_nodes_and_pods_is_done_when_it_returns(make_cluster) -> None:
    """A deleted namespace takes its veth ends with it only when the kernel frees it, which
    waits for every process (a shell in it, a socket of a daemon) to let go: `up` must not
    leave the far ends behind meanwhile, nor must `trace` see them."""
    pods = [*BASE, {"name": "db", "namespace": "shop", "node": "node-3", "ports": [(5432, "TCP")]}]
    c = make_cluster(lambda n: cluster_yaml(n, nodes=3, pods=pods))
    c.up()
    held = [c.pod("shop/db")["netns"], c.pod("default/client")["netns"], f"podnet_{c.name}_node-3"]
    fds = [os.open(f"/run/netns/{ns}", os.O_RDONLY) for ns in held]  # as a shell inside each would
    try:
        c.write(cluster_yaml(c.name, nodes=2, pods=BASE[:2]))
        removed = c.up()
        assert removed["summary"]["del_netns"] == 3
        assert_observed_equals_plan(c.name)
        assert usecases.trace("shop/web-1", "shop/web-2", cluster=c.name).drift == []
        assert c.up()["changes"] == 0
    finally:
        for fd in fds:
            os.close(fd)

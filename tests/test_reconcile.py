"""diff(desired, observed): ordered, minimal Changes. Pure: observed States are built by hand."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from podnet.plan import Plan, plan
from podnet.reconcile import PHASES, Change, diff
from podnet.spec import load_text
from podnet.state import Address, Link, NextHop, Process, Route, State

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"
# These tests count pods, addresses and changes: leave the cluster DNS pod out of them
# (tests/test_plan.py::test_cluster_dns_adds_its_pod_and_service covers it).
NO_DNS = "  dns: {enabled: false}\n"


def example_text() -> str:
    return EXAMPLE.read_text().replace(
        "  nodes: [{name: node-1}, {name: node-2}]", NO_DNS + "  nodes: [{name: node-1}, {name: node-2}]"
    )


NODE1 = "podnet_demo_node-1"
DB = "podnet_demo_shop_db"


def planned(text: str | None = None, previous: dict | None = None) -> Plan:
    return plan(load_text(text if text is not None else example_text(), "f.yaml"), previous)


def ops(changes: list[Change], *wanted: str) -> list[Change]:
    return [c for c in changes if c.op in wanted]


def keys(changes: list[Change]) -> list[tuple[str, str, object]]:
    return [(c.op, c.netns, c.obj) for c in changes]


def first(changes: list[Change], op: str) -> int:
    return next(i for i, c in enumerate(changes) if c.op == op)


def last(changes: list[Change], op: str) -> int:
    return max(i for i, c in enumerate(changes) if c.op == op)


def veth_pairs(state: State) -> set[frozenset[tuple[str, str]]]:
    return {
        frozenset({(ns.name, link.name), (link.peer_netns, link.peer_name)})
        for ns in state.namespaces.values()
        for link in ns.links.values()
        if link.kind == "veth"
    }


# --- nothing to do ---------------------------------------------------------------------------


def test_diff_of_identical_states_is_empty() -> None:
    desired = planned().state
    assert diff(desired, copy.deepcopy(desired)) == []
    assert diff(desired, copy.deepcopy(desired), owned_extra=[]) == []


def test_diff_does_not_modify_its_inputs() -> None:
    desired = planned().state
    observed = State()
    before = copy.deepcopy(desired)
    diff(desired, observed)
    assert desired == before
    assert observed == State()


# --- from nothing ----------------------------------------------------------------------------


def test_from_empty_creates_every_namespace() -> None:
    desired = planned().state
    changes = diff(desired, State())
    assert sorted(c.netns for c in ops(changes, "add_netns")) == sorted(desired.namespaces)
    assert not [c for c in changes if c.op.startswith(("del_", "stop_"))]


def test_from_empty_creates_each_veth_pair_once() -> None:
    desired = planned().state
    changes = diff(desired, State())
    created = [frozenset({(c.netns, c.obj.name), (c.obj.peer_netns, c.peer.name)}) for c in ops(changes, "add_veth")]
    assert len(created) == len(set(created)), "a pair is created twice"
    assert set(created) == veth_pairs(desired)
    for c in ops(changes, "add_veth"):
        assert c.peer == desired.namespaces[c.obj.peer_netns].links[c.peer.name]
        assert c.obj == desired.namespaces[c.netns].links[c.obj.name]
        # The other end gets its settings (master, up) in its own namespace.
        assert ("set_link", c.obj.peer_netns, c.peer) in keys(changes), c.describe()


def test_from_empty_creates_bridges_addresses_routes_sysctls_and_processes() -> None:
    desired = planned().state
    changes = diff(desired, State())
    bridges = {
        (ns.name, link) for ns in desired.namespaces.values() for link in ns.links.values() if link.kind == "bridge"
    }
    assert {(c.netns, c.obj) for c in ops(changes, "add_link")} == bridges
    addresses = {(ns.name, a) for ns in desired.namespaces.values() for a in ns.addresses}
    assert {(c.netns, c.obj) for c in ops(changes, "add_addr")} == addresses
    assert len(ops(changes, "add_addr")) == len(addresses)
    # The kernel adds the routes of each address itself; podnet adds the others.
    routes = {(ns.name, r) for ns in desired.namespaces.values() for r in ns.routes.values() if r.proto != "kernel"}
    assert {(c.netns, c.obj) for c in ops(changes, "add_route")} == routes
    assert len(ops(changes, "add_route")) == len(routes)
    # Nothing is assumed of a new namespace's sysctls (the kernel copies the host's): all are written.
    sysctls = {(ns.name, (key, value)) for ns in desired.namespaces.values() for key, value in ns.sysctls.items()}
    assert {(c.netns, c.obj) for c in ops(changes, "set_sysctl")} == sysctls
    assert len(ops(changes, "set_sysctl")) == len(sysctls)
    assert (NODE1, ("net.ipv4.ip_forward", "1")) in sysctls
    assert [c.obj for c in ops(changes, "start_process")] == [desired.processes["netexec"]]
    # A new namespace's loopback is down: it is brought up.
    for name in desired.namespaces:
        assert ("set_link", name, desired.namespaces[name].links["lo"]) in keys(changes)


def test_changes_are_ordered() -> None:
    changes = diff(planned().state, State())
    assert [c.phase for c in changes] == sorted(c.phase for c in changes)
    assert last(changes, "add_netns") < first(changes, "add_veth")
    assert last(changes, "add_link") < first(changes, "add_veth")  # bridges before the veths enslaved to them
    assert last(changes, "add_veth") < first(changes, "add_addr")
    assert last(changes, "add_addr") < first(changes, "add_route")
    assert all(c.op in PHASES for c in changes)


def test_deletions_come_first() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    del observed.namespaces[DB]  # to be created, and with it the pair of veths
    node = observed.namespaces[NODE1]
    del node.links[desired.namespaces[DB].links["eth0"].peer_name]
    node.addresses.add(Address("cni0", "10.244.0.99/24"))  # to be deleted
    node.add_route(Route("192.0.2.0/24", (NextHop(gateway="172.31.0.3", dev="eth0"),)))  # to be deleted
    node.add_link(Link("dummy0", "dummy"))  # to be deleted
    changes = diff(desired, observed, owned_extra=["podnet_demo_shop_gone"])
    deletions = [i for i, c in enumerate(changes) if c.op.startswith(("del_", "stop_"))]
    creations = [i for i, c in enumerate(changes) if not c.op.startswith(("del_", "stop_"))]
    assert {changes[i].op for i in deletions} == {"del_netns", "del_addr", "del_route", "del_link"}
    assert "add_netns" in {changes[i].op for i in creations}
    assert max(deletions) < min(creations)
    assert first(changes, "del_netns") < first(changes, "del_route") < first(changes, "del_link")


# --- incremental changes ---------------------------------------------------------------------


def test_removed_pod_deletes_its_namespace_only() -> None:
    before = planned()
    text = example_text()
    spec = load_text(text, "f.yaml")
    spec.pods = [p for p in spec.pods if p.key != "shop/db"]
    after = plan(spec, before.allocations)
    observed = copy.deepcopy(before.state)
    extra = [n for n in observed.namespaces if n not in after.state.namespaces]
    assert extra == [DB]
    changes = diff(after.state, observed, extra)
    assert [c.netns for c in ops(changes, "del_netns")] == [DB]
    assert not ops(changes, "add_netns", "add_veth", "add_link", "add_addr", "add_route", "del_addr", "del_route")
    # Nothing of any other pod is touched.
    others = {p.netns for p in after.topology.pods.values()}
    assert not [c for c in changes if c.netns in others]
    # The node-side end of the removed pod's veth is deleted too: the kernel would take it
    # with the namespace only once every process inside has let go.
    host_veth = before.topology.pods["shop/db"].host_veth
    (unplugged,) = ops(changes, "del_link")
    assert (unplugged.netns, unplugged.obj.name) == (NODE1, host_veth)
    assert unplugged.reason == f"its peer's namespace {DB} is deleted"
    # The netexec daemon no longer serves the pod.
    assert [c.op for c in changes if isinstance(c.obj, Process)] == ["reload_process"]


def test_added_pod_creates_only_what_it_needs() -> None:
    before = planned()
    new_pod = (
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: new}\nspec: {nodeName: node-2, containers: [{name: main}]}\n"
    )
    after = planned(example_text() + new_pod, before.allocations)
    changes = diff(after.state, copy.deepcopy(before.state))
    new_ns = after.topology.pods["default/new"].netns
    assert [c.netns for c in ops(changes, "add_netns")] == [new_ns]
    assert len(ops(changes, "add_veth")) == 1
    assert not [c for c in changes if c.op.startswith("del_")]
    assert {c.netns for c in changes} == {new_ns, "podnet_demo_node-2"}


def test_extra_address_is_deleted() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    extra = Address("cni0", "10.244.0.99/24")
    observed.namespaces[NODE1].addresses.add(extra)
    gateway = next(a for a in desired.namespaces[NODE1].addresses if a.ifname == "cni0")
    # Deleting a primary address takes the secondaries of its subnet along: cni0's own is put again.
    assert keys(diff(desired, observed)) == [("del_addr", NODE1, extra), ("add_addr", NODE1, gateway)]


def test_extra_route_is_deleted() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    extra = Route("192.0.2.0/24", (NextHop(gateway="172.31.0.3", dev="eth0"),))
    observed.namespaces[NODE1].add_route(extra)
    assert keys(diff(desired, observed)) == [("del_route", NODE1, extra)]


def test_changed_route_is_replaced() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    ns = observed.namespaces[DB]
    key = (254, "0.0.0.0/0", 0)
    ns.routes[key] = dataclasses.replace(ns.routes[key], nexthops=(NextHop(gateway="10.244.0.77", dev="eth0"),))
    assert keys(diff(desired, observed)) == [("add_route", DB, desired.namespaces[DB].routes[key])]


def test_missing_address_is_added() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    (addr,) = observed.namespaces[DB].addresses
    observed.namespaces[DB].addresses.clear()
    assert keys(diff(desired, observed)) == [("add_addr", DB, addr)]


def test_link_settings_are_set_in_place() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    links = observed.namespaces[DB].links
    links["eth0"] = dataclasses.replace(links["eth0"], up=False, mtu=1400)
    # Only what differs is set (setting a MAC again would flush the link's neighbours).
    wanted = dataclasses.replace(desired.namespaces[DB].links["eth0"], mac=None)
    assert keys(diff(desired, observed)) == [("set_link", DB, wanted)]


def test_link_with_wrong_kind_is_recreated() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    links = observed.namespaces[NODE1].links
    links["cni0"] = dataclasses.replace(links["cni0"], kind="dummy")
    changes = diff(desired, observed)
    (delete,) = ops(changes, "del_link")
    (add,) = ops(changes, "add_link")
    assert (delete.netns, delete.obj.name, delete.obj.kind) == (NODE1, "cni0", "dummy")
    assert "kind" in delete.reason and "bridge" in delete.reason
    assert "kind" in delete.describe()
    assert (add.netns, add.obj) == (NODE1, desired.namespaces[NODE1].links["cni0"])
    assert changes.index(delete) < changes.index(add)
    # The new link has none of the old one's addresses: they are added again.
    gateway = next(a for a in desired.namespaces[NODE1].addresses if a.ifname == "cni0")
    assert ("add_addr", NODE1, gateway) in keys(changes)
    assert not ops(changes, "del_addr")


def test_recreated_bridge_gets_its_ports_back() -> None:
    # Deleting a bridge releases its ports; creating it again does not enslave them again.
    # One pass must converge, so every link whose master is the recreated bridge is set again.
    desired = planned().state
    observed = copy.deepcopy(desired)
    links = observed.namespaces[NODE1].links
    links["cni0"] = dataclasses.replace(links["cni0"], kind="dummy")
    changes = diff(desired, observed)
    ports = [link for link in desired.namespaces[NODE1].links.values() if link.master == "cni0"]
    assert len(ports) == 3
    for port in ports:
        assert ("set_link", NODE1, port) in keys(changes), port.name
        assert keys(changes).index(("set_link", NODE1, port)) > first(changes, "add_link")


def test_veth_pair_with_wrong_peer_is_recreated() -> None:
    # The pod's eth0 is paired with a node-side veth of another name: the pair is made anew.
    desired = planned().state
    observed = copy.deepcopy(desired)
    host_veth = desired.namespaces[DB].links["eth0"].peer_name
    node_links = observed.namespaces[NODE1].links
    node_links["vethdeadbeef"] = dataclasses.replace(node_links.pop(host_veth), name="vethdeadbeef")
    pod_links = observed.namespaces[DB].links
    pod_links["eth0"] = dataclasses.replace(pod_links["eth0"], peer_name="vethdeadbeef")
    changes = diff(desired, observed)
    deleted = {(c.netns, c.obj.name): c.reason for c in ops(changes, "del_link")}
    assert set(deleted) == {(DB, "eth0"), (NODE1, "vethdeadbeef")}
    assert "peer_name" in deleted[(DB, "eth0")]
    (create,) = ops(changes, "add_veth")
    assert {(create.netns, create.obj.name), (create.obj.peer_netns, create.peer.name)} == {
        (DB, "eth0"),
        (NODE1, host_veth),
    }
    # What lived on the old eth0 is put on the new one.
    db = desired.namespaces[DB]
    assert {("add_addr", DB, a) for a in db.addresses} <= set(keys(changes))
    assert {("add_route", DB, r) for r in db.routes.values() if r.proto != "kernel"} <= set(keys(changes))
    assert ("set_link", NODE1, desired.namespaces[NODE1].links[host_veth]) in keys(changes)


@pytest.mark.parametrize("proto", ["bird", "dhcp"])
def test_routes_podnet_does_not_own_are_never_deleted(proto: str) -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    observed.namespaces[NODE1].add_route(Route("10.244.0.0/24", (NextHop(dev="cni0"),), proto=proto, metric=50))
    observed.namespaces[NODE1].add_route(Route("198.51.100.0/24", (NextHop(gateway="172.31.0.3"),), proto=proto))
    observed.namespaces[DB].add_route(Route("10.244.0.0/24", (NextHop(dev="eth0"),), proto=proto, metric=100))
    assert diff(desired, observed) == []


def test_undesired_namespaces_are_deleted_whole() -> None:
    desired = planned().state
    changes = diff(desired, copy.deepcopy(desired), owned_extra=["podnet_demo_old_pod", "podnet_demo_node-9"])
    assert keys(changes) == [("del_netns", "podnet_demo_node-9", None), ("del_netns", "podnet_demo_old_pod", None)]


def test_desired_namespace_in_owned_extra_is_kept() -> None:
    desired = planned().state
    assert diff(desired, copy.deepcopy(desired), owned_extra=[DB]) == []


# --- processes -------------------------------------------------------------------------------


def test_process_with_changed_digest_is_reloaded() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    observed.processes["netexec"] = dataclasses.replace(desired.processes["netexec"], digest="0" * 16)
    assert keys(diff(desired, observed)) == [("reload_process", "", desired.processes["netexec"])]


def test_process_not_desired_is_stopped() -> None:
    text = example_text().split("\n---\napiVersion: v1\nkind: Service", 1)[0]  # pods only
    with_ports = planned(text)
    without_ports = planned(text.replace("ports:", "# ports:"))
    assert without_ports.state.processes == {}
    observed = copy.deepcopy(without_ports.state)
    observed.processes = dict(with_ports.state.processes)
    assert keys(diff(without_ports.state, observed)) == [("stop_process", "", with_ports.state.processes["netexec"])]


def test_missing_process_is_started() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    observed.processes.clear()
    assert keys(diff(desired, observed)) == [("start_process", "", desired.processes["netexec"])]


# --- sysctls: nothing assumed of a new namespace -----------------------------------------------


def sysctl_keys(changes: list[Change], netns: str) -> list[str]:
    return [c.obj[0] for c in ops(changes, "set_sysctl") if c.netns == netns]


def test_a_new_namespace_gets_every_planned_sysctl_and_forwarding_first() -> None:
    desired = planned().state
    changes = diff(desired, State())
    for name, ns in desired.namespaces.items():
        written = sysctl_keys(changes, name)
        assert sorted(written) == sorted(ns.sysctls), name
        # Writing ip_forward makes the kernel set conf.all.accept_redirects to its opposite.
        assert written[0] == "net.ipv4.ip_forward"
        assert written.index("net.ipv4.conf.all.accept_redirects") > 0


def test_forwarding_written_again_is_followed_by_what_the_kernel_rewrites_with_it() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    observed.namespaces[DB].sysctls["net.ipv4.ip_forward"] = "1"
    changes = diff(desired, observed)
    assert [c.obj for c in changes] == [
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.default.forwarding", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
    ]


def test_every_namespace_plans_forwarding_and_the_settings_a_host_could_leak() -> None:
    p = planned()
    routers = {n.netns for n in p.topology.nodes.values()}
    for name, ns in p.state.namespaces.items():
        forwards = "1" if name in routers else "0"
        assert ns.sysctls["net.ipv4.ip_forward"] == ns.sysctls["net.ipv4.conf.default.forwarding"] == forwards
        for conf in ("all", "default"):
            for key in ("rp_filter", "accept_local", "send_redirects", "accept_redirects", "arp_ignore", "proxy_arp"):
                assert ns.sysctls[f"net.ipv4.conf.{conf}.{key}"] == "0", (name, conf, key)


# --- the kernel's own routes, and what the kernel takes with a change ------------------------


def kernel_route(ns_state, table: int, dst: str) -> Route:
    route = ns_state.routes[(table, dst, 0)]
    assert route.proto == "kernel"
    return route


def test_a_missing_kernel_route_is_added_and_an_unplanned_one_deleted() -> None:
    desired = planned().state
    observed = copy.deepcopy(desired)
    node = observed.namespaces[NODE1]
    connected = node.routes.pop((254, "10.244.0.0/24", 0))
    local = node.routes.pop((255, "10.244.0.1/32", 0))
    stray = Route("10.9.0.0/24", (NextHop(dev="cni0"),), proto="kernel", scope="link")
    node.add_route(stray)
    changes = diff(desired, observed)
    assert sorted(keys(changes), key=repr) == sorted(
        [("add_route", NODE1, connected), ("add_route", NODE1, local), ("del_route", NODE1, stray)], key=repr
    )
    assert (connected.scope, connected.src, local.type, local.scope) == ("link", "10.244.0.1", "local", "host")


def test_a_replaced_address_brings_back_what_deleting_the_old_one_flushes() -> None:
    # The pod's address goes from /24 to /25: deleting its only address makes the kernel flush
    # every route through eth0 (the default route too); the new address's own routes are the
    # kernel's to add, the old one's the kernel's to remove.
    before = planned()
    after = planned(example_text().replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 25"), before.allocations)
    observed = copy.deepcopy(before.state)
    db_before, db_after = before.state.namespaces[DB], after.state.namespaces[DB]
    assert db_before.routes[(254, "0.0.0.0/0", 0)] == db_after.routes[(254, "0.0.0.0/0", 0)]
    changes = [c for c in diff(after.state, observed) if c.netns == DB]
    (old,), (new,) = db_before.addresses, db_after.addresses
    assert keys(changes) == [
        ("del_addr", DB, old),
        ("add_addr", DB, new),
        ("add_route", DB, db_after.routes[(254, "0.0.0.0/0", 0)]),
    ]


def vxlan_planned() -> Plan:
    return planned(example_text().replace("backend: host-gw", "backend: vxlan"))


def test_a_new_mac_brings_back_the_links_neighbours() -> None:
    desired = vxlan_planned().state
    observed = copy.deepcopy(desired)
    links = observed.namespaces[NODE1].links
    links["vxlan0"] = dataclasses.replace(links["vxlan0"], mac="0a:58:00:00:00:01")
    changes = diff(desired, observed)
    want = desired.namespaces[NODE1]
    assert keys(changes) == [
        ("set_link", NODE1, dataclasses.replace(want.links["vxlan0"], mtu=None)),
        *[("add_neigh", NODE1, n) for n in want.neighbours],
    ]


def test_a_recreated_vxlan_device_gets_its_address_routes_neighbours_and_fdb_back() -> None:
    desired = vxlan_planned().state
    observed = copy.deepcopy(desired)
    links = observed.namespaces[NODE1].links
    links["vxlan0"] = dataclasses.replace(links["vxlan0"], vni=99)
    changes = diff(desired, observed)
    want = desired.namespaces[NODE1]
    on_vxlan = {
        *[("add_addr", NODE1, a) for a in want.addresses if a.ifname == "vxlan0"],
        *[
            ("add_route", NODE1, r)
            for r in want.routes.values()
            if r.proto != "kernel" and r.nexthops[0].dev == "vxlan0"
        ],
        *[("add_neigh", NODE1, n) for n in want.neighbours],
        *[("add_fdb", NODE1, f) for f in want.fdb],
    }
    assert on_vxlan <= set(keys(changes))
    assert [c.op for c in changes if c.op in ("del_link", "add_link")] == ["del_link", "add_link"]
    assert not ops(changes, "del_neigh", "del_fdb", "del_addr", "del_route")

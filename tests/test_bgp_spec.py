"""The fabric form and the bgp settings of a cluster file: expansion and errors. No root needed."""

from __future__ import annotations

import pytest

from podnet.errors import SpecError
from podnet.spec import load_text


def fabric_yaml(
    fabric: str = "{spines: 2, leaves: 2}",
    nodes: str = "  - {name: node-1, leaf: leaf-1}\n  - {name: node-2, leaf: leaf-2}\n",
    bgp: str = "  bgp: {mode: fabric}\n",
    backend: str = "bgp",
    extra: str = "",
) -> str:
    return (
        "apiVersion: podnet.io/v1alpha1\nkind: Cluster\nmetadata: {name: fab}\nspec:\n"
        f"  backend: {backend}\n"
        f"  underlay:\n    fabric: {fabric}\n"
        f"  nodes:\n{nodes}"
        f"{bgp}{extra}"
    )


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_text(text, "f.yaml")
    return info.value


def test_the_issue_form_expands_into_racks_links_and_routers() -> None:
    c = load_text(fabric_yaml(), "f.yaml").cluster
    assert c.backend == "bgp" and c.bgp is not None and c.bgp.mode == "fabric"
    assert [(s.name, str(s.cidr)) for s in c.subnets] == [
        ("rack-1", "172.31.0.0/24"),
        ("rack-2", "172.31.1.0/24"),
        ("link-l1-s1", "172.30.0.0/31"),
        ("link-l1-s2", "172.30.0.2/31"),
        ("link-l2-s1", "172.30.0.4/31"),
        ("link-l2-s2", "172.30.0.6/31"),
    ]
    routers = {r.name: r.subnets for r in c.routers}
    assert routers == {
        "spine-1": ("link-l1-s1", "link-l2-s1"),
        "spine-2": ("link-l1-s2", "link-l2-s2"),
        "leaf-1": ("rack-1", "link-l1-s1", "link-l1-s2"),
        "leaf-2": ("rack-2", "link-l2-s1", "link-l2-s2"),
    }
    assert c.node_subnet == {"node-1": "rack-1", "node-2": "rack-2"}
    assert all(r.uplink is None for r in c.routers)


def test_cidrs_and_mask_are_overridable_and_the_border_leaf_is_the_edge() -> None:
    text = fabric_yaml(
        "{spines: 1, leaves: 3, rackCIDR: 10.10.0.0/20, rackMaskSize: 26, linkCIDR: 10.20.0.0/29, border: leaf-3}",
        nodes="  - {name: n1, leaf: leaf-3}\n",
        extra="  external: {name: internet, cidr: 203.0.113.0/24}\n",
    )
    c = load_text(text, "f.yaml").cluster
    assert [str(s.cidr) for s in c.subnets] == [
        "10.10.0.0/26",
        "10.10.0.64/26",
        "10.10.0.128/26",
        "10.20.0.0/31",
        "10.20.0.2/31",
        "10.20.0.4/31",
    ]
    edge = next(r for r in c.routers if r.uplink)
    assert edge.name == "leaf-3" and edge.uplink == "internet"


def test_external_defaults_the_border_to_leaf_1() -> None:
    c = load_text(fabric_yaml(extra="  external: {name: internet, cidr: 203.0.113.0/24}\n"), "f.yaml").cluster
    assert [r.name for r in c.routers if r.uplink] == ["leaf-1"]


def test_fabric_works_with_the_vxlan_backend_too() -> None:
    c = load_text(fabric_yaml(backend="vxlan", bgp=""), "f.yaml").cluster
    assert c.backend == "vxlan" and c.bgp is None and len(c.routers) == 4


def test_mode_defaults_follow_the_underlay() -> None:
    c = load_text(fabric_yaml(bgp=""), "f.yaml").cluster
    assert c.bgp is not None and c.bgp.mode == "fabric"
    flat = (
        "apiVersion: podnet.io/v1alpha1\nkind: Cluster\nmetadata: {name: flat}\nspec:\n  backend: bgp\n"
        "  underlay: {cidr: 172.31.0.0/24}\n  nodes: [{name: a}, {name: b}]\n"
    )
    c = load_text(flat, "f.yaml").cluster
    assert c.bgp is not None and c.bgp.mode == "full-mesh" and c.bgp.nodeASN == 64512


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (fabric_yaml(nodes="  - {name: node-1, leaf: leaf-9}\n"), 9, "spec.nodes[0].leaf", "leaf-1, leaf-2"),
        (fabric_yaml(nodes="  - {name: node-1}\n"), 9, "spec.nodes[0]", "leaf is required"),
        (fabric_yaml(nodes="  - {name: node-1, subnet: rack-1}\n"), 9, "spec.nodes[0].subnet", "names its leaf"),
        (fabric_yaml("{spines: 2, leaves: 2, rackCIDR: 10.244.0.0/16}"), 7, "spec.underlay.fabric.rackCIDR", "podCIDR"),
        (fabric_yaml("{spines: 2, leaves: 2, linkCIDR: 172.30.0.0/31}"), 7, "spec.underlay.fabric.linkCIDR", "holds 1"),
        (fabric_yaml("{spines: 2, leaves: 3, spineASN: 65002}"), 7, "spec.underlay.fabric.spineASN", "leaf"),
        (fabric_yaml("{spines: 2, leaves: 2, border: leaf-1}"), 7, "spec.underlay.fabric.border", "spec.external"),
        (fabric_yaml(backend="vxlan"), 11, "spec.bgp", "only to backend: bgp"),
        (fabric_yaml("{spines: 0, leaves: 2}"), 7, "spec.underlay.fabric.spines", "greater than or equal to 1"),
    ],
)
def test_fabric_errors_name_line_and_field(text: str, line: int, field: str, words: str) -> None:
    e = error(text)
    assert (e.line, e.field) == (line, field), str(e)
    assert words in e.message, str(e)


def test_fabric_beside_subnets_is_refused() -> None:
    text = fabric_yaml().replace(
        "    fabric: {spines: 2, leaves: 2}\n",
        "    fabric: {spines: 2, leaves: 2}\n    subnets: [{name: a, cidr: 10.1.0.0/24}]\n",
    )
    e = error(text)
    assert e.field == "spec.underlay.fabric" and "not both" in e.message


def test_leaf_without_a_fabric_is_refused() -> None:
    text = (
        "apiVersion: podnet.io/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n"
        "  underlay: {cidr: 172.31.0.0/24}\n  nodes: [{name: a, leaf: leaf-1}]\n"
    )
    e = error(text)
    assert e.field == "spec.nodes[0].leaf" and "underlay.fabric" in e.message


def test_full_mesh_needs_one_segment_and_fabric_mode_needs_routers() -> None:
    e = error(fabric_yaml(bgp="  bgp: {mode: full-mesh}\n"))
    assert e.field == "spec.bgp.mode" and "rack-1, rack-2" in e.message
    flat = (
        "apiVersion: podnet.io/v1alpha1\nkind: Cluster\nmetadata: {name: flat}\nspec:\n  backend: bgp\n"
        "  bgp: {mode: fabric}\n  underlay: {cidr: 172.31.0.0/24}\n  nodes: [{name: a}, {name: b}]\n"
    )
    e = error(flat)
    assert e.field == "spec.bgp.mode" and "has none" in e.message


def test_a_rack_too_small_for_its_nodes_is_refused() -> None:
    nodes = "".join(f"  - {{name: n{i}, leaf: leaf-1}}\n" for i in range(6))
    e = error(fabric_yaml("{spines: 1, leaves: 1, rackMaskSize: 29}", nodes=nodes))
    assert e.field == "spec.underlay.fabric.rackMaskSize" and "room for 5" in e.message


def test_node_names_cannot_take_a_router_name() -> None:
    e = error(fabric_yaml(nodes="  - {name: spine-1, leaf: leaf-1}\n"))
    assert "already used by a router" in e.message

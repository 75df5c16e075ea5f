"""The leaf-spine fabric form of the underlay, and the settings of ``backend: bgp``.

``underlay.fabric: {spines: N, leaves: M}`` is shorthand for the generic form (``subnets`` and
``routers``), which everything after the loader speaks. ``expand`` checks what only the fabric
form can get wrong (with the line the user wrote) and rewrites the Cluster document into:

- routers ``spine-1..N`` and ``leaf-1..M``;
- a rack subnet ``rack-I`` per leaf (carved from ``rackCIDR``, ``rackMaskSize`` each), holding
  the leaf (its first address) and the nodes that name it with ``leaf: leaf-I``;
- a point-to-point /31 ``link-lI-sJ`` per leaf-spine pair (carved from ``linkCIDR`` in leaf-major
  order, so adding a leaf keeps every existing link's addresses; the spine takes the even address);
- with ``spec.external``, the border leaf (``fabric.border``, default ``leaf-1``) as the edge.

Interfaces follow from that order: on ``leaf-I`` eth0 is the rack and ethJ the link to
``spine-J``; on ``spine-J`` ethK is the link to ``leaf-(K+1)``. The generic validation then runs
over the result as over any hand-written underlay.
"""

from __future__ import annotations

import ipaddress

from podnet.spec.models import Bgp, ClusterDoc, Fabric, Router, Subnet
from podnet.spec.yamlpos import Document, spec_error

FABRIC = ("spec", "underlay", "fabric")


def spine_name(j: int) -> str:
    return f"spine-{j}"


def leaf_name(i: int) -> str:
    return f"leaf-{i}"


def rack_name(i: int) -> str:
    return f"rack-{i}"


def link_name(i: int, j: int) -> str:
    return f"link-l{i}-s{j}"


def leaf_asn(fabric: Fabric, i: int) -> int:
    return fabric.leafASN + i - 1


def expand(doc: Document, cluster: ClusterDoc) -> ClusterDoc:
    """The Cluster document with a fabric rewritten into subnets and routers; BGP settings checked."""
    body = cluster.spec
    u = body.underlay
    if body.bgp is not None and body.backend != "bgp":
        raise spec_error(doc, ("spec", "bgp"), f"spec.bgp applies only to backend: bgp (the backend is {body.backend})")
    if u.fabric is None:
        for i, node in enumerate(body.nodes):
            if node.leaf is not None:
                raise spec_error(
                    doc, ("spec", "nodes", i, "leaf"), "leaf needs underlay.fabric (or put the node on a subnet)"
                )
        _check_bgp(doc, cluster, None)
        return cluster

    f = u.fabric
    if u.cidr is not None or u.subnets is not None or u.routers:
        raise spec_error(doc, FABRIC, "give either underlay.fabric or underlay.cidr/subnets/routers, not both")
    leaves = [leaf_name(i) for i in range(1, f.leaves + 1)]

    racks = ipaddress.IPv4Network(f.rackCIDR)
    if f.rackMaskSize < racks.prefixlen or 2 ** (f.rackMaskSize - racks.prefixlen) < f.leaves:
        have = 2 ** (f.rackMaskSize - racks.prefixlen) if f.rackMaskSize >= racks.prefixlen else 0
        raise spec_error(
            doc,
            (*FABRIC, "rackCIDR"),
            f"{racks} holds {have} racks of /{f.rackMaskSize}, the fabric has {f.leaves} leaves",
        )
    links = ipaddress.IPv4Network(f.linkCIDR)
    if links.prefixlen > 31 or 2 ** (31 - links.prefixlen) < f.leaves * f.spines:
        raise spec_error(
            doc,
            (*FABRIC, "linkCIDR"),
            f"{links} holds {2 ** max(31 - links.prefixlen, 0)} point-to-point /31s, "
            f"the fabric has {f.leaves * f.spines} leaf-spine links",
        )
    others = [
        (("spec", "podCIDR"), ipaddress.IPv4Network(body.podCIDR)),
        (("spec", "serviceCIDR"), ipaddress.IPv4Network(body.serviceCIDR)),
    ]
    if body.external is not None:
        others.append((("spec", "external", "cidr"), ipaddress.IPv4Network(body.external.cidr)))
    if racks.overlaps(links):
        raise spec_error(doc, (*FABRIC, "linkCIDR"), f"{links} overlaps spec.underlay.fabric.rackCIDR {racks}")
    for key, net in (("rackCIDR", racks), ("linkCIDR", links)):
        for path, other in others:
            if net.overlaps(other):
                raise spec_error(doc, (*FABRIC, key), f"{net} overlaps {'.'.join(path)} {other}")

    if f.leafASN <= f.spineASN <= f.leafASN + f.leaves - 1:
        raise spec_error(
            doc,
            (*FABRIC, "spineASN"),
            f"AS {f.spineASN} is also a leaf's (leaves take {f.leafASN}-{f.leafASN + f.leaves - 1})",
        )
    if f.leafASN + f.leaves - 1 > 4294967294:
        raise spec_error(doc, (*FABRIC, "leafASN"), f"{f.leaves} leaves from AS {f.leafASN} run past 4294967294")

    border = None
    if body.external is not None:
        border = f.border or leaves[0]
        if border not in leaves:
            raise spec_error(
                doc, (*FABRIC, "border"), f"{border!r} is not a leaf (expected one of: {', '.join(leaves)})"
            )
    elif f.border is not None:
        raise spec_error(doc, (*FABRIC, "border"), "a border leaf leads to spec.external: declare it first")

    per_leaf = dict.fromkeys(leaves, 0)
    nodes = []
    for i, node in enumerate(body.nodes):
        if node.subnet is not None:
            raise spec_error(
                doc,
                ("spec", "nodes", i, "subnet"),
                "with underlay.fabric a node names its leaf (leaf: leaf-1), not a subnet",
            )
        if node.leaf is None:
            raise spec_error(
                doc,
                ("spec", "nodes", i),
                f"leaf is required with underlay.fabric (expected one of: {', '.join(leaves)})",
            )
        if node.leaf not in per_leaf:
            raise spec_error(
                doc,
                ("spec", "nodes", i, "leaf"),
                f"leaf {node.leaf!r} does not exist (expected one of: {', '.join(leaves)})",
            )
        per_leaf[node.leaf] += 1
        nodes.append(node.model_copy(update={"subnet": rack_name(leaves.index(node.leaf) + 1)}))
    room = 2 ** (32 - f.rackMaskSize) - 3  # network, broadcast, the leaf
    for leaf, count in per_leaf.items():
        if count > room:
            raise spec_error(
                doc,
                (*FABRIC, "rackMaskSize"),
                f"a /{f.rackMaskSize} rack has room for {room} nodes, {leaf} has {count}",
            )

    rack_blocks = racks.subnets(new_prefix=f.rackMaskSize)
    subnets = [Subnet(name=rack_name(i), cidr=str(next(rack_blocks))) for i in range(1, f.leaves + 1)]
    link_blocks = links.subnets(new_prefix=31)
    for i in range(1, f.leaves + 1):
        for j in range(1, f.spines + 1):
            subnets.append(Subnet(name=link_name(i, j), cidr=str(next(link_blocks))))
    routers = [
        Router(name=spine_name(j), subnets=[link_name(i, j) for i in range(1, f.leaves + 1)])
        for j in range(1, f.spines + 1)
    ]
    for i, leaf in enumerate(leaves, start=1):
        routers.append(
            Router(
                name=leaf,
                subnets=[rack_name(i), *(link_name(i, j) for j in range(1, f.spines + 1))],
                uplink=body.external.name if body.external is not None and leaf == border else None,
            )
        )
    underlay = u.model_copy(update={"subnets": subnets, "routers": routers})
    expanded = cluster.model_copy(
        update={"spec": body.model_copy(update={"underlay": underlay, "nodes": nodes})}, deep=False
    )
    _check_bgp(doc, expanded, f)
    return expanded


def _check_bgp(doc: Document, cluster: ClusterDoc, fabric: Fabric | None) -> None:
    body = cluster.spec
    if body.backend != "bgp":
        return
    mode = resolve(cluster).mode
    u = body.underlay
    if mode == "fabric" and not u.routers:
        raise spec_error(
            doc,
            ("spec", "bgp", "mode") if body.bgp is not None and body.bgp.mode else ("spec", "backend"),
            "bgp mode fabric: nodes peer with the routers on their subnet, and this underlay has none "
            "(use underlay.fabric, underlay.routers, or bgp.mode: full-mesh)",
        )
    if mode == "full-mesh":
        first = u.subnets[0].name if u.subnets else "underlay"
        segments = sorted({n.subnet or first for n in body.nodes})
        if len(segments) > 1:
            raise spec_error(
                doc,
                ("spec", "bgp", "mode"),
                "full-mesh peers the nodes with each other, so each route's next hop is a node on the same "
                f"segment, but the nodes sit on {', '.join(segments)}; use mode: fabric",
            )


def resolve(cluster: ClusterDoc) -> Bgp:
    """The BGP settings with the mode decided: fabric when the underlay has routers, else full-mesh."""
    body = cluster.spec
    bgp = body.bgp or Bgp()
    if bgp.mode is None:
        bgp = bgp.model_copy(update={"mode": "fabric" if body.underlay.routers else "full-mesh"})
    return bgp

"""Rules that span fields or documents: overlaps, references, duplicates, capacity."""

from __future__ import annotations

import ipaddress
import re
from functools import partial
from typing import Any

from podnet.spec.models import (
    ClusterBody,
    ClusterDoc,
    LabelSelectorDoc,
    NamespaceDoc,
    NetworkPolicyDoc,
    PodDoc,
    ServiceDoc,
    check_label,
)
from podnet.spec.yamlpos import Document, spec_error


def validate(
    cluster: tuple[Document, ClusterDoc],
    namespaces: list[tuple[Document, NamespaceDoc]],
    pods: list[tuple[Document, PodDoc]],
) -> None:
    cdoc, c = cluster
    body = c.spec

    fail = spec_error

    _validate_network(cdoc, body, fail)

    for doc, pod in pods:
        if pod.spec.nodeName is not None and pod.spec.nodeName not in {n.name for n in body.nodes}:
            raise fail(
                doc,
                ("spec", "nodeName"),
                f"node {pod.spec.nodeName!r} does not exist (expected one of: {', '.join(n.name for n in body.nodes)})",
            )
        seen_ports: set[tuple[int, str]] = set()
        port_names: set[str] = set()
        for ci, container in enumerate(pod.spec.containers):
            for pi, port in enumerate(container.ports):
                path = ("spec", "containers", ci, "ports", pi)
                if (port.containerPort, port.protocol) in seen_ports:
                    raise fail(
                        doc,
                        (*path, "containerPort"),
                        f"duplicate port {port.containerPort}/{port.protocol} in this pod",
                    )
                seen_ports.add((port.containerPort, port.protocol))
                if port.name is not None:
                    if port.name in port_names:
                        raise fail(doc, (*path, "name"), f"duplicate port name {port.name!r} in this pod")
                    port_names.add(port.name)


IMPLICIT_NAMESPACES = ("default", "kube-system")  # in every Kubernetes cluster


def validate_objects(namespaces: list[tuple[Document, NamespaceDoc]], objects: list[tuple[Document, Any]]) -> None:
    """What every object must get right: its namespace declared, its name unique, its labels sound.

    ``objects`` are the namespaced ones (pods, workloads and the pods they make, services,
    policies); namespaces themselves are checked here for their names and labels.
    """
    written: set[str] = set()
    for doc, ns in namespaces:
        if ns.metadata.name in written:
            raise spec_error(doc, ("metadata", "name"), f"duplicate Namespace {ns.metadata.name!r}")
        written.add(ns.metadata.name)
        if ns.metadata.namespace is not None:
            raise spec_error(doc, ("metadata", "namespace"), "a Namespace is not itself namespaced")
        _check_metadata(doc, ns.metadata)
    declared = written | set(IMPLICIT_NAMESPACES)
    seen: set[tuple[str, str, str]] = set()
    for doc, obj in objects:
        ns = obj.metadata.namespace or "default"
        if ns not in declared:
            raise spec_error(
                doc,
                ("metadata", "namespace"),
                f"namespace {ns!r} is not declared "
                f"(add a Namespace document, or use one of: {', '.join(sorted(declared))})",
            )
        if (obj.kind, ns, obj.metadata.name) in seen:
            raise spec_error(doc, ("metadata", "name"), f"duplicate {obj.kind} {ns}/{obj.metadata.name}")
        seen.add((obj.kind, ns, obj.metadata.name))
        _check_metadata(doc, obj.metadata)
        if isinstance(obj, ServiceDoc):
            _check_labels(doc, ("spec", "selector"), obj.spec.selector)
        elif not isinstance(obj, PodDoc | NetworkPolicyDoc):  # a workload
            _check_selector(obj.spec.selector, ("spec", "selector"), partial(spec_error, doc))
            _check_metadata(doc, obj.spec.template.metadata, ("spec", "template", "metadata"))


def _check_metadata(doc: Document, meta: Any, path: tuple = ("metadata",)) -> None:
    _check_labels(doc, (*path, "labels"), meta.labels)
    for key in meta.annotations:
        problem = _label_key_problem(key.lower(), "annotation")  # Kubernetes checks them lowercased
        if problem:
            raise spec_error(doc, (*path, "annotations", key), problem)


def _check_labels(doc: Document, path: tuple, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        problem = _label_key_problem(key) or _label_value_problem(value)
        if problem:
            raise spec_error(doc, (*path, key), problem)


def subnets_of(body: ClusterBody) -> list[tuple[str, str]]:
    """(name, cidr) of every underlay segment; the one-segment form is a segment named 'underlay'."""
    if body.underlay.subnets is not None:
        return [(sn.name, sn.cidr) for sn in body.underlay.subnets]
    return [("underlay", body.underlay.cidr or DEFAULT_UNDERLAY)]


DEFAULT_UNDERLAY = "172.31.0.0/24"


def _validate_network(cdoc: Document, body: ClusterBody, fail) -> None:
    u = body.underlay
    if u.cidr is not None and u.subnets is not None:
        raise fail(
            cdoc,
            ("spec", "underlay", "subnets"),
            "give either underlay.cidr (one segment) or underlay.subnets, not both",
        )
    if u.subnets is not None and not u.subnets:
        raise fail(cdoc, ("spec", "underlay", "subnets"), "at least one subnet is needed")
    subnets = subnets_of(body)
    subnet_index = {}
    for i, (name, _) in enumerate(subnets):
        if name in subnet_index:
            raise fail(cdoc, ("spec", "underlay", "subnets", i, "name"), f"duplicate subnet name {name!r}")
        subnet_index[name] = i

    # CIDRs must not overlap: a pod, a service VIP and a node address must never be confused.
    cidrs: list[tuple[tuple, ipaddress.IPv4Network]] = [
        (("spec", "podCIDR"), ipaddress.IPv4Network(body.podCIDR)),
        (("spec", "serviceCIDR"), ipaddress.IPv4Network(body.serviceCIDR)),
    ]
    if u.subnets is None:
        cidrs.append((("spec", "underlay", "cidr"), ipaddress.IPv4Network(subnets[0][1])))
    else:
        cidrs += [
            (("spec", "underlay", "subnets", i, "cidr"), ipaddress.IPv4Network(c)) for i, (_, c) in enumerate(subnets)
        ]
    if body.external is not None:
        cidrs.append((("spec", "external", "cidr"), ipaddress.IPv4Network(body.external.cidr)))
    for i, (path, net) in enumerate(cidrs):
        for other_path, other in cidrs[:i]:
            if net.overlaps(other):
                where = ".".join(str(p) for p in other_path)
                raise fail(cdoc, path, f"{net} overlaps {where} {other}")

    pod_net = ipaddress.IPv4Network(body.podCIDR)
    if body.nodeCIDRMaskSize < pod_net.prefixlen:
        raise fail(
            cdoc,
            ("spec", "nodeCIDRMaskSize"),
            f"/{body.nodeCIDRMaskSize} is larger than podCIDR {pod_net} "
            f"(expected a mask size of at least {pod_net.prefixlen})",
        )
    blocks = 2 ** (body.nodeCIDRMaskSize - pod_net.prefixlen)
    if len(body.nodes) > blocks:
        raise fail(
            cdoc,
            ("spec", "nodes"),
            f"{len(body.nodes)} nodes but podCIDR {pod_net} holds only {blocks} blocks of /{body.nodeCIDRMaskSize}",
        )

    names_seen: dict[str, str] = {}

    def claim(name: str, what: str, path: tuple) -> None:
        if name in names_seen:
            raise fail(cdoc, path, f"duplicate name {name!r}: already used by a {names_seen[name]}")
        names_seen[name] = what

    ext_name = body.external.name if body.external else None
    edges = 0
    for i, router in enumerate(u.routers):
        claim(router.name, "router", ("spec", "underlay", "routers", i, "name"))
        for j, sn in enumerate(router.subnets):
            if sn not in subnet_index:
                raise fail(
                    cdoc,
                    ("spec", "underlay", "routers", i, "subnets", j),
                    f"subnet {sn!r} is not declared (expected one of: {', '.join(subnet_index)})",
                )
        if len(set(router.subnets)) != len(router.subnets):
            raise fail(cdoc, ("spec", "underlay", "routers", i, "subnets"), "a subnet is listed twice")
        if router.uplink is not None:
            edges += 1
            if router.uplink != ext_name:
                raise fail(
                    cdoc,
                    ("spec", "underlay", "routers", i, "uplink"),
                    f"uplink {router.uplink!r} is not the external network"
                    + (f" (expected {ext_name!r})" if ext_name else " (declare spec.external first)"),
                )
            if edges > 1:
                raise fail(
                    cdoc, ("spec", "underlay", "routers", i, "uplink"), "only one edge router may have an uplink"
                )
    if body.external is not None and edges == 0:
        raise fail(
            cdoc,
            ("spec", "external"),
            f"an external network needs an edge router: give one router 'uplink: {ext_name}'",
        )

    members: dict[str, int] = {name: 0 for name in subnet_index}
    for router in u.routers:
        for sn in router.subnets:
            members[sn] += 1
    node_subnets = set()
    for i, node in enumerate(body.nodes):
        claim(node.name, "node", ("spec", "nodes", i, "name"))
        if node.subnet is None:
            if len(subnets) > 1:
                raise fail(
                    cdoc,
                    ("spec", "nodes", i, "subnet"),
                    f"required when the underlay has several subnets (expected one of: {', '.join(subnet_index)})",
                )
            sn = subnets[0][0]
        else:
            sn = node.subnet
            if sn not in subnet_index:
                raise fail(
                    cdoc,
                    ("spec", "nodes", i, "subnet"),
                    f"subnet {sn!r} is not declared (expected one of: {', '.join(subnet_index)})",
                )
        members[sn] += 1
        node_subnets.add(sn)
    for name, cidr in subnets:
        net = ipaddress.IPv4Network(cidr)
        room = 2 if net.prefixlen == 31 else max(net.num_addresses - 3, 0)  # a /31 joins two routers (RFC 3021)
        if members[name] > room:
            path = (
                ("spec", "underlay", "cidr")
                if u.subnets is None
                else ("spec", "underlay", "subnets", subnet_index[name], "cidr")
            )
            raise fail(cdoc, path, f"{net} has room for {room} nodes and routers, the spec puts {members[name]} on it")

    if body.backend == "host-gw" and len(node_subnets) > 1:
        raise fail(
            cdoc,
            ("spec", "backend"),
            "host-gw routes each pod block via its node's address, so every node must share one L2 subnet, "
            f"but the nodes sit on {', '.join(sorted(node_subnets))} behind routers that know no pod routes; "
            "use backend: vxlan (an overlay across the routed underlay) or bgp",
        )

    if body.external is not None:
        ext = ipaddress.IPv4Network(body.external.cidr)
        claim(body.external.name, "external network", ("spec", "external", "name"))
        seen_addr: set[str] = set()
        for i, host in enumerate(body.external.hosts):
            claim(host.name, "external host", ("spec", "external", "hosts", i, "name"))
            try:
                addr = ipaddress.IPv4Address(host.address)
            except ValueError:
                raise fail(
                    cdoc, ("spec", "external", "hosts", i, "address"), f"{host.address!r} is not an IPv4 address"
                ) from None
            if addr not in ext or addr in (ext.network_address, ext.broadcast_address):
                raise fail(
                    cdoc,
                    ("spec", "external", "hosts", i, "address"),
                    f"{addr} is not a host address of the external network {ext}",
                )
            if str(addr) in seen_addr:
                raise fail(cdoc, ("spec", "external", "hosts", i, "address"), f"address {addr} is used twice")
            seen_addr.add(str(addr))


RESERVED_SERVICE_ADDRESSES = 10  # the first ten of serviceCIDR: .1 (apiserver) ... .10 (cluster DNS)


def validate_services(cluster: tuple[Document, ClusterDoc], services: list[tuple[Document, ServiceDoc]]) -> None:
    """Service rules: VIPs inside serviceCIDR and unique, node ports unique, port names sound."""
    service_net = ipaddress.IPv4Network(cluster[1].spec.serviceCIDR)
    vips: dict[str, str] = {}
    node_ports: dict[tuple[int, str], str] = {}

    fail = spec_error

    for doc, svc in services:
        key = f"{svc.metadata.namespace or 'default'}/{svc.metadata.name}"
        body = svc.spec
        if body.clusterIP is not None and body.clusterIP != "None":
            try:
                vip = ipaddress.IPv4Address(body.clusterIP)
            except ValueError:
                raise fail(
                    doc, ("spec", "clusterIP"), f'{body.clusterIP!r} is not an IPv4 address (or "None")'
                ) from None
            if vip not in service_net:
                raise fail(doc, ("spec", "clusterIP"), f"{vip} is outside serviceCIDR {service_net}")
            index = int(vip) - int(service_net.network_address)
            if index <= RESERVED_SERVICE_ADDRESSES:
                raise fail(
                    doc,
                    ("spec", "clusterIP"),
                    f"{vip} is reserved (the first {RESERVED_SERVICE_ADDRESSES} addresses of serviceCIDR; the tenth is "
                    "the cluster DNS)",
                )
            if str(vip) in vips:
                raise fail(doc, ("spec", "clusterIP"), f"{vip} is already the clusterIP of {vips[str(vip)]}")
            vips[str(vip)] = key
        if body.clusterIP == "None" and body.type == "NodePort":
            raise fail(doc, ("spec", "type"), "a headless service (clusterIP: None) cannot be a NodePort")
        names: set[str] = set()
        pairs: set[tuple[int, str]] = set()
        for i, port in enumerate(body.ports):
            path = ("spec", "ports", i)
            if len(body.ports) > 1 and port.name is None:
                raise fail(doc, (*path, "port"), "every port needs a name when a service has several")
            if port.name is not None:
                try:
                    check_label(port.name)
                except ValueError as exc:
                    raise fail(doc, (*path, "name"), str(exc)) from None
                if port.name in names:
                    raise fail(doc, (*path, "name"), f"duplicate port name {port.name!r}")
                names.add(port.name)
            if (port.port, port.protocol) in pairs:
                raise fail(doc, (*path, "port"), f"duplicate port {port.port}/{port.protocol}")
            pairs.add((port.port, port.protocol))
            if port.nodePort is not None:
                if body.type != "NodePort":
                    raise fail(doc, (*path, "nodePort"), "nodePort is only valid with type: NodePort")
                if (port.nodePort, port.protocol) in node_ports:
                    raise fail(
                        doc,
                        (*path, "nodePort"),
                        f"nodePort {port.nodePort}/{port.protocol} is already used by {node_ports[(port.nodePort, port.protocol)]}",
                    )
                node_ports[(port.nodePort, port.protocol)] = key


# --- NetworkPolicy --------------------------------------------------------------------------

LOG_DROPS_ANNOTATION = "podnet.io/log-drops"
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _label_key_problem(key: str, what: str = "label") -> str | None:
    """Kubernetes' qualified name: an optional DNS-subdomain prefix and '/', then a name."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"{what} key {key!r}: its prefix {prefix!r} is not a DNS subdomain (at most 253 characters of a-z, 0-9, '-' and '.')"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"{what} key {key!r} is not valid (expected [prefix/]name, the name at most 63 characters of "
            "letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return (
            f"label value {value!r} is not valid (expected at most 63 characters of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit)"
        )
    return None


def _check_selector(sel: LabelSelectorDoc, path: tuple, fail) -> None:
    for key, value in sel.matchLabels.items():
        problem = _label_key_problem(key) or _label_value_problem(value)
        if problem:
            raise fail((*path, "matchLabels", key), problem)
    for i, req in enumerate(sel.matchExpressions):
        where = (*path, "matchExpressions", i)
        problem = _label_key_problem(req.key)
        if problem:
            raise fail((*where, "key"), problem)
        if req.operator in ("In", "NotIn") and not req.values:
            raise fail((*where, "values"), f"operator {req.operator} needs at least one value")
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            raise fail((*where, "values"), f"operator {req.operator} takes no values")
        for j, value in enumerate(req.values):
            problem = _label_value_problem(value)
            if problem:
                raise fail((*where, "values", j), problem)


def _policy_network(text: str) -> ipaddress.IPv4Network:
    """A CIDR of an ipBlock; host bits may be set, as Kubernetes accepts (10.0.0.1/8 is 10.0.0.0/8)."""
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR (expected e.g. 10.0.0.0/8)")
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        if ":" in text:
            raise ValueError(f"{text!r} is IPv6; podnet is IPv4 only") from None
        raise ValueError(f"{text!r} is not a valid IPv4 CIDR (expected e.g. 10.0.0.0/8)") from None


def validate_policies(policies: list[tuple[Document, NetworkPolicyDoc]]) -> None:
    """NetworkPolicy rules Kubernetes' API server enforces, with the file, line and field of each error."""
    for doc, pol in policies:
        fail = partial(spec_error, doc)

        log = pol.metadata.annotations.get(LOG_DROPS_ANNOTATION)
        if log is not None and log not in ("true", "false"):
            raise fail(("metadata", "annotations", LOG_DROPS_ANNOTATION), f'got {log!r}, expected "true" or "false"')
        body = pol.spec
        _check_selector(body.podSelector, ("spec", "podSelector"), fail)
        types = body.policyTypes or []
        for i, kind in enumerate(types):
            if kind in types[:i]:
                raise fail(("spec", "policyTypes", i), f"{kind} is listed twice")
        for direction, field_name in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(getattr(body, direction) or []):
                peers = rule.from_ if direction == "ingress" else rule.to
                for j, peer in enumerate(peers or []):
                    path = ("spec", direction, i, field_name, j)
                    if peer.podSelector is None and peer.namespaceSelector is None and peer.ipBlock is None:
                        raise fail(path, "a peer needs podSelector, namespaceSelector or ipBlock")
                    if peer.ipBlock is not None and (peer.podSelector or peer.namespaceSelector):
                        raise fail(
                            (*path, "ipBlock"),
                            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer "
                            "(give it a peer of its own)",
                        )
                    for name in ("podSelector", "namespaceSelector"):
                        sel = getattr(peer, name)
                        if sel is not None:
                            _check_selector(sel, (*path, name), fail)
                    if peer.ipBlock is not None:
                        _check_ip_block(peer.ipBlock, (*path, "ipBlock"), fail)
                for k, port in enumerate(rule.ports or []):
                    _check_policy_port(port, ("spec", direction, i, "ports", k), fail)


def _check_ip_block(block, path: tuple, fail) -> None:
    try:
        net = _policy_network(block.cidr)
    except ValueError as exc:
        raise fail((*path, "cidr"), str(exc)) from None
    for k, text in enumerate(block.except_):
        try:
            hole = _policy_network(text)
        except ValueError as exc:
            raise fail((*path, "except", k), str(exc)) from None
        if not hole.subnet_of(net) or hole == net:
            raise fail((*path, "except", k), f"{hole} is not strictly inside cidr {net}")


def _check_policy_port(port, path: tuple, fail) -> None:
    value = port.port
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not 1 <= value <= 65535:
        raise fail((*path, "port"), f"{value} is out of range (expected 1-65535 or a container port's name)")
    if isinstance(value, str) and (
        len(value) > 15 or not _PORT_NAME.match(value) or "--" in value or not any(c.isalpha() for c in value)
    ):
        raise fail(
            (*path, "port"),
            f"{value!r} is not a port name (expected at most 15 characters of a-z, 0-9 and '-', with a letter)",
        )
    if port.endPort is not None:
        if not isinstance(value, int):
            raise fail((*path, "endPort"), "endPort needs a numeric port to start the range")
        if not value <= port.endPort <= 65535:
            raise fail((*path, "endPort"), f"{port.endPort} is out of range (expected {value}-65535)")

"""Rules that span fields or documents: overlaps, references, duplicates, capacity."""

from __future__ import annotations

import ipaddress

from podnet.errors import SpecError
from podnet.spec.models import ClusterDoc, NamespaceDoc, PodDoc
from podnet.spec.yamlpos import Document


def validate(
    file: str,
    cluster: tuple[Document, ClusterDoc],
    namespaces: list[tuple[Document, NamespaceDoc]],
    pods: list[tuple[Document, PodDoc]],
) -> None:
    cdoc, c = cluster
    body = c.spec

    def fail(doc: Document, path: tuple, message: str) -> SpecError:
        field = ""
        for part in path:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        return SpecError(file, doc.line_of(path), field, message)

    # CIDRs must not overlap: a pod, a service VIP and a node address must never be confused.
    cidrs = [
        (("spec", "podCIDR"), ipaddress.IPv4Network(body.podCIDR)),
        (("spec", "serviceCIDR"), ipaddress.IPv4Network(body.serviceCIDR)),
        (("spec", "underlay", "cidr"), ipaddress.IPv4Network(body.underlay.cidr)),
    ]
    for i, (path, net) in enumerate(cidrs):
        for other_path, other in cidrs[:i]:
            if net.overlaps(other):
                raise fail(cdoc, path, f"{net} overlaps {'.'.join(other_path)} {other}")

    pod_net = ipaddress.IPv4Network(body.podCIDR)
    if body.nodeCIDRMaskSize < pod_net.prefixlen:
        raise fail(
            cdoc,
            ("spec", "nodeCIDRMaskSize"),
            f"/{body.nodeCIDRMaskSize} is larger than podCIDR {pod_net} (expected a mask size of at least {pod_net.prefixlen})",
        )
    blocks = 2 ** (body.nodeCIDRMaskSize - pod_net.prefixlen)
    if len(body.nodes) > blocks:
        raise fail(
            cdoc,
            ("spec", "nodes"),
            f"{len(body.nodes)} nodes but podCIDR {pod_net} holds only {blocks} blocks of /{body.nodeCIDRMaskSize}",
        )
    underlay = ipaddress.IPv4Network(body.underlay.cidr)
    if len(body.nodes) > underlay.num_addresses - 3:
        raise fail(
            cdoc,
            ("spec", "underlay", "cidr"),
            f"{underlay} has room for {max(underlay.num_addresses - 3, 0)} nodes, the spec declares {len(body.nodes)}",
        )

    node_names: dict[str, int] = {}
    for i, node in enumerate(body.nodes):
        if node.name in node_names:
            raise fail(cdoc, ("spec", "nodes", i, "name"), f"duplicate node name {node.name!r}")
        node_names[node.name] = i

    ns_names = {"default"}
    for doc, ns in namespaces:
        if ns.metadata.name in ns_names and ns.metadata.name != "default":
            raise fail(doc, ("metadata", "name"), f"duplicate Namespace {ns.metadata.name!r}")
        ns_names.add(ns.metadata.name)
        if ns.metadata.namespace is not None:
            raise fail(doc, ("metadata", "namespace"), "a Namespace is not itself namespaced")

    seen_pods: set[tuple[str, str]] = set()
    for doc, pod in pods:
        ns = pod.metadata.namespace or "default"
        if ns not in ns_names:
            raise fail(
                doc,
                ("metadata", "namespace"),
                f"namespace {ns!r} is not declared (add a Namespace document, or use one of: {', '.join(sorted(ns_names))})",
            )
        if ns != "default":
            from podnet.spec.models import check_label

            try:
                check_label(ns)
            except ValueError as exc:
                raise fail(doc, ("metadata", "namespace"), str(exc)) from None
        if (ns, pod.metadata.name) in seen_pods:
            raise fail(doc, ("metadata", "name"), f"duplicate Pod {ns}/{pod.metadata.name}")
        seen_pods.add((ns, pod.metadata.name))
        if pod.spec.nodeName is not None and pod.spec.nodeName not in node_names:
            raise fail(
                doc,
                ("spec", "nodeName"),
                f"node {pod.spec.nodeName!r} does not exist (expected one of: {', '.join(node_names)})",
            )
        seen_ports: set[tuple[int, str]] = set()
        port_names: set[str] = set()
        for ci, container in enumerate(pod.spec.containers):
            for pi, port in enumerate(container.ports):
                path = ("spec", "containers", ci, "ports", pi)
                if (port.containerPort, port.protocol) in seen_ports:
                    raise fail(doc, path + ("containerPort",), f"duplicate port {port.containerPort}/{port.protocol} in this pod")
                seen_ports.add((port.containerPort, port.protocol))
                if port.name is not None:
                    if port.name in port_names:
                        raise fail(doc, path + ("name",), f"duplicate port name {port.name!r} in this pod")
                    port_names.add(port.name)

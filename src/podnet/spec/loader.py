"""Read a cluster file into a validated :class:`Spec`, or raise one precise SpecError."""

from __future__ import annotations

import ipaddress
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import ValidationError

from podnet.errors import SpecError
from podnet.spec import fabric
from podnet.spec.models import (
    KINDS,
    AffinityConfig,
    ClusterDoc,
    ClusterSpec,
    ExternalSpec,
    HostSpec,
    IPBlock,
    LabelSelector,
    LabelSelectorDoc,
    Namespace,
    NamespaceDoc,
    NetworkPolicy,
    NetworkPolicyDoc,
    Pod,
    PodDoc,
    PolicyPeer,
    PolicyPeerDoc,
    PolicyPort,
    PolicyRule,
    Port,
    RouterSpec,
    SelectorRequirement,
    Service,
    ServiceDoc,
    ServicePort,
    Spec,
    SubnetSpec,
)
from podnet.spec.validate import LOG_DROPS_ANNOTATION, subnets_of, validate, validate_policies, validate_services
from podnet.spec.yamlpos import Document, DuplicateKey, Path, compose_documents, field_path


def load_file(path: str | FsPath) -> Spec:
    p = FsPath(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(str(path), None, "", f"cannot read file: {exc.strerror}") from exc
    return load_text(text, str(path))


def _pydantic_error(file: str, doc: Document, exc: ValidationError, model: type) -> SpecError:
    err = exc.errors()[0]
    loc: Path = tuple(err["loc"])
    # Drop pydantic's internal loc parts (e.g. the 'function-after[...]' of validators).
    loc = tuple(p for p in loc if not (isinstance(p, str) and "[" in p))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        msg = "unknown field" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}, {msg[0].lower()}{msg[1:]}"
    return SpecError(file, doc.line_of(loc), field_path(loc), msg)


def _allowed_fields(model: type, path: Path) -> list[str]:
    """Walk the model along ``path`` to list the fields that would have been accepted."""
    from typing import get_args

    cur: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", {})
        info = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if info is None:
            return []
        ann = info.annotation
        nxt = None
        for cand in (ann, *get_args(ann), *[a for g in get_args(ann) for a in get_args(g)]):
            if hasattr(cand, "model_fields"):
                nxt = cand
                break
        if nxt is None:
            return []
        cur = nxt
    return sorted(info.alias or name for name, info in getattr(cur, "model_fields", {}).items())


def load_text(text: str, file: str = "<string>") -> Spec:
    try:
        docs = compose_documents(text)
    except DuplicateKey as dup:
        raise SpecError(file, dup.line, field_path((*dup.path, dup.key)), "duplicate key") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(file, line, "", f"YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(file, None, "", f"YAML syntax error: {exc}") from None

    cluster: tuple[Document, ClusterDoc] | None = None
    namespaces: list[tuple[Document, NamespaceDoc]] = []
    pods: list[tuple[Document, PodDoc]] = []
    services: list[tuple[Document, ServiceDoc]] = []
    policies: list[tuple[Document, NetworkPolicyDoc]] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            raise SpecError(file, doc.line, "", "each document must be a mapping with apiVersion and kind")
        kind = doc.data.get("kind")
        if kind not in KINDS:
            expected = ", ".join(KINDS)
            raise SpecError(
                file, doc.line_of(("kind",)), "kind", f"unknown kind {kind!r} (expected one of: {expected})"
            )
        model = KINDS[kind]
        try:
            obj = model.model_validate(doc.data)
        except ValidationError as exc:
            raise _pydantic_error(file, doc, exc, model) from None
        if isinstance(obj, ClusterDoc):
            if cluster is not None:
                raise SpecError(file, doc.line, "kind", "a file holds exactly one Cluster document; found a second")
            cluster = (doc, obj)
        elif isinstance(obj, NamespaceDoc):
            namespaces.append((doc, obj))
        elif isinstance(obj, PodDoc):
            pods.append((doc, obj))
        elif isinstance(obj, ServiceDoc):
            services.append((doc, obj))
        elif isinstance(obj, NetworkPolicyDoc):
            policies.append((doc, obj))
    if cluster is None:
        raise SpecError(file, None, "kind", "no Cluster document (expected one with apiVersion: podnet.io/v1alpha1)")

    cluster = (cluster[0], fabric.expand(file, *cluster))  # a leaf-spine fabric becomes subnets and routers
    validate(file, cluster, namespaces, pods)
    validate_services(file, cluster, namespaces, services)
    validate_policies(file, namespaces, policies)
    spec = _to_spec(file, cluster[1], namespaces, pods)
    for doc, svc in services:
        body = svc.spec
        spec.services.append(
            Service(
                namespace=svc.metadata.namespace or "default",
                name=svc.metadata.name,
                type=body.type,
                cluster_ip=body.clusterIP,
                selector=dict(body.selector),
                ports=tuple(
                    ServicePort(
                        p.name, p.protocol, p.port, p.targetPort if p.targetPort is not None else p.port, p.nodePort
                    )
                    for p in body.ports
                ),
                affinity_timeout=(
                    (body.sessionAffinityConfig or AffinityConfig()).clientIP.timeoutSeconds
                    if body.sessionAffinity == "ClientIP"
                    else None
                ),
                local=body.externalTrafficPolicy == "Local",
                line=doc.line,
            )
        )
    spec.policies = [_policy(doc, pol) for doc, pol in policies]
    return spec


def _to_spec(
    file: str,
    cluster: ClusterDoc,
    namespaces: list[tuple[Document, NamespaceDoc]],
    pods: list[tuple[Document, PodDoc]],
) -> Spec:
    body = cluster.spec
    subnets = [SubnetSpec(name, ipaddress.IPv4Network(cidr)) for name, cidr in subnets_of(body)]
    external = None
    if body.external is not None:
        external = ExternalSpec(
            body.external.name,
            ipaddress.IPv4Network(body.external.cidr),
            tuple(
                HostSpec(h.name, h.address, tuple(Port(p.containerPort, p.protocol, p.name) for p in h.ports))
                for h in body.external.hosts
            ),
        )
    spec = Spec(
        file=file,
        cluster=ClusterSpec(
            name=cluster.metadata.name,
            pod_cidr=ipaddress.IPv4Network(body.podCIDR),
            node_mask=body.nodeCIDRMaskSize,
            service_cidr=ipaddress.IPv4Network(body.serviceCIDR),
            backend=body.backend,
            underlay_mtu=body.underlay.mtu,
            nodes=[n.name for n in body.nodes],
            subnets=subnets,
            node_subnet={n.name: n.subnet or subnets[0].name for n in body.nodes},
            routers=[RouterSpec(r.name, tuple(r.subnets), r.uplink) for r in body.underlay.routers],
            external=external,
            vni=body.vxlan.vni,
            vxlan_port=body.vxlan.port,
            dns_enabled=body.dns.enabled,
            dns_domain=body.dns.domain,
            dns_upstreams=list(body.dns.upstreams),
            fabric=body.underlay.fabric,
            bgp=fabric.resolve(cluster) if body.backend == "bgp" else None,
        ),
    )
    for implicit in ("default", "kube-system"):  # as in every Kubernetes cluster
        spec.namespaces[implicit] = Namespace(implicit, {"kubernetes.io/metadata.name": implicit})
    for _, ns in namespaces:
        labels = dict(ns.metadata.labels)
        labels["kubernetes.io/metadata.name"] = ns.metadata.name
        spec.namespaces[ns.metadata.name] = Namespace(ns.metadata.name, labels)
    for doc, pod in pods:
        ports = tuple(
            Port(p.containerPort, p.protocol, p.name, p.hostPort) for c in pod.spec.containers for p in c.ports
        )
        spec.pods.append(
            Pod(
                namespace=pod.metadata.namespace or "default",
                name=pod.metadata.name,
                labels=dict(pod.metadata.labels),
                node=pod.spec.nodeName,
                ports=ports,
                line=doc.line,
            )
        )
    return spec


def _selector(sel: LabelSelectorDoc) -> LabelSelector:
    return LabelSelector(
        tuple(sorted(sel.matchLabels.items())),
        tuple(SelectorRequirement(r.key, r.operator, tuple(sorted(set(r.values)))) for r in sel.matchExpressions),
    )


def _peers(peers: list[PolicyPeerDoc] | None) -> tuple[PolicyPeer, ...]:
    return tuple(
        PolicyPeer(
            _selector(p.podSelector) if p.podSelector is not None else None,
            _selector(p.namespaceSelector) if p.namespaceSelector is not None else None,
            IPBlock(
                str(ipaddress.IPv4Network(p.ipBlock.cidr, strict=False)),
                tuple(str(ipaddress.IPv4Network(e, strict=False)) for e in p.ipBlock.except_),
            )
            if p.ipBlock is not None
            else None,
        )
        for p in peers or []
    )


def _policy(doc: Document, pol: NetworkPolicyDoc) -> NetworkPolicy:
    """A NetworkPolicy as Kubernetes reads it: policyTypes defaulted, numeric strings as numbers."""
    body = pol.spec
    types = body.policyTypes
    if types is None:  # Ingress always; Egress when the policy has egress rules
        types = ["Ingress", *(["Egress"] if body.egress else [])]

    def ports(rule) -> tuple[PolicyPort, ...]:
        return tuple(
            PolicyPort(p.protocol, int(p.port) if isinstance(p.port, str) and p.port.isdigit() else p.port, p.endPort)
            for p in rule.ports or []
        )

    return NetworkPolicy(
        namespace=pol.metadata.namespace or "default",
        name=pol.metadata.name,
        pod_selector=_selector(body.podSelector),
        types=tuple(t for t in ("Ingress", "Egress") if t in types),
        ingress=tuple(PolicyRule(_peers(r.from_), ports(r)) for r in body.ingress or []),
        egress=tuple(PolicyRule(_peers(r.to), ports(r)) for r in body.egress or []),
        log_drops=pol.metadata.annotations.get(LOG_DROPS_ANNOTATION) == "true",
        line=doc.line,
    )

"""Read the spec's sources (files, directories, standard input) into a validated :class:`Spec`.

Every problem is one precise SpecError naming the file, line and field. Each document (and
each item of a ``kind: List``) is checked field by field (``kubefields``: Kubernetes fields
podnet does not read are dropped with a warning), then by its model; workloads become pods
(``workloads``); then the rules that span documents run (``validate``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from podnet.errors import SpecError
from podnet.spec import fabric, kubefields, sources, workloads
from podnet.spec.models import (
    KINDS,
    AffinityConfig,
    ClusterDoc,
    ClusterSpec,
    DaemonSetDoc,
    DeploymentDoc,
    ExternalSpec,
    HostSpec,
    IPBlock,
    ListDoc,
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
    ReplicaSetDoc,
    RouterSpec,
    Service,
    ServiceDoc,
    ServicePort,
    Spec,
    StatefulSetDoc,
    SubnetSpec,
)
from podnet.spec.sources import Source
from podnet.spec.validate import (
    LOG_DROPS_ANNOTATION,
    subnets_of,
    validate,
    validate_objects,
    validate_policies,
    validate_services,
)
from podnet.spec.yamlpos import Document, Path, parse, spec_error

REFUSED_KINDS = {
    "Job": "a Job's pods run to completion, and podnet's pods serve until down: give them as Pods or a Deployment",
    "CronJob": "a CronJob starts Jobs on a schedule, and podnet's pods serve until down: give them as Pods",
}
WORKLOADS = (DeploymentDoc, ReplicaSetDoc, StatefulSetDoc, DaemonSetDoc)


def load_file(path: str | FsPath) -> Spec:
    """A file, a directory of manifests, or ``-`` (standard input)."""
    return load_sources(sources.read_sources([str(path)]))


def load_text(text: str, file: str = "<string>") -> Spec:
    return load_sources([Source(file, text)])


def load_stored(text: str, file: str) -> Spec:
    """The spec as ``up`` stored it (``sources.stored_form``)."""
    return load_sources(sources.from_stored_form(text, file))


@dataclass
class _Objects:
    """Every object of the sources, by kind, in the order written."""

    cluster: tuple[Document, ClusterDoc] | None = None
    namespaces: list[tuple[Document, NamespaceDoc]] = field(default_factory=list)
    pods: list[tuple[Document, PodDoc]] = field(default_factory=list)
    workloads: list[tuple[Document, Any]] = field(default_factory=list)
    services: list[tuple[Document, ServiceDoc]] = field(default_factory=list)
    policies: list[tuple[Document, NetworkPolicyDoc]] = field(default_factory=list)
    ignored: list[kubefields.Ignored] = field(default_factory=list)

    def add(self, doc: Document) -> None:
        if not isinstance(doc.data, dict):
            raise spec_error(doc, (), "each document must be a mapping with apiVersion and kind")
        kind = doc.data.get("kind")
        if kind is None:
            raise spec_error(doc, ("kind",), f"required field is missing (expected one of: {', '.join(KINDS)})")
        if not isinstance(kind, str):
            raise spec_error(doc, ("kind",), f"kind must be a string naming the object's kind, got {kind!r}")
        if kind in REFUSED_KINDS:
            raise spec_error(doc, ("kind",), f"{kind} is not supported: {REFUSED_KINDS[kind]}")
        if kind not in KINDS:
            raise spec_error(doc, ("kind",), f"unknown kind {kind!r} (expected one of: {', '.join(KINDS)})")
        obj = self._model(doc, KINDS[kind])
        if isinstance(obj, ListDoc):
            for i, item in enumerate(obj.items):
                self.add(doc.at(("items", i), item))
        elif isinstance(obj, ClusterDoc):
            if self.cluster is not None:
                first = self.cluster[0]
                raise spec_error(
                    doc, ("kind",), f"a spec holds exactly one Cluster document; the first is {first.file}:{first.line}"
                )
            self.cluster = (doc, obj)
        elif isinstance(obj, NamespaceDoc):
            self.namespaces.append((doc, obj))
        elif isinstance(obj, PodDoc):
            self.pods.append((doc, obj))
        elif isinstance(obj, WORKLOADS):
            self.workloads.append((doc, obj))
        elif isinstance(obj, ServiceDoc):
            self.services.append((doc, obj))
        elif isinstance(obj, NetworkPolicyDoc):
            self.policies.append((doc, obj))

    def _model(self, doc: Document, model: type[BaseModel]) -> Any:
        data, ignored = kubefields.sort_fields(doc, model)
        try:
            obj = model.model_validate(data)
        except ValidationError as exc:
            raise _pydantic_error(doc, exc) from None
        self.ignored += ignored
        return obj


def _pydantic_error(doc: Document, exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    # Drop pydantic's internal loc parts (e.g. the 'function-after[...]' of validators).
    loc: Path = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}, {msg[0].lower()}{msg[1:]}"
    return spec_error(doc, loc, msg)


def load_sources(given: list[Source]) -> Spec:
    objects = _Objects()
    for source in given:
        for doc in parse(source.text, source.name):
            objects.add(doc)
    if objects.cluster is None:
        names = ", ".join(s.name for s in given)
        raise SpecError(names, None, "kind", "no Cluster document (expected one with apiVersion: podnet.io/v1alpha1)")

    cluster = (objects.cluster[0], fabric.expand(*objects.cluster))  # a fabric becomes subnets and routers
    nodes = [n.name for n in cluster[1].spec.nodes]
    pods = [*objects.pods, *(pod for doc, w in objects.workloads for pod in workloads.expand(doc, w, nodes))]
    validate_objects(objects.namespaces, [*objects.workloads, *pods, *objects.services, *objects.policies])
    validate(cluster, objects.namespaces, pods)
    validate_services(cluster, objects.services)
    validate_policies(objects.policies)
    spec = _to_spec(cluster, objects.namespaces, pods)
    spec.warnings = kubefields.warnings(objects.ignored)
    for doc, svc in objects.services:
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
    spec.policies = [_policy(doc, pol) for doc, pol in objects.policies]
    return spec


def _to_spec(
    cluster_doc: tuple[Document, ClusterDoc],
    namespaces: list[tuple[Document, NamespaceDoc]],
    pods: list[tuple[Document, PodDoc]],
) -> Spec:
    file, cluster = cluster_doc[0].file, cluster_doc[1]
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
                file=doc.file,
                hostname=pod.spec.hostname,
                subdomain=pod.spec.subdomain,
            )
        )
    return spec


def _peers(peers: list[PolicyPeerDoc] | None) -> tuple[PolicyPeer, ...]:
    return tuple(
        PolicyPeer(
            p.podSelector.to_selector() if p.podSelector is not None else None,
            p.namespaceSelector.to_selector() if p.namespaceSelector is not None else None,
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
        pod_selector=body.podSelector.to_selector(),
        types=tuple(t for t in ("Ingress", "Egress") if t in types),
        ingress=tuple(PolicyRule(_peers(r.from_), ports(r)) for r in body.ingress or []),
        egress=tuple(PolicyRule(_peers(r.to), ports(r)) for r in body.egress or []),
        log_drops=pol.metadata.annotations.get(LOG_DROPS_ANNOTATION) == "true",
        line=doc.line,
    )

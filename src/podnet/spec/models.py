"""The typed cluster file: one ``Cluster`` document plus Kubernetes manifests.

Every model forbids unknown fields, so a typo is an error rather than a silently ignored
setting. The models of Kubernetes objects hold only the fields podnet reads: the other fields
Kubernetes defines are dropped (with a warning) before these models see a document
(``kubefields``). Cross-document rules (overlaps, references, duplicates) live in ``validate``;
workloads become pods in ``workloads``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_label(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (expected at most 63 characters of a-z, 0-9 "
            "and '-', starting and ending with a letter or digit)"
        )
    return value


def check_optional_label(value: str | None) -> str | None:
    return None if value is None else check_label(value)


def check_cidr(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid IPv4 CIDR ({exc}; expected e.g. 10.244.0.0/16)") from None
    return str(net)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectMeta(Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _check_name = field_validator("name")(check_label)


class ContainerPort(Strict):
    name: str | None = None
    containerPort: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    hostPort: int | None = Field(None, ge=1, le=65535)


class Subnet(Strict):
    name: str
    cidr: str

    _check_name = field_validator("name")(check_label)
    _check_cidr = field_validator("cidr")(check_cidr)


class Router(Strict):
    name: str
    subnets: list[str] = Field(min_length=1)
    uplink: str | None = None  # the external network this router (the edge) leads to

    _check_name = field_validator("name")(check_label)


class Fabric(Strict):
    """A leaf-spine fabric podnet lays out (RFC 7938): see podnet.spec.fabric and docs/bgp.md."""

    spines: int = Field(ge=1, le=64)
    leaves: int = Field(ge=1, le=512)
    rackCIDR: str = "172.31.0.0/16"  # one block of rackMaskSize per leaf, for its nodes
    rackMaskSize: int = Field(24, ge=8, le=29)
    linkCIDR: str = "172.30.0.0/16"  # one /31 per leaf-spine link
    spineASN: int = Field(65000, ge=1, le=4294967294)  # shared by every spine
    leafASN: int = Field(65001, ge=1, le=4294967294)  # leaf-N gets leafASN + N - 1
    border: str | None = None  # the leaf leading to spec.external (default: leaf-1)

    _check_cidrs = field_validator("rackCIDR", "linkCIDR")(check_cidr)


class Underlay(Strict):
    """One L2 segment (``cidr``) or several (``subnets``) joined by ``routers``, or a ``fabric``."""

    cidr: str | None = None
    subnets: list[Subnet] | None = None
    routers: list[Router] = Field(default_factory=list)
    fabric: Fabric | None = None
    mtu: int = Field(1500, ge=1280, le=9000)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        return None if value is None else check_cidr(value)


class Node(Strict):
    name: str
    subnet: str | None = None
    leaf: str | None = None  # with underlay.fabric: the leaf the node is attached to

    _check_name = field_validator("name")(check_label)


class ExternalHost(Strict):
    name: str
    address: str
    ports: list[ContainerPort] = Field(default_factory=list)

    _check_name = field_validator("name")(check_label)


class External(Strict):
    name: str
    cidr: str
    hosts: list[ExternalHost] = Field(default_factory=list)

    _check_name = field_validator("name")(check_label)
    _check_cidr = field_validator("cidr")(check_cidr)


class Vxlan(Strict):
    vni: int = Field(1, ge=1, le=16777215)
    port: int = Field(4789, ge=1, le=65535)


class DnsConfig(Strict):
    enabled: bool = True
    domain: str = "cluster.local"
    upstreams: list[str] = Field(default_factory=list)  # "IP" or "IP:PORT"; none: REFUSED outside the domain

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.rstrip(".").lower()
        for label in value.split("."):
            check_label(label)
        return value


class Bgp(Strict):
    """backend: bgp. Defaults and the ASN plan: podnet.spec.fabric and docs/bgp.md."""

    mode: Literal["fabric", "full-mesh"] | None = None  # default: fabric with routers, else full-mesh
    nodeASN: int = Field(64512, ge=1, le=4294967294)  # full-mesh: every node's; fabric: the first node's
    routerASN: int = Field(65000, ge=1, le=4294967294)  # routers of underlay.routers: the first one's
    holdTime: int = Field(3, ge=3, le=65535)  # seconds; keepalives every third of it
    bfd: bool = True
    bfdInterval: int = Field(100, ge=10, le=10000)  # milliseconds
    bfdMultiplier: int = Field(3, ge=1, le=255)


class ClusterBody(Strict):
    podCIDR: str = "10.244.0.0/16"
    nodeCIDRMaskSize: int = Field(24, ge=8, le=30)
    serviceCIDR: str = "10.96.0.0/12"
    backend: Literal["host-gw", "vxlan", "bgp"] = "host-gw"
    bgp: Bgp | None = None
    vxlan: Vxlan = Field(default_factory=Vxlan)
    underlay: Underlay = Field(default_factory=Underlay)
    nodes: list[Node] = Field(min_length=1)
    external: External | None = None
    dns: DnsConfig = Field(default_factory=DnsConfig)

    _check_cidrs = field_validator("podCIDR", "serviceCIDR")(check_cidr)


class ClusterMeta(Strict):
    name: str

    _check_name = field_validator("name")(check_label)


class ClusterDoc(Strict):
    apiVersion: Literal["podnet.io/v1alpha1"]
    kind: Literal["Cluster"]
    metadata: ClusterMeta
    spec: ClusterBody


class NamespaceDoc(Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Namespace"]
    metadata: ObjectMeta


class Container(Strict):
    name: str
    ports: list[ContainerPort] = Field(default_factory=list)

    _check_name = field_validator("name")(check_label)


class PodBody(Strict):
    nodeName: str | None = None
    containers: list[Container] = Field(min_length=1)
    hostname: str | None = None  # with subdomain: HOSTNAME.SUBDOMAIN.NS.svc.DOMAIN under a headless Service
    subdomain: str | None = None

    _check_names = field_validator("hostname", "subdomain")(check_optional_label)


class PodDoc(Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodBody


class ServicePortDoc(Strict):
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int = Field(ge=1, le=65535)
    targetPort: int | str | None = None
    nodePort: int | None = Field(None, ge=30000, le=32767)

    @field_validator("targetPort")
    @classmethod
    def _target(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"{value} is out of range (expected 1-65535 or a container port's name)")
        if isinstance(value, str):
            if value.isdigit():
                return _target_number(int(value))
            check_label(value)
        return value


def _target_number(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is out of range (expected 1-65535 or a container port's name)")
    return value


class ClientIPConfig(Strict):
    timeoutSeconds: int = Field(10800, ge=1, le=86400)


class AffinityConfig(Strict):
    clientIP: ClientIPConfig = Field(default_factory=ClientIPConfig)


class ServiceBody(Strict):
    type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    clusterIP: str | None = None  # "None" makes a headless service
    selector: dict[str, str] = Field(default_factory=dict)
    ports: list[ServicePortDoc] = Field(min_length=1)
    sessionAffinity: Literal["None", "ClientIP"] = "None"
    sessionAffinityConfig: AffinityConfig | None = None
    externalTrafficPolicy: Literal["Cluster", "Local"] = "Cluster"


class ServiceDoc(Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    metadata: ObjectMeta
    spec: ServiceBody


class SelectorRequirementDoc(Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelectorDoc(Strict):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[SelectorRequirementDoc] = Field(default_factory=list)

    def to_selector(self) -> LabelSelector:
        return LabelSelector(
            tuple(sorted(self.matchLabels.items())),
            tuple(SelectorRequirement(r.key, r.operator, tuple(sorted(set(r.values)))) for r in self.matchExpressions),
        )


class IPBlockDoc(Strict):
    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


class PolicyPeerDoc(Strict):
    podSelector: LabelSelectorDoc | None = None
    namespaceSelector: LabelSelectorDoc | None = None
    ipBlock: IPBlockDoc | None = None


class PolicyPortDoc(Strict):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None  # a number, or a container port's name
    endPort: int | None = None


class IngressRuleDoc(Strict):
    from_: list[PolicyPeerDoc] | None = Field(None, alias="from")
    ports: list[PolicyPortDoc] | None = None


class EgressRuleDoc(Strict):
    to: list[PolicyPeerDoc] | None = None
    ports: list[PolicyPortDoc] | None = None


class NetworkPolicyBody(Strict):
    podSelector: LabelSelectorDoc
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[IngressRuleDoc] | None = None
    egress: list[EgressRuleDoc] | None = None


class NetworkPolicyDoc(Strict):
    apiVersion: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicyBody


class TemplateMeta(Strict):
    """A pod template's metadata: its pods get generated names and the workload's namespace."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(Strict):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: PodBody


class ReplicaSetBody(Strict):
    replicas: int = Field(1, ge=0)
    selector: LabelSelectorDoc
    template: PodTemplate


class DeploymentBody(ReplicaSetBody):
    pass


class Ordinals(Strict):
    start: int = Field(0, ge=0)


class StatefulSetBody(ReplicaSetBody):
    serviceName: str | None = None  # the governing (headless) Service: the pods' DNS subdomain
    ordinals: Ordinals = Field(default_factory=Ordinals)

    _check_service = field_validator("serviceName")(check_optional_label)


class DaemonSetBody(Strict):
    selector: LabelSelectorDoc
    template: PodTemplate


class DeploymentDoc(Strict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["Deployment"]
    metadata: ObjectMeta
    spec: DeploymentBody


class ReplicaSetDoc(Strict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["ReplicaSet"]
    metadata: ObjectMeta
    spec: ReplicaSetBody


class StatefulSetDoc(Strict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["StatefulSet"]
    metadata: ObjectMeta
    spec: StatefulSetBody


class DaemonSetDoc(Strict):
    apiVersion: Literal["apps/v1"]
    kind: Literal["DaemonSet"]
    metadata: ObjectMeta
    spec: DaemonSetBody


WorkloadDoc = DeploymentDoc | ReplicaSetDoc | StatefulSetDoc | DaemonSetDoc


class ListDoc(Strict):
    """``kind: List`` (what ``kubectl get -o yaml`` prints): its items are read as documents."""

    apiVersion: Literal["v1"]
    kind: Literal["List"]
    items: list[dict] = Field(default_factory=list)


KINDS: dict[str, type[Strict]] = {
    "Cluster": ClusterDoc,
    "Namespace": NamespaceDoc,
    "Pod": PodDoc,
    "Service": ServiceDoc,
    "NetworkPolicy": NetworkPolicyDoc,
    "Deployment": DeploymentDoc,
    "ReplicaSet": ReplicaSetDoc,
    "StatefulSet": StatefulSetDoc,
    "DaemonSet": DaemonSetDoc,
    "List": ListDoc,
}


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str  # TCP | UDP | SCTP
    name: str | None = None
    host_port: int | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    node: str | None  # as the user wrote it; placement happens in plan
    ports: tuple[Port, ...]
    line: int  # where the document starts, for errors found while planning
    file: str = ""  # the file of that document (Spec.file when empty)
    hostname: str | None = None  # spec.hostname and spec.subdomain, for DNS
    subdomain: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    protocol: str
    port: int
    target: int | str  # a number, or the name of a container port
    node_port: int | None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str  # ClusterIP | NodePort
    cluster_ip: str | None  # as written; "None" = headless, None = allocate
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]
    affinity_timeout: int | None  # seconds, when sessionAffinity is ClientIP
    local: bool  # externalTrafficPolicy: Local
    line: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class SubnetSpec:
    name: str
    cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class RouterSpec:
    name: str
    subnets: tuple[str, ...]
    uplink: str | None


@dataclass(frozen=True)
class HostSpec:
    """An external host: lives on the external network and runs netexec like a pod."""

    name: str
    address: str
    ports: tuple[Port, ...]


@dataclass(frozen=True)
class ExternalSpec:
    name: str
    cidr: ipaddress.IPv4Network
    hosts: tuple[HostSpec, ...]


@dataclass
class ClusterSpec:
    name: str
    pod_cidr: ipaddress.IPv4Network
    node_mask: int
    service_cidr: ipaddress.IPv4Network
    backend: str
    underlay_mtu: int
    nodes: list[str]
    subnets: list[SubnetSpec]
    node_subnet: dict[str, str]
    routers: list[RouterSpec] = field(default_factory=list)
    external: ExternalSpec | None = None
    vni: int = 1
    vxlan_port: int = 4789
    dns_enabled: bool = True
    dns_domain: str = "cluster.local"
    dns_upstreams: list[str] = field(default_factory=list)
    fabric: Fabric | None = None  # the leaf-spine layout the subnets and routers came from
    bgp: Bgp | None = None  # backend bgp, mode resolved


@dataclass(frozen=True)
class SelectorRequirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty one selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyPeer:
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; str: a container port's name
    end_port: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    peers: tuple[PolicyPeer, ...] = ()  # empty: every peer
    ports: tuple[PolicyPort, ...] = ()  # empty: every port


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    types: tuple[str, ...]  # "Ingress" and/or "Egress", defaulted as Kubernetes does
    ingress: tuple[PolicyRule, ...]
    egress: tuple[PolicyRule, ...]
    log_drops: bool  # annotation podnet.io/log-drops: "true"
    line: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Spec:
    """A whole validated cluster file (or several: ``file`` is the one holding the Cluster)."""

    file: str
    cluster: ClusterSpec
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    policies: list[NetworkPolicy] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # Kubernetes fields podnet ignored, one per field

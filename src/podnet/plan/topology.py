"""What the cluster is made of, with every address decided: the vocabulary of status and trace.

The State says what each namespace contains; the Topology says what each namespace *is*
(a node, a pod, a router, a switch, an external host) and the name the user knows it by.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from podnet.spec.models import Port

if TYPE_CHECKING:
    from podnet.plan.policy import PolicySet


@dataclass(frozen=True)
class SubnetInfo:
    name: str
    cidr: str
    switch_netns: str
    external: bool = False  # the "internet" segment behind the edge router


@dataclass(frozen=True)
class Interface:
    ifname: str
    subnet: str
    ip: str
    prefix: int
    mac: str


@dataclass(frozen=True)
class NodeInfo:
    name: str
    netns: str
    subnet: str
    underlay_ip: str
    underlay_prefix: int
    pod_cidr: str
    gateway: str  # the cni0 address, first host of pod_cidr


@dataclass(frozen=True)
class RouterInfo:
    name: str
    netns: str
    interfaces: tuple[Interface, ...]
    uplink: str | None  # ifname toward the external network, on the edge router


@dataclass(frozen=True)
class HostInfo:
    """An external host on the external network; runs netexec like a pod."""

    name: str
    netns: str
    ip: str
    prefix: int
    mac: str
    gateway: str
    ports: tuple[Port, ...]


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    ip: str
    prefix: int
    mac: str
    netns: str
    host_veth: str
    labels: dict[str, str]
    ports: tuple[Port, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


SLOT_WIDTH = 4096  # numgen values per service port: all endpoints, then local ones from half-way
LOCAL_OFFSET = SLOT_WIDTH // 2


@dataclass(frozen=True)
class Endpoint:
    pod: str  # "ns/name"
    ip: str
    node: str
    port: int  # the target port on the pod


@dataclass(frozen=True)
class ServicePortInfo:
    name: str | None
    protocol: str
    port: int
    node_port: int | None
    endpoints: tuple[Endpoint, ...]
    slot: int  # base of this port's numgen values in the endpoint maps

    def local_endpoints(self, node: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.node == node)


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None  # None: headless
    ports: tuple[ServicePortInfo, ...]
    affinity_timeout: int | None
    local: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Topology:
    cluster: str
    backend: str
    mtu: int  # of the pod network (the underlay's, less any encapsulation)
    subnets: dict[str, SubnetInfo] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    routers: dict[str, RouterInfo] = field(default_factory=dict)
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    pods: dict[str, PodInfo] = field(default_factory=dict)  # key "ns/name"
    services: dict[str, ServiceInfo] = field(default_factory=dict)  # key "ns/name"
    policies: PolicySet | None = None  # NetworkPolicies and whom they select: plan.policy.verdict reads it

    def kind_of(self, netns: str) -> tuple[str, str]:
        """(kind, name the user knows) for one of this cluster's namespaces."""
        for table, kind in (
            (self.subnets, "switch"),
            (self.nodes, "node"),
            (self.routers, "router"),
            (self.hosts, "external"),
        ):
            for name, item in table.items():
                if getattr(item, "switch_netns", None) == netns or getattr(item, "netns", None) == netns:
                    return (kind, name)
        for pod in self.pods.values():
            if pod.netns == netns:
                return ("pod", pod.key)
        return ("unknown", netns)

    def netns_of(self, name: str) -> str | None:
        """The namespace of a node, router or external host, by the name the user wrote."""
        for table in (self.nodes, self.routers, self.hosts):
            if name in table:
                return table[name].netns
        return None

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "backend": self.backend,
            "mtu": self.mtu,
            "subnets": [asdict(s) for s in self.subnets.values()],
            "nodes": [asdict(n) for n in self.nodes.values()],
            "routers": [asdict(r) for r in self.routers.values()],
            "hosts": [asdict(h) for h in self.hosts.values()],
            "pods": [asdict(p) for p in self.pods.values()],
            "services": [asdict(s) for s in self.services.values()],
        }

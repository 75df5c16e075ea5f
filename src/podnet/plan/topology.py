"""What the cluster is made of, with every address decided: the vocabulary of status and trace.

The State says what each namespace contains; the Topology says what each namespace *is*
(a node, a pod, a switch) and which name the user knows it by.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from podnet.spec.models import Port


@dataclass(frozen=True)
class NodeInfo:
    name: str
    netns: str
    underlay_ip: str
    underlay_prefix: int
    pod_cidr: str
    gateway: str  # the cni0 address, first host of pod_cidr


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


@dataclass
class Topology:
    cluster: str
    backend: str
    switch_netns: str
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    pods: dict[str, PodInfo] = field(default_factory=dict)  # key "ns/name"

    def kind_of(self, netns: str) -> tuple[str, str]:
        """(kind, name the user knows) for one of this cluster's namespaces."""
        if netns == self.switch_netns:
            return ("switch", "underlay")
        for node in self.nodes.values():
            if node.netns == netns:
                return ("node", node.name)
        for pod in self.pods.values():
            if pod.netns == netns:
                return ("pod", pod.key)
        return ("unknown", netns)

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "backend": self.backend,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "pods": [asdict(p) for p in self.pods.values()],
        }

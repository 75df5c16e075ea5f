"""Where a distributed cluster keeps everything in etcd: one prefix per cluster.

```
/podnet/<cluster>/config                      the Cluster document             (podnet apply)
/podnet/<cluster>/namespaces/<ns>             Namespace manifests               (podnet apply)
/podnet/<cluster>/pods/<ns>/<pod>             Pod manifests                     (podnet apply)
/podnet/<cluster>/services/<ns>/<name>        Service manifests                 (podnet apply)
/podnet/<cluster>/endpoints/<ns>/<name>       the endpoints of a Service        (podnet apply)
/podnet/<cluster>/policies/<ns>/<name>        NetworkPolicy manifests           (podnet apply)
/podnet/<cluster>/nodes/<node>                a node's registration, on its lease   (its agent)
/podnet/<cluster>/podcidrs/<node>             a node's pod CIDR, on its lease       (its agent)
/podnet/<cluster>/ipam/<node>/<ip>            an address given to a pod, on the lease (its agent)
/podnet/<cluster>/status/<node>/...           what the agent observed on its host   (its agent)
```

Everything an agent writes is under a key or prefix named after its node, so etcd's
permissions (key ranges) can confine it to its own (:mod:`podnet.kv.access`). Uniqueness
across nodes is still a transaction: a node takes a pod CIDR by writing ``podcidrs/<node>``
only if no key under ``podcidrs/`` holds that CIDR yet (a compare over the whole range, which
needs only read access to the others), and ``ipam/<node>/<ip>`` is put-if-absent inside the
node's own CIDR. A node's registration, CIDR and addresses hang on the lease its agent keeps
alive, so they disappear together when it dies, and the CIDR is free again only then.

etcd fails a value comparison over a range that holds no key at all, so the first claim
would always lose: ``podcidrs/`` itself is an *anchor*, a key with an empty value written when
the cluster's store is made (:meth:`Keys.anchors`), which keeps the range never empty.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "/podnet/"


@dataclass(frozen=True)
class Keys:
    """The keys of one cluster."""

    cluster: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}{self.cluster}/"

    @property
    def config(self) -> str:
        return self.prefix + "config"

    def kind(self, kind: str) -> str:
        """The prefix of one kind of object: namespaces, pods, services, endpoints, policies."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        return f"{self.prefix}{kind}/"

    def namespace(self, name: str) -> str:
        return self.kind("namespaces") + name

    def object(self, kind: str, namespace: str, name: str) -> str:
        return f"{self.kind(kind)}{namespace}/{name}"

    @property
    def nodes(self) -> str:
        return self.prefix + "nodes/"

    def node(self, node: str) -> str:
        return self.nodes + node

    @property
    def podcidrs(self) -> str:
        return self.prefix + "podcidrs/"

    def podcidr(self, node: str) -> str:
        return self.podcidrs + node

    def anchors(self) -> tuple[str, ...]:
        """Keys that must exist (empty) before any agent claims: see the module's docstring."""
        return (self.podcidrs,)

    def ipam(self, node: str) -> str:
        """The prefix of a node's address allocations (a trailing ``/``: node-1 is not node-10)."""
        return f"{self.prefix}ipam/{node}/"

    def ip(self, node: str, ip: str) -> str:
        return self.ipam(node) + ip

    def status(self, node: str) -> str:
        return f"{self.prefix}status/{node}/"


KINDS = ("namespaces", "pods", "services", "endpoints", "policies")

"""Each node's nftables table: egress masquerade and hostPort DNAT.

Traffic from a pod to anything outside the cluster (neither a pod nor a service address)
leaves with the node's address; pod-to-pod keeps the pod's. A container port with a
``hostPort`` is published on the node's underlay address, as the CNI portmap plugin does.
The table is rendered as nft source and loaded as one transaction per namespace.
"""

from __future__ import annotations

import hashlib

from podnet.plan.topology import NodeInfo, PodInfo
from podnet.state import NftTable

TABLE = "podnet"


def node_table(node: NodeInfo, pods: list[PodInfo], pod_cidr: str, service_cidr: str) -> NftTable:
    postrouting = [
        f'ip saddr {pod_cidr} ip daddr != {{ {pod_cidr}, {service_cidr} }} oifname != "cni0" masquerade',
    ]
    prerouting = []
    for pod in sorted(pods, key=lambda p: p.key):
        for port in pod.ports:
            if port.host_port is not None:
                proto = port.protocol.lower()
                prerouting.append(
                    f"ip daddr {node.underlay_ip} {proto} dport {port.host_port} dnat to {pod.ip}:{port.port}"
                    f' comment "hostPort {pod.key}"'
                )
    chains = [
        ("prerouting", "type nat hook prerouting priority dstnat; policy accept;", prerouting),
        # The node itself reaching its own hostPort takes the output hook, not prerouting.
        ("output", "type nat hook output priority -100; policy accept;", list(prerouting)),
        ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", postrouting),
    ]
    body = "\n".join(
        f"  chain {name} {{\n    {hook}\n" + "".join(f"    {rule}\n" for rule in rules) + "  }"
        for name, hook, rules in chains
    )
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    text = f'table ip {TABLE} {{\n  comment "podnet {digest}"\n{body}\n}}\n'
    return NftTable("ip", TABLE, digest, sum(len(rules) for _, _, rules in chains), text)

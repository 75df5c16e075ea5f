"""Naming conventions: everything podnet creates is findable from the cluster's name.

Kubernetes names never contain ``_``, so ``podnet_<cluster>_<node>`` and
``podnet_<cluster>_<namespace>_<pod>`` split unambiguously, and ``down`` can find every
namespace of a cluster even with the state file gone. Switch namespaces carry a ``.`` which
a DNS-1123 label never has, so they cannot collide with a node named like a segment.
Interface names must fit 15 bytes, so per-pod names are short hashes.
"""

from __future__ import annotations

import hashlib
import ipaddress

PREFIX = "podnet_"


def cluster_prefix(cluster: str) -> str:
    return f"{PREFIX}{cluster}_"


def cluster_of_netns(name: str) -> str | None:
    """The cluster a namespace podnet named belongs to (None for a name podnet does not give)."""
    if not name.startswith(PREFIX):
        return None
    cluster, sep, rest = name[len(PREFIX) :].partition("_")
    return cluster if sep and cluster and rest else None


def node_netns(cluster: str, node: str) -> str:
    return f"{PREFIX}{cluster}_{node}"


def pod_netns(cluster: str, namespace: str, pod: str) -> str:
    return f"{PREFIX}{cluster}_{namespace}_{pod}"


def switch_netns(cluster: str, segment: str) -> str:
    return f"{PREFIX}{cluster}_sw.{segment}"


def _short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:length]


def pod_host_veth(namespace: str, pod: str) -> str:
    """Node-side end of a pod's veth pair, like the CNI bridge plugin's ``vethXXXXXXXX``."""
    return "veth" + _short_hash(namespace, pod)


def switch_port(segment: str, member: str) -> str:
    """Switch-side end of a node's (or router's) underlay veth."""
    return "sw" + _short_hash(segment, member)


def mac_for_ip(ip: str) -> str:
    """A stable, locally administered MAC derived from an IPv4 address (as CNI's bridge does)."""
    packed = ipaddress.IPv4Address(ip).packed
    return "0a:58:" + ":".join(f"{b:02x}" for b in packed)


def check_cluster_name(cluster: str) -> None:
    """Refuse names that could match another cluster's namespaces by prefix."""
    from podnet.errors import UsageError
    from podnet.spec.models import DNS1123_LABEL

    if not DNS1123_LABEL.match(cluster) or len(cluster) > 63:
        raise UsageError(f"{cluster!r} is not a cluster name (expected a DNS-1123 label)")

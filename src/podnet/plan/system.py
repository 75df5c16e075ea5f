"""Objects every cluster has without the user declaring them: the cluster DNS pod and Service.

Like kubeadm's kube-dns, the DNS server sits behind a Service at the tenth address of the
service CIDR; its pod ``kube-system/coredns`` is an ordinary pod (an address on a node, a veth,
a route), served by podnet's DNS daemon instead of netexec.
"""

from __future__ import annotations

import dataclasses

from podnet.plan import dns
from podnet.spec.models import Pod, Port, Service, ServicePort, Spec

DNS_POD = "kube-system/coredns"
DNS_LABELS = {"k8s-app": "kube-dns"}


def with_system_objects(spec: Spec) -> Spec:
    if not spec.cluster.dns_enabled:
        return spec
    pod = Pod(
        namespace="kube-system",
        name="coredns",
        labels=dict(DNS_LABELS),
        node=None,
        ports=(Port(53, "UDP", "dns"), Port(53, "TCP", "dns-tcp")),
        line=0,
    )
    service = Service(
        namespace="kube-system",
        name="kube-dns",
        type="ClusterIP",
        cluster_ip=dns.dns_vip(spec.cluster.service_cidr),
        selector=dict(DNS_LABELS),
        ports=(ServicePort("dns", "UDP", 53, "dns", None), ServicePort("dns-tcp", "TCP", 53, "dns-tcp", None)),
        affinity_timeout=None,
        local=False,
        line=0,
    )
    return dataclasses.replace(spec, pods=[*spec.pods, pod], services=[*spec.services, service])

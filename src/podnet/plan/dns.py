"""The cluster DNS zone, planned: every record the cluster DNS server answers, as data.

Pure functions, no I/O. :func:`zone` turns services and pods into a JSON-serialisable,
deterministic description that ``podnet.runtime.dns`` serves; the names follow the
Kubernetes DNS specification (https://github.com/kubernetes/dns/blob/master/docs/specification.md):

- ``SVC.NS.svc.DOMAIN``  A  the ClusterIP; for a headless service, every endpoint address
- ``POD.SVC.NS.svc.DOMAIN``  A  the endpoint's address (headless services only); POD is the
  pod's ``hostname`` when its ``subdomain`` names the service (a StatefulSet's pods: ``web-0``
  under ``web``), as the endpoints controller sets the endpoint's hostname, else its name
- ``_PORT._PROTO.SVC.NS.svc.DOMAIN``  SRV  one per *named* port: the service name as
  target for a ClusterIP service, each ``POD.SVC.NS.svc.DOMAIN`` for a headless one
- ``A-B-C-D.NS.pod.DOMAIN``  A  every pod
- ``D.C.B.A.in-addr.arpa``  PTR  every ClusterIP (to the service's name) and every pod IP
  (to the pod's ``A-B-C-D.NS.pod.DOMAIN`` name)

Names are lowercase, absolute (trailing dot). Records are sorted and deduplicated, so the
same input always gives the same zone, and a digest of it names the configuration.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from dataclasses import dataclass

TTL = 5  # seconds, CoreDNS's kubernetes plugin default
SOA_MNAME = "ns.dns"  # CoreDNS's SOA names, relative to the domain
SOA_RNAME = "hostmaster"
SRV_PRIORITY = 0
SRV_WEIGHT = 100
DNS_VIP_INDEX = 10  # kubeadm puts kube-dns on the tenth address of the service CIDR


@dataclass(frozen=True)
class DnsPort:
    name: str | None
    protocol: str  # TCP, UDP or SCTP
    port: int  # the service's port


@dataclass(frozen=True)
class DnsEndpoint:
    pod: str  # the pod's name: the endpoint's hostname under a headless service
    ip: str


@dataclass(frozen=True)
class DnsService:
    namespace: str
    name: str
    cluster_ip: str | None  # None: headless
    ports: tuple[DnsPort, ...] = ()
    endpoints: tuple[DnsEndpoint, ...] = ()  # the ready ones

    @property
    def headless(self) -> bool:
        return self.cluster_ip in (None, "", "None")


@dataclass(frozen=True)
class DnsPod:
    namespace: str
    name: str
    ip: str
    hostname: str | None = None  # spec.hostname and spec.subdomain
    subdomain: str | None = None


@functools.lru_cache(maxsize=1 << 16)
def _addr(ip: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(ip)


def absolute(name: str) -> str:
    """Lowercase, with exactly one trailing dot."""
    return name.strip().rstrip(".").lower() + "."


def reverse_name(ip: str) -> str:
    """``10.96.0.10`` -> ``10.0.96.10.in-addr.arpa.``"""
    return _addr(ip).reverse_pointer + "."


def pod_name(ip: str, namespace: str, domain: str) -> str:
    """``A-B-C-D.NS.pod.DOMAIN.``, the name every pod answers to."""
    dashed = str(_addr(ip)).replace(".", "-")
    return absolute(f"{dashed}.{namespace}.pod.{absolute(domain)}")


def service_name(namespace: str, name: str, domain: str) -> str:
    return absolute(f"{name}.{namespace}.svc.{absolute(domain)}")


def parse_upstream(upstream: str) -> tuple[str, int]:
    """``"10.0.0.1"`` or ``"10.0.0.1:5353"`` -> (address, port); ValueError when neither."""
    host, sep, port = upstream.rpartition(":")
    if not sep:
        host, port = upstream, "53"
    address = str(ipaddress.IPv4Address(host))
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"upstream {upstream!r}: port out of range")
    return address, number


def _upstream_text(upstream: str) -> str:
    address, port = parse_upstream(upstream)
    return address if port == 53 else f"{address}:{port}"


def _a(name: str, ip: str) -> dict:
    return {"name": name, "type": "A", "data": str(_addr(ip))}


def _ptr(ip: str, target: str) -> dict:
    return {"name": reverse_name(ip), "type": "PTR", "data": target}


def _srv(name: str, port: int, target: str, weight: int) -> dict:
    data = {"priority": SRV_PRIORITY, "weight": weight, "port": port, "target": target}
    return {"name": name, "type": "SRV", "data": data}


def _hashable(data: str | dict) -> object:
    return data if isinstance(data, str) else tuple(sorted(data.items()))


def _sort_key(record: dict) -> tuple:
    data = record["data"]
    if record["type"] == "A":
        order: object = _addr(data).packed
    elif record["type"] == "SRV":
        order = (data["port"], data["target"])
    else:
        order = data.encode()
    return (record["name"], record["type"], order)


def zone(domain: str, services: list[DnsService], pods: list[DnsPod], upstreams: list[str]) -> dict:
    """Every record of the cluster zone, the domain and the upstreams, as plain data.

    Returns ``{"domain": "cluster.local.", "ttl": 5, "soa": {...}, "upstreams": [...],
    "records": [{"name", "type": "A"|"SRV"|"PTR", "data"}, ...]}`` where ``data`` is an
    address (A), a name (PTR) or ``{"priority", "weight", "port", "target"}`` (SRV).
    """
    domain = absolute(domain)
    records: list[dict] = []
    by_name = {(p.namespace, p.name): p for p in pods}
    for svc in services:
        base = service_name(svc.namespace, svc.name, domain)
        named_ports = [p for p in svc.ports if p.name]
        if not svc.headless:
            records.append(_a(base, svc.cluster_ip))  # type: ignore[arg-type]
            records.append(_ptr(svc.cluster_ip, base))  # type: ignore[arg-type]
            for p in named_ports:
                srv = absolute(f"_{p.name}._{p.protocol.lower()}.{base}")
                records.append(_srv(srv, p.port, base, SRV_WEIGHT))
            continue
        endpoints = sorted(set(svc.endpoints), key=lambda e: (e.pod, _addr(e.ip)))
        names = {ep: absolute(f"{_endpoint_hostname(svc, ep, by_name)}.{base}") for ep in endpoints}
        for ep in endpoints:
            records.append(_a(base, ep.ip))
            records.append(_a(names[ep], ep.ip))
        hosts = sorted(set(names.values()))
        weight = max(1, SRV_WEIGHT // len(hosts)) if hosts else SRV_WEIGHT
        for p in named_ports:
            srv = absolute(f"_{p.name}._{p.protocol.lower()}.{base}")
            for host in hosts:
                records.append(_srv(srv, p.port, host, weight))
    for pod in pods:
        name = pod_name(pod.ip, pod.namespace, domain)
        records.append(_a(name, pod.ip))
        records.append(_ptr(pod.ip, name))
    unique = {(r["name"], r["type"], _hashable(r["data"])): r for r in records}
    return {
        "domain": domain,
        "ttl": TTL,
        "soa": {"mname": absolute(f"{SOA_MNAME}.{domain}"), "rname": absolute(f"{SOA_RNAME}.{domain}")},
        "upstreams": [_upstream_text(u) for u in upstreams],
        "records": sorted(unique.values(), key=_sort_key),
    }


def _endpoint_hostname(svc: DnsService, ep: DnsEndpoint, pods: dict[tuple[str, str], DnsPod]) -> str:
    pod = pods.get((svc.namespace, ep.pod))
    if pod is not None and pod.hostname and pod.subdomain == svc.name:
        return pod.hostname
    return ep.pod


def digest(zone_data: dict) -> str:
    """A short, stable name for a zone (the ``digest`` of dns.json and of the Process)."""
    return hashlib.sha256(json.dumps(zone_data, sort_keys=True).encode()).hexdigest()[:16]


def resolv_conf(namespace: str, domain: str, nameserver: str) -> str:
    """The /etc/resolv.conf a pod of ``namespace`` gets with ``dnsPolicy: ClusterFirst``."""
    domain = absolute(domain).rstrip(".")
    return f"search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {nameserver}\noptions ndots:5\n"


def dns_vip(service_cidr: ipaddress.IPv4Network) -> str:
    """The cluster DNS service's ClusterIP: the tenth address, where kubeadm puts kube-dns."""
    if service_cidr.num_addresses <= DNS_VIP_INDEX + 1:
        raise ValueError(f"service CIDR {service_cidr} is too small for the DNS service address")
    return str(service_cidr.network_address + DNS_VIP_INDEX)

"""Services: virtual IPs, node ports and endpoints, planned the way Kubernetes defines them.

Endpoints are the pods in the service's namespace whose labels match its selector and that
serve the target port (a number, or a container port's name resolved per pod). A pod serves
its ports through netexec, so a matching pod is a ready endpoint once ``up`` has finished.
"""

from __future__ import annotations

import ipaddress

from podnet.errors import PlanError
from podnet.plan.ipam import Allocations, Exhausted, allocate
from podnet.plan.topology import (
    LOCAL_OFFSET,
    SLOT_WIDTH,
    Endpoint,
    NodeInfo,
    PodInfo,
    ServiceInfo,
    ServicePortInfo,
    Topology,
)
from podnet.spec.models import Service, Spec
from podnet.spec.validate import RESERVED_SERVICE_ADDRESSES
from podnet.state import NextHop, Route

NODE_PORT_RANGE = range(30000, 32768)


def _port_key(svc: Service, protocol: str, port: int) -> str:
    return f"{svc.key}:{protocol}:{port}"


def _target(pod: PodInfo, target: int | str, protocol: str) -> int | None:
    if isinstance(target, int):
        return target
    for port in pod.ports:
        if port.name == target and port.protocol == protocol:
            return port.port
    return None


def plan_services(spec: Spec, topo: Topology, previous: Allocations, allocations: Allocations) -> None:
    net = spec.cluster.service_cidr
    reserved = {str(net.network_address + i) for i in range(RESERVED_SERVICE_ADDRESSES + 1)}
    fixed = {s.key: s.cluster_ip for s in spec.services if s.cluster_ip not in (None, "None")}
    wanting = [s.key for s in spec.services if s.cluster_ip is None]
    free = (str(h) for h in net.hosts() if str(h) not in reserved and str(h) not in fixed.values())
    try:
        vips = {
            **fixed,
            **allocate(
                wanting, previous.get("service_ip", {}), free, valid=lambda ip: _free_vip(ip, net, reserved, fixed)
            ),
        }
    except Exhausted as exc:
        raise PlanError(f"serviceCIDR {net} has no address left for service {exc.owner}") from None
    asked = set(wanting)
    allocations["service_ip"] = {k: v for k, v in vips.items() if k in asked}

    fixed_ports = {_port_key(s, p.protocol, p.port): p.node_port for s in spec.services for p in s.ports if p.node_port}
    wanting_ports = [
        _port_key(s, p.protocol, p.port)
        for s in spec.services
        if s.type == "NodePort"
        for p in s.ports
        if p.node_port is None
    ]
    used = set(fixed_ports.values())
    try:
        node_ports = allocate(
            wanting_ports,
            previous.get("node_port", {}),
            (str(n) for n in NODE_PORT_RANGE if n not in used),
            valid=lambda v: v.isdigit() and int(v) in NODE_PORT_RANGE and int(v) not in used,
        )
    except Exhausted as exc:
        raise PlanError(
            f"no node port left in {NODE_PORT_RANGE.start}-{NODE_PORT_RANGE.stop - 1} for {exc.owner}"
        ) from None
    allocations["node_port"] = node_ports

    port_keys = [_port_key(s, p.protocol, p.port) for s in spec.services if not s.headless for p in s.ports]
    slots = allocate(port_keys, previous.get("service_slot", {}), (str(i) for i in range(1, 1 << 19)))
    allocations["service_slot"] = slots

    # Index pods by (namespace, label, value): a selector is an intersection of those sets, so
    # 10,000 services over 100,000 pods do not compare every service with every pod.
    pods = sorted(topo.pods.values(), key=lambda p: (p.namespace, p.name))
    order = {p.key: i for i, p in enumerate(pods)}
    by_label: dict[tuple[str, str, str], set[str]] = {}
    for pod in pods:
        for key, value in pod.labels.items():
            by_label.setdefault((pod.namespace, key, value), set()).add(pod.key)
    for svc in spec.services:
        keys: set[str] | None = None
        for key, value in svc.selector.items():
            found = by_label.get((svc.namespace, key, value), set())
            keys = found if keys is None else keys & found
        members = [topo.pods[k] for k in sorted(keys or (), key=order.__getitem__)]
        ports = []
        for p in svc.ports:
            key = _port_key(svc, p.protocol, p.port)
            endpoints = []
            for pod in members:
                target = _target(pod, p.target, p.protocol)
                if target is not None:
                    endpoints.append(Endpoint(pod.key, pod.ip, pod.node, target))
            if len(endpoints) > LOCAL_OFFSET:
                raise PlanError(
                    f"service {svc.key} port {p.port} has {len(endpoints)} endpoints; podnet serves "
                    f"at most {LOCAL_OFFSET} per port"
                )
            node_port = p.node_port or (int(node_ports[key]) if key in node_ports else None)
            ports.append(
                ServicePortInfo(
                    p.name,
                    p.protocol,
                    p.port,
                    node_port,
                    tuple(endpoints),
                    int(slots[key]) * SLOT_WIDTH if key in slots else 0,
                )
            )
        topo.services[svc.key] = ServiceInfo(
            svc.namespace,
            svc.name,
            svc.type,
            None if svc.headless else vips[svc.key],
            tuple(ports),
            svc.affinity_timeout,
            svc.local,
        )


def _free_vip(ip: str, net: ipaddress.IPv4Network, reserved: set[str], fixed: dict[str, str]) -> bool:
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return addr in net and ip not in reserved and ip not in fixed.values()


def service_route_needed(services: list[ServiceInfo]) -> bool:
    """A node routes its service CIDR (and filters what reaches it) while some Service has a ClusterIP."""
    return any(svc.cluster_ip is not None for svc in services)


def service_route(node: NodeInfo, service_cidr: str) -> Route:
    """The service CIDR as a local route of the node, as kube-proxy's clusters need one.

    Without any route (a node with no default route) a connect to a ClusterIP fails with
    ENETUNREACH before a rule runs. A route out of an interface would carry an address no
    service has onto a link (ARP for it, or a router's "unreachable"); blackhole, unreachable
    or prohibit make the node's own connects fail in the route lookup (EINVAL, EHOSTUNREACH,
    EACCES) before the output hook. A local route keeps every service address on the node:
    DNAT in nat prerouting/output sends served ones on, the filter input chain
    (``plan.nat``) rejects or drops the rest, so nothing reaches the node's own sockets.
    ``src``: the node's own connects leave with its underlay address, not the VIP (which
    the endpoint's node would take for one of its own).
    """
    return Route(service_cidr, (NextHop(None, "lo"),), type="local", scope="host", src=node.underlay_ip)

"""The node part of the agent: what a podnet node needs in the namespace the agent runs in.

The cluster file says it, exactly as for ``podnet up``: ``plan`` gives every node its pod
block and underlay address, and the node's namespace its bridge ``cni0`` (gateway address of
the block), the backend's routes to the other nodes' blocks (host-gw: via their underlay
addresses; vxlan: ``vxlan0`` with its neighbour and FDB entries), ``ip_forward`` and the
nftables table ``ip podnet`` (egress masquerade, rendered by ``plan.nat`` for a node without
Services). The agent takes that part of the planned
node namespace and leaves out what belongs to the host: its uplink, its addresses, its routes
to the underlay, its loopback. Host-gw routes leave by whichever interface holds the node's
underlay address (``eth0`` in the plan).

Syncing is observe -> diff -> apply, restricted to what podnet owns here, so running it again
changes nothing and a restarted agent leaves working containers alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from pyroute2 import IPRoute

from podnet.errors import KernelError, UsageError
from podnet.kernel import nft
from podnet.kernel.apply import apply
from podnet.kernel.netlink import Session, Sessions
from podnet.kernel.observe import observe_one
from podnet.plan import nat, plan
from podnet.plan.backends import VXLAN_IF
from podnet.plan.cluster import BRIDGE
from podnet.plan.topology import NodeInfo
from podnet.plan.underlay import UNDERLAY_IF
from podnet.reconcile import Change, diff
from podnet.spec import load_file
from podnet.state import NetnsState, NextHop, State

HOST = "host"  # the name the agent's own namespace goes by in its State
OWNED_LINKS = (BRIDGE, VXLAN_IF)
OWNED_SYSCTLS = ("net.ipv4.ip_forward",)


@dataclass(frozen=True)
class NodeConfig:
    cluster: str
    node: NodeInfo
    backend: str
    pod_cidr: str  # the whole cluster's
    mtu: int  # of the pod network
    desired: NetnsState
    allocations: dict
    reserved: frozenset[str] = frozenset()  # addresses the plan gives the file's pods on this node

    @property
    def block(self) -> str:
        return self.node.pod_cidr

    @property
    def gateway(self) -> str:
        return self.node.gateway

    @property
    def prefix(self) -> int:
        return int(self.node.pod_cidr.split("/")[1])


def load(config_file: str, node_name: str, previous: dict | None = None) -> NodeConfig:
    """The node's part of the plan of a cluster file (refused like ``podnet up`` refuses it)."""
    spec = load_file(config_file)
    p = plan(spec, previous or {})
    node = p.topology.nodes.get(node_name)
    if node is None:
        known = ", ".join(sorted(p.topology.nodes))
        raise UsageError(f"{config_file}: cluster {spec.cluster.name} has no node {node_name!r} (nodes: {known})")
    planned = p.state.namespaces[node.netns]
    pod_cidr = str(spec.cluster.pod_cidr)
    pods = ipaddress.IPv4Network(pod_cidr)
    want = NetnsState(HOST)
    want.links = {n: link for n, link in planned.links.items() if n in OWNED_LINKS}
    want.addresses = {a for a in planned.addresses if a.ifname in OWNED_LINKS}
    want.routes = {k: r for k, r in planned.routes.items() if ipaddress.IPv4Network(r.dst).subnet_of(pods)}
    want.neighbours = {n for n in planned.neighbours if n.ifname in OWNED_LINKS}
    want.fdb = {f for f in planned.fdb if f.ifname in OWNED_LINKS}
    want.sysctls = {k: v for k, v in planned.sysctls.items() if k in OWNED_SYSCTLS}
    # The node's table as the planner renders it for a node without pods or services: egress
    # masquerade. Services and cluster DNS are `podnet up`'s; under a runtime, pods are the
    # runtime's containers, and the file's own pods (the planned CoreDNS one too) do not exist.
    want.nft = nat.node_table(node, [], [], pod_cidr, str(spec.cluster.service_cidr))
    reserved = frozenset(pod.ip for pod in p.topology.pods.values() if pod.node == node_name)
    return NodeConfig(
        spec.cluster.name, node, spec.cluster.backend, pod_cidr, p.topology.mtu, want, dict(p.allocations), reserved
    )


class HostSession(Session):
    """A :class:`Session` on the namespace this process runs in, which has no name to enter."""

    def __init__(self) -> None:  # no super().__init__: nothing to enter
        self.name = HOST
        self.ipr = IPRoute()
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.index = {}
        self._complete = False


class _HostSessions(Sessions):
    def __init__(self, session: HostSession) -> None:
        super().__init__()
        self.session = session

    def get(self, name: str, fresh: bool = False) -> Session:
        return self.session

    def forget(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


def observe(session: HostSession, cfg: NodeConfig) -> tuple[NetnsState, str]:
    """What podnet owns of this namespace now, and the name of the uplink (the interface that
    holds the node's underlay address)."""
    ns, _ = observe_one(session, set())
    uplink = next((a.ifname for a in ns.addresses if a.ip == cfg.node.underlay_ip), None)
    if uplink is None:
        raise UsageError(
            f"no interface here holds {cfg.node.name}'s underlay address {cfg.node.underlay_ip} "
            f"(the cluster file's plan gives it that address; the node's uplink must have it)"
        )
    pods = ipaddress.IPv4Network(cfg.pod_cidr)
    have = NetnsState(HOST)
    have.links = {n: link for n, link in ns.links.items() if n in OWNED_LINKS}
    have.addresses = {a for a in ns.addresses if a.ifname in OWNED_LINKS}
    have.routes = {
        k: r
        for k, r in ns.routes.items()
        if r.dst != "0.0.0.0/0"
        and ipaddress.IPv4Network(r.dst).subnet_of(pods)
        and (r.proto in ("static", "boot") or (r.proto == "kernel" and r.nexthops[0].dev in OWNED_LINKS))
    }
    have.neighbours = {n for n in ns.neighbours if n.ifname in OWNED_LINKS}
    have.fdb = {f for f in ns.fdb if f.ifname in OWNED_LINKS}
    for key in cfg.desired.sysctls:
        with suppress(OSError):
            have.sysctls[key] = Path("/proc/sys", *key.split(".")).read_text().strip()
    return have, uplink


def _on_uplink(want: NetnsState, uplink: str) -> NetnsState:
    """The plan's routes leave by its ``eth0``; here by the real uplink."""
    if uplink == UNDERLAY_IF:
        return want
    out = replace(want)
    out.routes = {
        k: replace(
            r,
            nexthops=tuple(
                NextHop(h.gateway, uplink if h.dev == UNDERLAY_IF else h.dev, h.weight, h.onlink) for h in r.nexthops
            ),
        )
        for k, r in want.routes.items()
    }
    return out


def sync(session: HostSession, cfg: NodeConfig) -> list[Change]:
    """Make this namespace a podnet node of the cluster; returns what changed (nothing, the
    second time)."""
    have, uplink = observe(session, cfg)
    want = _on_uplink(cfg.desired, uplink)
    changes = diff(State({HOST: replace(want, nft=None)}), State({HOST: have}))
    kernel = [c for c in changes if c.op != "set_sysctl"]
    if kernel:
        session.index = {}
        session._complete = False
        apply(kernel, _HostSessions(session), _no_processes)
    for c in changes:
        if c.op == "set_sysctl":
            key, value = c.obj
            Path("/proc/sys", *key.split(".")).write_text(value)
    if want.nft is not None:
        current = observe_nft(want.nft.family, want.nft.name)
        if current != want.nft:
            load_nft(want.nft, current)
            changes.append(Change("set_nft", HOST, want.nft, peer=current))
    return changes


def _no_processes(change: Change) -> None:
    raise KernelError(f"the agent runs no processes for its node ({change.describe()})")


def observe_nft(family: str, name: str):
    proc = subprocess.run(["nft", "-j", "list", "table", family, name], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return nft.parse(json.loads(proc.stdout), family, name)


def load_nft(want, have) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=nft.script(want, have), capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"nft refused the update of table {want.family} {want.name}: {proc.stderr.strip()}")

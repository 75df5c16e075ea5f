"""``podnet fault``: break a running cluster on purpose, and heal it.

- ``link down A B`` / ``link up A B``: A and B are nodes, routers or external hosts on one
  segment. On a point-to-point segment (a leaf-spine /31) both switch ports go down: each end
  loses carrier at once, as when a cable is pulled, and BIRD (``check link``) drops the
  session immediately. On a shared segment (a rack) only the frames between the two are
  dropped, by an nftables ``bridge`` table in the switch namespace: nobody loses carrier and
  the failure is found by BFD, in ``interval x multiplier``.
  ``--keep-carrier`` drops frames on a point-to-point link too: a gray failure, for BFD to find.
- ``router stop R`` / ``router start R``: stop or start the BIRD of a router or a node (a
  graceful stop: BIRD sends its peers a Cease and takes its routes out of its kernel).
- ``--heal``: undo every fault still recorded, newest first.

Faults are recorded in the cluster's state directory (``faults.json``). ``podnet up`` also
heals them, as it restores whatever differs from the plan (link state, missing BIRDs); the
record is then stale and ``--heal`` skips what is already healed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from podnet import cluster as usecases
from podnet import names
from podnet.errors import UsageError
from podnet.kernel import netns as kns
from podnet.kernel import nft
from podnet.kernel.netlink import Sessions
from podnet.plan import Plan
from podnet.runtime import bird
from podnet.state import NftChain, NftRule, NftTable
from podnet.store import cluster_dir, cluster_lock

FAULT_TABLE = "podnet-faults"


@dataclass(frozen=True)
class Fault:
    kind: str  # link | router
    a: str
    b: str | None = None
    how: str = ""  # link: carrier | filter

    def describe(self) -> str:
        if self.kind == "link":
            how = "both ends lost carrier" if self.how == "carrier" else "frames between them dropped"
            return f"link {self.a} <-> {self.b} down ({how})"
        return f"BIRD of {self.a} stopped"


def _record_path(cluster: str) -> Path:
    return cluster_dir(cluster) / "faults.json"


def active(cluster: str) -> list[Fault]:
    try:
        return [Fault(**f) for f in json.loads(_record_path(cluster).read_text())]
    except (OSError, ValueError):
        return []


def _save(cluster: str, faults: list[Fault]) -> None:
    path = _record_path(cluster)
    if not faults:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(f) for f in faults], indent=1))
    tmp.replace(path)


def _member_netns(p: Plan, name: str) -> str:
    ns = p.topology.netns_of(name)
    if ns is None:
        topo = p.topology
        choices = ", ".join(sorted([*topo.nodes, *topo.routers, *topo.hosts]))
        raise UsageError(f"no node, router or external host {name!r} (expected one of: {choices})")
    return ns


def _subnets_of(p: Plan, name: str) -> set[str]:
    topo = p.topology
    if name in topo.nodes:
        return {topo.nodes[name].subnet}
    if name in topo.routers:
        return {i.subnet for i in topo.routers[name].interfaces}
    if name in topo.hosts:
        return {s.name for s in topo.subnets.values() if s.external}
    return set()


def _members(p: Plan, subnet: str) -> list[str]:
    topo = p.topology
    out = [n.name for n in topo.nodes.values() if n.subnet == subnet]
    out += [r.name for r in topo.routers.values() if any(i.subnet == subnet for i in r.interfaces)]
    if topo.subnets[subnet].external:
        out += list(topo.hosts)
    return out


def _link(p: Plan, a: str, b: str) -> tuple[str, str, str, str]:
    """(subnet, switch namespace, A's port, B's port) of the segment A and B share."""
    ns_a, ns_b = _member_netns(p, a), _member_netns(p, b)
    shared = sorted(_subnets_of(p, a) & _subnets_of(p, b))
    if a == b or not shared:
        raise UsageError(f"{a} and {b} share no segment: there is no link between them")
    subnet = shared[0]
    info = p.topology.subnets[subnet]
    return subnet, info.switch_netns, names.switch_port(subnet, ns_a), names.switch_port(subnet, ns_b)


def _set_ports(switch_ns: str, ports: list[str], up: bool) -> None:
    with Sessions() as sessions:
        s = sessions.get(switch_ns)
        for port in ports:
            s.ipr.link("set", index=s.ifindex(port), state="up" if up else "down")


def _filter_table(pairs: list[tuple[str, str]]) -> NftTable:
    rules = []
    for x, y in pairs:
        rules.append(NftRule(f'iifname "{x}" oifname "{y}" drop', "podnet fault"))
        rules.append(NftRule(f'iifname "{y}" oifname "{x}" drop', "podnet fault"))
    table = NftTable("bridge", FAULT_TABLE)
    table.chains["forward"] = NftChain.of("forward", ("filter", "forward", -200, "accept"), rules)
    return table


def _apply_filters(p: Plan, switch_ns: str, faults: list[Fault]) -> None:
    """The switch's fault table holds exactly the filtered links recorded for it."""
    pairs = []
    for f in faults:
        if f.kind == "link" and f.how == "filter":
            _, sw, pa, pb = _link(p, f.a, f.b or "")
            if sw == switch_ns:
                pairs.append((pa, pb))
    if kns.exists(switch_ns):
        nft.delete(switch_ns, NftTable("bridge", FAULT_TABLE))
    if pairs:
        nft.load(switch_ns, _filter_table(pairs), None)


def inject(cluster: str, words: list[str], keep_carrier: bool = False) -> dict:
    """``link down|up A B`` or ``router stop|start R``; returns what was done."""
    _, p = usecases.load_applied(cluster)
    with cluster_lock(cluster):
        faults = active(cluster)
        if len(words) == 4 and words[0] == "link" and words[1] in ("down", "up"):
            done = _link_fault(cluster, p, faults, words[1] == "down", words[2], words[3], keep_carrier)
        elif len(words) == 3 and words[0] == "router" and words[1] in ("stop", "start"):
            done = _router_fault(cluster, p, faults, words[1] == "stop", words[2])
        else:
            raise UsageError(
                "expected: link down A B | link up A B | router stop R | router start R (or --heal); "
                f"got: {' '.join(words) or 'nothing'}"
            )
        _save(cluster, faults)
    return {"cluster": cluster, "done": [done], "active": [f.describe() for f in faults]}


def _same_link(f: Fault, a: str, b: str) -> bool:
    return f.kind == "link" and {f.a, f.b} == {a, b}


def _link_fault(
    cluster: str, p: Plan, faults: list[Fault], down: bool, a: str, b: str, keep_carrier: bool = False
) -> str:
    subnet, switch_ns, port_a, port_b = _link(p, a, b)
    carrier = len(_members(p, subnet)) == 2 and not keep_carrier
    if down:
        if not any(_same_link(f, a, b) for f in faults):
            faults.append(Fault("link", a, b, "carrier" if carrier else "filter"))
    else:
        recorded = next((f for f in faults if _same_link(f, a, b)), None)
        carrier = len(_members(p, subnet)) == 2 and (recorded is None or recorded.how == "carrier")
        faults[:] = [f for f in faults if not _same_link(f, a, b)]
    if carrier:
        _set_ports(switch_ns, [port_a, port_b], up=not down)
    else:
        _apply_filters(p, switch_ns, faults)
    state = "down" if down else "up"
    return f"link {a} <-> {b} on {subnet} {state}" + (" (carrier)" if carrier else " (frames dropped)")


def _router_fault(cluster: str, p: Plan, faults: list[Fault], stop: bool, name: str) -> str:
    if p.bgp is None or name not in p.bgp.speakers:
        speakers = ", ".join(sorted(p.bgp.speakers)) if p.bgp else "none: the backend is not bgp"
        raise UsageError(f"{name!r} runs no BIRD (BGP speakers: {speakers})")
    ns = p.bgp.speakers[name].netns
    state_dir = cluster_dir(cluster)
    if stop:
        bird.stop(state_dir, cluster, ns)
        if not any(f.kind == "router" and f.a == name for f in faults):
            faults.append(Fault("router", name))
        return f"BIRD of {name} stopped"
    if bird.running_pid(state_dir, cluster, ns) is None:
        bird.start(state_dir, cluster, ns, p.bgp.configs[name])
    faults[:] = [f for f in faults if not (f.kind == "router" and f.a == name)]
    return f"BIRD of {name} started"


def heal(cluster: str) -> dict:
    """Undo every recorded fault, newest first."""
    _, p = usecases.load_applied(cluster)
    done = []
    with cluster_lock(cluster):
        faults = active(cluster)
        for f in reversed(list(faults)):
            if f.kind == "link":
                done.append(_link_fault(cluster, p, faults, False, f.a, f.b or ""))
            else:
                done.append(_router_fault(cluster, p, faults, False, f.a))
        _save(cluster, faults)
    return {"cluster": cluster, "done": done, "active": [f.describe() for f in faults]}


def listing(cluster: str) -> dict:
    usecases.load_applied(cluster)
    return {"cluster": cluster, "done": [], "active": [f.describe() for f in active(cluster)]}

"""``podnet routes``: what BGP knows in one node or router, beside what the kernel forwards with.

Three views of one namespace:

- the BGP sessions of its BIRD (peer, AS, state, BFD);
- BIRD's RIB (``show route all``): every path to every prefix with its AS path, next hop and
  the protocol it came from, the best one marked, and *why* it is best — the first step of
  BIRD's decision process where it beats the next path (preference, AS-path length, eBGP over
  iBGP, router id, peer address), and which paths were merged into the ECMP route;
- the kernel's FIB for the namespace (connected routes, podnet's static routes and BIRD's).

BIRD answers on its control socket with numbered lines (``runtime.bird.query``); the reply
codes say which line is what (1002 protocol, 1006 protocol detail, 1007 route, 1012 route
attribute, 1020 BFD session).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from podnet import cluster as usecases
from podnet.errors import BirdError, UsageError
from podnet.kernel import netns as kns
from podnet.kernel.observe import observe
from podnet.plan.bgp import BgpPlan
from podnet.runtime import bird
from podnet.store import cluster_dir

PREFERENCE = {240: "connected", 200: "static", 100: "BGP"}
_ROUTE_HEAD = re.compile(
    r"^(?P<prefix>\S+)?\s+(?P<kind>\w+) \[(?P<proto>\S+) (?P<since>[^\]]*)\](?P<best> \*)? \((?P<pref>\d+)\)"
)
_VIA = re.compile(r"^\s*via (?P<gw>\S+) on (?P<dev>\S+)")
_DEV = re.compile(r"^\s*dev (?P<dev>\S+)")


@dataclass
class RibPath:
    prefix: str
    protocol: str
    preference: int
    best: bool
    since: str
    next_hop: str | None = None
    dev: str | None = None
    as_path: list[int] = field(default_factory=list)
    origin: str | None = None
    local_pref: int | None = None
    peer: str | None = None  # the node or router the path came from
    peer_id: str | None = None
    peer_ip: str | None = None
    internal: bool = False
    in_fib: bool = False
    why: str = ""

    def to_json(self) -> dict:
        return {
            "protocol": self.protocol,
            "from": self.peer,
            "best": self.best,
            "in_fib": self.in_fib,
            "preference": self.preference,
            "as_path": self.as_path,
            "next_hop": self.next_hop,
            "dev": self.dev,
            "origin": self.origin,
            "local_pref": self.local_pref,
            "since": self.since,
            "why": self.why,
        }


def parse_routes(lines: list[tuple[int, str]]) -> list[RibPath]:
    out: list[RibPath] = []
    prefix = ""
    for code, text in lines:
        if code == 1007:
            head = _ROUTE_HEAD.match(text)
            if head:
                prefix = head["prefix"] or prefix
                out.append(RibPath(prefix, head["proto"], int(head["pref"]), bool(head["best"]), head["since"].strip()))
                continue
            if out and (via := _VIA.match(text)):
                out[-1].next_hop, out[-1].dev = via["gw"], via["dev"]
            elif out and (dev := _DEV.match(text)):
                out[-1].dev = dev["dev"]
        elif code == 1012 and out:
            key, _, value = text.strip().partition(": ")
            if key == "BGP.as_path":
                out[-1].as_path = [int(a) for a in value.split() if a.isdigit()]
            elif key == "BGP.origin":
                out[-1].origin = value
            elif key == "BGP.local_pref":
                out[-1].local_pref = int(value)
    return out


def parse_protocols(lines: list[tuple[int, str]]) -> list[dict]:
    out: list[dict] = []
    for code, text in lines:
        if code == 1002:
            parts = text.split(None, 5)
            out.append(
                {
                    "name": parts[0],
                    "proto": parts[1],
                    "state": parts[3] if len(parts) > 3 else "",
                    "since": parts[4] if len(parts) > 4 else "",
                    "info": parts[5].strip() if len(parts) > 5 else "",
                    "details": {},
                }
            )
        elif code == 1006 and out:
            key, sep, value = text.strip().partition(":")
            if sep and value.strip():
                out[-1]["details"].setdefault(key.strip(), value.strip())
    return out


def parse_bfd(lines: list[tuple[int, str]]) -> dict[str, str]:
    """peer address -> BFD session state."""
    out = {}
    for code, text in lines:
        parts = text.split()
        if code == 1020 and len(parts) >= 3:
            try:
                ipaddress.IPv4Address(parts[0])
            except ValueError:
                continue
            out[parts[0]] = parts[2]
    return out


def decide(best: RibPath, other: RibPath) -> str | None:
    """The first step of BIRD's decision process where ``best`` beats ``other`` (None: a tie up
    to the router id, i.e. the two are merged into one ECMP route)."""
    if best.preference != other.preference:
        return (
            f"preference {best.preference} ({PREFERENCE.get(best.preference, '?')}) over "
            f"{other.preference} ({PREFERENCE.get(other.preference, '?')})"
        )
    if (best.local_pref or 100) != (other.local_pref or 100):
        return f"local preference {best.local_pref} over {other.local_pref}"
    if len(best.as_path) != len(other.as_path):
        return f"shorter AS path ({len(best.as_path)} < {len(other.as_path)} ASes)"
    if best.origin != other.origin:
        return f"origin {best.origin} over {other.origin}"
    if best.internal != other.internal:
        return "eBGP over iBGP"
    return None


def _tiebreak(best: RibPath, other: RibPath) -> str:
    if best.peer_id and other.peer_id and best.peer_id != other.peer_id:
        return f"lower router id, {best.peer_id}"
    return f"lower peer address, {best.peer_ip}"


def explain(paths: list[RibPath]) -> None:
    """Fill ``why`` on every path of one prefix (the best first)."""
    best = next((p for p in paths if p.best), paths[0])
    others = [p for p in paths if p is not best]
    if not others:
        best.why = "the only path"
        return
    reasons = []
    for p in others:
        step = decide(best, p)
        if step is None:
            p.why = f"equal to the best: in its ECMP route (the primary has the {_tiebreak(best, p)})"
        else:
            p.why = f"loses to the best on {step}"
            reasons.append(step)
    merged = [p for p in others if decide(best, p) is None]
    parts = []
    if merged:
        parts.append(f"ECMP with {len(merged)} equal path{'s' if len(merged) > 1 else ''}")
    if reasons:
        parts.append(f"beats the rest on {reasons[0]}")
    best.why = "best: " + "; ".join(parts)


def routes(cluster: str, where: str) -> dict:
    _, p = usecases.load_applied(cluster)
    topo = p.topology
    ns = topo.netns_of(where)
    if ns is None or where in topo.hosts:
        choices = ", ".join(sorted([*topo.nodes, *topo.routers]))
        raise UsageError(f"no node or router {where!r} in cluster {cluster!r} (expected one of: {choices})")
    plan: BgpPlan | None = p.bgp
    speaker = plan.speakers.get(where) if plan else None
    out: dict = {
        "cluster": cluster,
        "where": where,
        "netns": ns,
        "backend": topo.backend,
        "asn": speaker.asn if speaker else None,
        "router_id": speaker.router_id if speaker else None,
        "role": speaker.role if speaker else ("node" if where in topo.nodes else "router"),
        "bird": "not planned" if speaker is None else "stopped",
        "sessions": [],
        "rib": [],
        "fib": _fib(ns),
    }
    if speaker is None or plan is None:
        return out
    state_dir = cluster_dir(cluster)
    if bird.running_pid(state_dir, cluster, ns) is None:
        return out
    ctl = bird.files(state_dir, ns).ctl
    try:
        protocols = parse_protocols(bird.query(ctl, "show protocols all"))
        paths = parse_routes(bird.query(ctl, "show route all"))
        bfd = parse_bfd(bird.query(ctl, "show bfd sessions"))
    except OSError as exc:
        raise BirdError(f"BIRD in {ns} does not answer on {ctl}: {exc}") from exc
    out["bird"] = "running"
    neighbors = {n.protocol: n for n in plan.configs[where].neighbors}
    ids = {}
    for proto in protocols:
        n = neighbors.get(proto["name"])
        if n is None:
            continue
        d = proto["details"]
        ids[proto["name"]] = d.get("Neighbor ID")
        out["sessions"].append(
            {
                "protocol": proto["name"],
                "peer": n.peer,
                "subnet": n.subnet,
                "local_address": n.local_ip,
                "peer_address": n.address,
                "peer_as": n.asn,
                "type": "iBGP" if n.asn == speaker.asn else "eBGP",
                "state": d.get("BGP state", proto["info"] or proto["state"]),
                "since": proto["since"],
                "bfd": bfd.get(n.address, "-"),
                "last_error": d.get("Last error"),
            }
        )
    fib = {r["dst"]: r for r in out["fib"]}
    by_prefix: dict[str, list[RibPath]] = {}
    for path in paths:
        n = neighbors.get(path.protocol)
        if n is not None:
            path.peer, path.peer_ip, path.peer_id = n.peer, n.address, ids.get(path.protocol)
            path.internal = n.asn == speaker.asn
        else:
            path.peer = {"direct1": "connected", "originated": "originated here"}.get(path.protocol, path.protocol)
        route = fib.get(path.prefix)
        if route is not None:
            if path.preference < 200:
                path.in_fib = route["proto"] == "bird" and any(h["gateway"] == path.next_hop for h in route["nexthops"])
            else:
                path.in_fib = route["proto"] != "bird"
        by_prefix.setdefault(path.prefix, []).append(path)
    for prefix in sorted(by_prefix, key=lambda x: ipaddress.IPv4Network(x)):
        group = by_prefix[prefix]
        explain(group)
        out["rib"].append({"prefix": prefix, "paths": [x.to_json() for x in group]})
    return out


def _fib(ns: str) -> list[dict]:
    """The namespace's main table, its connected routes (proto kernel) included."""
    if not kns.exists(ns):
        return []
    state = observe([ns], set())
    have = state.namespaces.get(ns)
    if have is None:
        return []
    out = []
    for route in have.routes.values():
        if route.table != 254:
            continue
        out.append(
            {
                "dst": route.dst,
                "proto": route.proto,
                "metric": route.metric,
                "nexthops": [{"gateway": h.gateway, "dev": h.dev} for h in route.nexthops],
            }
        )
    return sorted(out, key=lambda r: (ipaddress.IPv4Network(r["dst"]), r["metric"]))

"""The cluster as a picture: Graphviz dot text from the Topology, the State and a trace.

``to_dot`` is pure (no I/O, no root). Racks are clusters, one per L2 subnet with its switch;
routers sit above the racks they join (the edge router marked, its uplink too); nodes are
clusters holding their pods; external hosts sit in the external network. Every interface is
drawn with its name and addresses: as a port cell of its box for nodes, pods and hosts, as a
small node of its own inside a router's or switch's frame (so that Graphviz can order them and
keep lines from crossing). Every veth pair is one line between two interfaces. A trace is
drawn on the lines it takes: numbered and red going, dashed, blue and numbered r1, r2, ... for
the reply, with a word where the packet changed (DNAT, SNAT, VXLAN, decap, un-NAT), and a table
of its hops under the picture. ``render`` is the one piece of I/O: it runs Graphviz's ``dot``.
"""

from __future__ import annotations

import re
import subprocess
from html import escape
from itertools import pairwise
from pathlib import Path

from podnet.errors import PodnetError, UsageError
from podnet.plan.topology import Topology
from podnet.state import Link, NetnsState, State
from podnet.trace.model import Hop, TraceResult

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}

# What each kind of box looks like: (fill, border). The colours follow `podnet trace`'s.
STYLE = {
    "router": ("#f3e5f5", "#8e24aa"),
    "edge": ("#fce4ec", "#c2185b"),
    "switch": ("#e3f2fd", "#1e88e5"),
    "node": ("#e8f5e9", "#43a047"),
    "pod": ("#e0f7fa", "#00838f"),
    "external": ("#fff8e1", "#f9a825"),
    "unknown": ("#eeeeee", "#757575"),
}
# Top to bottom: a veth between two boxes is drawn from the upper one down.
TIER = {"router": 0, "switch": 1, "node": 2, "external": 2, "unknown": 2, "pod": 3}
FORWARD = "#d62728"
REPLY = "#1f77b4"
DROP = "#b71c1c"
MAX_TEXT = 72


def output_format(path: str) -> str:
    """The Graphviz format an output file asks for, by its extension (a usage error otherwise)."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot write a diagram to {path!r}: the file name must end in .svg, .png or .dot")
    return fmt


def render(dot_text: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on the text; ``fmt`` svg or png (dot is the text itself)."""
    if fmt == "dot":
        return dot_text.encode()
    try:
        proc = subprocess.run(["dot", f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    except FileNotFoundError:
        raise PodnetError("Graphviz's dot is not installed (make deps installs it: apt-get install graphviz)") from None
    if proc.returncode != 0:
        raise PodnetError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def write(dot_text: str, path: str) -> None:
    Path(path).write_bytes(render(dot_text, output_format(path)))


# --- the picture ------------------------------------------------------------------------------


def to_dot(topo: Topology, state: State, trace: TraceResult | None = None) -> str:
    return _Drawing(topo, state, trace).dot()


def _q(text: str) -> str:
    """A quoted dot ID."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port(ifname: str) -> str:
    return "if_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


def _h(text: object) -> str:
    return escape(str(text), quote=True)


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _small(text: str, color: str = "#333333", size: int = 9) -> str:
    return f'<font point-size="{size}" color="{color}">{text}</font>'


def _table(rows: list[str]) -> str:
    return f'<table border="0" cellborder="0" cellspacing="0" cellpadding="2">{"".join(rows)}</table>'


def short_nat(text: str | None) -> list[str]:
    """The translations of a hop, without the explanation: ["DNAT a → b", "masquerade c → d"]."""
    if not text:
        return []
    found = re.findall(r"((?:reverse )?(?:DNAT|SNAT|masquerade) \S+ -> [^\s;,:)]+(?::\d+)?)", text)
    return [f.replace(" -> ", " → ") for f in found] or [_short(text)]


class _Drawing:
    def __init__(self, topo: Topology, state: State, trace: TraceResult | None) -> None:
        self.topo = topo
        self.state = state
        self.trace = trace
        self.kinds: dict[str, tuple[str, str]] = {}
        for s in topo.subnets.values():
            self.kinds[s.switch_netns] = ("switch", s.name)
        for n in topo.nodes.values():
            self.kinds[n.netns] = ("node", n.name)
        for r in topo.routers.values():
            self.kinds[r.netns] = ("router", r.name)
        for h in topo.hosts.values():
            self.kinds[h.netns] = ("external", h.name)
        for p in topo.pods.values():
            self.kinds[p.netns] = ("pod", p.key)
        # Where an interface is drawn: "box":port for a cell of a box, or a node of its own.
        self.ends: dict[tuple[str, str], str] = {}
        self.anchor: dict[str, str] = {}  # netns -> a dot node of it (for a trace that stays inside)
        self.on_path: dict[str, str] = {}  # netns -> border colour, for boxes a trace crosses
        self.ifs_on_path: dict[tuple[str, str], str] = {}
        if trace is not None:
            for hops, color in ((trace.reply, REPLY), (trace.hops, FORWARD)):
                for hop in hops:
                    self.on_path[hop.netns] = color
                    for ifname in (hop.in_if, (hop.out_if or "").split("/")[-1]):
                        if ifname:
                            self.ifs_on_path[(hop.netns, ifname)] = color
            if trace.verdict != "delivered" and trace.hops:
                self.on_path[trace.hops[-1].netns] = DROP

    def kind(self, netns: str) -> str:
        return self.kinds.get(netns, ("unknown", netns))[0]

    def tier(self, netns: str) -> int:
        return TIER.get(self.kind(netns), 2)

    def ns(self, netns: str) -> NetnsState:
        return self.state.namespaces.get(netns) or NetnsState(netns)

    def _addresses(self, ns: NetnsState, ifname: str) -> list[str]:
        return sorted(a.cidr for a in ns.addresses if a.ifname == ifname)

    def _if_text(self, ns: NetnsState, link: Link) -> str:
        lines = [f"<b>{_h(link.name)}</b>"]
        if link.kind == "vxlan":
            lines.append(_small(f"VXLAN VNI {link.vni}"))
        elif link.kind == "bridge":
            lines.append(_small("bridge"))
        lines += [_small(_h(a)) for a in self._addresses(ns, link.name)]
        return "<br/>".join(lines) if len(lines) > 1 else _small(lines[0], "#222222", 8)

    def _stopped(self, netns: str) -> str:
        """A mark for the box where the trace ended without being delivered ("" elsewhere)."""
        t = self.trace
        if t is None or t.verdict == "delivered" or not t.hops or t.hops[-1].netns != netns:
            return ""
        return f'<font color="{DROP}"><b>✗ {_h(t.verdict)}</b></font>'

    # --- routers and switches: a cluster with a node per interface -------------------------
    # (so that Graphviz orders the interfaces to keep lines from crossing)

    def split_box(self, netns: str, indent: str) -> list[str]:
        kind, name = self.kinds[netns]
        ns = self.ns(netns)
        if kind == "router":
            router = self.topo.routers[name]
            style = "edge" if router.uplink else "router"
            what = "edge router" if router.uplink else "router"
            label = f"<b>{_h(name)}</b> {_small(what, '#4a148c', 10)}"
        else:
            style = "switch"
            bridges = " ".join(x.name for x in ns.links.values() if x.kind == "bridge")
            label = f"<b>switch</b> {_small(_h(bridges), '#0d47a1', 10)}"
        fill, border = STYLE[style]
        width = "1"
        if netns in self.on_path:
            border, width = self.on_path[netns], "3"
        if self._stopped(netns):
            label += " " + self._stopped(netns)
        out = [
            f"{indent}subgraph {_q('cluster_ns_' + netns)} {{",
            f'{indent}  label=<{label}>; labelloc=t; style="rounded,filled"; fillcolor="{fill}"; '
            f'color="{border}"; penwidth={width}; tooltip={_q(netns)}; margin=6;',
        ]
        members: list[str] = []
        for link in ns.links.values():
            if link.kind == "loopback" or (link.kind == "bridge" and kind == "switch"):
                continue
            node_id = f"{netns}/{link.name}"
            color = self.ifs_on_path.get((netns, link.name), STYLE[style][1])
            text = self._if_text(ns, link)
            if kind == "router" and link.name == self.topo.routers[name].uplink:
                text += "<br/>" + _small("uplink", "#880e4f")
            cell_width = "2" if (netns, link.name) in self.ifs_on_path else "1"
            out.append(
                f'{indent}  {_q(node_id)} [label=<<table border="{cell_width}" color="{color}" bgcolor="white" '
                f'cellborder="0" cellspacing="0" cellpadding="2"><tr><td>{text}</td></tr></table>>, '
                f"tooltip={_q(netns + ' ' + link.name)}];"
            )
            self.ends[(netns, link.name)] = _q(node_id)
            self.anchor.setdefault(netns, _q(node_id))
            members.append(_q(node_id))
        if len(members) > 1:  # one row: the lines up and the lines down leave from the same level
            out.append(f"{indent}  {{rank=same; {'; '.join(members)}}}")
        out.append(f"{indent}}}")
        return out

    # --- nodes, pods, external hosts: one box, interfaces as ports --------------------------

    def _title(self, netns: str) -> tuple[str, str]:
        """(title html, style key) of one box."""
        kind, name = self.kinds.get(netns, ("unknown", netns))
        if kind == "node":
            node = self.topo.nodes[name]
            return f"<b>{_h(name)}</b><br/>{_small('node · pods ' + _h(node.pod_cidr))}", "node"
        if kind == "pod":
            pod = self.topo.pods[name]
            ports = " ".join(f"{p.port}/{p.protocol}" for p in pod.ports)
            extra = "<br/>" + _small(_h(ports)) if ports else ""
            return f"<b>{_h(pod.name)}</b><br/>{_small(_h(pod.namespace))}{extra}", "pod"
        if kind == "external":
            host = self.topo.hosts[name]
            ports = " ".join(f"{p.port}/{p.protocol}" for p in host.ports)
            return f"<b>{_h(name)}</b><br/>{_small('external host' + (' · ' + _h(ports) if ports else ''))}", "external"
        return f"<b>{_h(name)}</b>", "unknown"

    def _cell(self, ns: NetnsState, link: Link, default: str) -> str:
        self.ends[(ns.name, link.name)] = f"{_q(ns.name)}:{_port(link.name)}"
        color = self.ifs_on_path.get((ns.name, link.name), default)
        return f'<td port="{_port(link.name)}" bgcolor="white" color="{color}">{self._if_text(ns, link)}</td>'

    def _row(self, cells: list[str]) -> str:
        if not cells:
            return ""
        inner = f'<table border="0" cellborder="1" cellspacing="2" cellpadding="2"><tr>{"".join(cells)}</tr></table>'
        return f"<tr><td>{inner}</td></tr>"

    def box(self, netns: str) -> str:
        ns = self.ns(netns)
        title, style = self._title(netns)
        fill, border = STYLE[style]
        up: list[str] = []
        mid: list[str] = []
        down: list[str] = []
        mine = self.tier(netns)
        for link in ns.links.values():
            if link.kind == "loopback":
                continue
            if link.kind == "veth" and link.peer_netns:
                (up if self.tier(link.peer_netns) < mine else down).append(self._cell(ns, link, STYLE[style][1]))
            else:
                mid.append(self._cell(ns, link, STYLE[style][1]))
        width = "1"
        if netns in self.on_path:
            border, width = self.on_path[netns], "3"
        dropped = f"<tr><td>{self._stopped(netns)}</td></tr>" if self._stopped(netns) else ""
        middle = f"<td>{title}</td>"
        if mid:
            inner = "".join(mid)
            middle = (
                f'<td><table border="0" cellborder="0" cellspacing="2" cellpadding="1"><tr><td>{title}</td>'
                f'<td><table border="0" cellborder="1" cellspacing="2" cellpadding="2"><tr>{inner}</tr></table></td>'
                "</tr></table></td>"
            )
        rows = self._row(up) + f"<tr>{middle}</tr>" + dropped + self._row(down)
        label = (
            f'<table border="{width}" color="{border}" bgcolor="{fill}" cellborder="0" cellspacing="0" '
            f'cellpadding="2" style="rounded">{rows}</table>'
        )
        self.anchor[netns] = _q(netns)
        return f"{_q(netns)} [label=<{label}>, tooltip={_q(netns)}];"

    # --- the graph --------------------------------------------------------------------------

    def dot(self) -> str:
        t = self.topo
        out = [
            f"digraph {_q('podnet_' + t.cluster)} {{",
            '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.2, ranksep=0.5, '
            "newrank=true, forcelabels=true, labelloc=b, labeljust=l, pad=0.2];",
            '  node [shape=plaintext, fontname="Helvetica", fontsize=10, margin=0];',
            '  edge [dir=none, color="#607d8b", penwidth=1.2, fontname="Helvetica", fontsize=10];',
            f"  label=<{self.legend()}>;",
        ]
        placed: set[str] = set()
        for router in t.routers.values():
            out += self.split_box(router.netns, "  ")
            placed.add(router.netns)
        for subnet in t.subnets.values():
            fill, border = ("#fffdf3", "#d8c27a") if subnet.external else ("#f6f9fc", "#90a4ae")
            what = "external network" if subnet.external else "L2 subnet"
            out += [
                f"  subgraph {_q('cluster_subnet_' + subnet.name)} {{",
                f"    label=<<b>{_h(subnet.name)}</b> {_small(_h(subnet.cidr) + ' · ' + what, '#455a64', 10)}>;",
                f'    style="rounded,filled"; fillcolor="{fill}"; color="{border}"; labeljust=l; labelloc=b;',
            ]
            out += self.split_box(subnet.switch_netns, "    ")
            placed.add(subnet.switch_netns)
            for node in t.nodes.values():
                if node.subnet != subnet.name:
                    continue
                out += [
                    f"    subgraph {_q('cluster_node_' + node.name)} {{",
                    f'      label=""; style="rounded,filled"; fillcolor="#f1f8f1"; color="{STYLE["node"][1]}";',
                    "      " + self.box(node.netns),
                ]
                placed.add(node.netns)
                for pod in t.pods.values():
                    if pod.node == node.name:
                        out.append("      " + self.box(pod.netns))
                        placed.add(pod.netns)
                out.append("    }")
            if subnet.external:
                for host in t.hosts.values():
                    out.append("    " + self.box(host.netns))
                    placed.add(host.netns)
            out.append("  }")
        # Anything else the State holds (a namespace the Topology does not name) still appears.
        for netns in self.state.namespaces:
            if netns not in placed:
                out.append("  " + self.box(netns))
                placed.add(netns)
        out += self.links()
        out.append("}")
        return "\n".join(out) + "\n"

    def _end(self, netns: str, ifname: str | None, compass: str) -> str:
        ref = self.ends.get((netns, ifname or ""))
        if ref is not None:
            return f"{ref}:{compass}"
        return self.anchor.get(netns, _q(netns))

    def links(self) -> list[str]:
        """One line per veth pair, from the upper box down; the trace's steps drawn on them.

        Every step of a trace crosses a veth pair, so the path is the physical lines it takes,
        coloured and numbered (forward red, reply blue, both: a red and a blue line side by side).
        """
        pairs: dict[frozenset, tuple[tuple[str, str], tuple[str, str]]] = {}
        for a in self.ends:
            link = self.ns(a[0]).links.get(a[1])
            if link is None or link.kind != "veth" or not link.peer_netns:
                continue
            b = (link.peer_netns, link.peer_name or "")
            key = frozenset((a, b))
            if b not in self.ends or key in pairs:
                continue
            pairs[key] = (b, a) if self.tier(b[0]) < self.tier(a[0]) else (a, b)
        steps: dict[frozenset, list[tuple[str, str, bool]]] = {}  # (colour, label, downward)
        extra: list[str] = []
        if self.trace is not None:
            for hops, color, prefix in ((self.trace.hops, FORWARD, ""), (self.trace.reply, REPLY, "r")):
                for i, (a, b) in enumerate(pairwise(hops), 1):
                    tail = (a.netns, (a.out_if or "").split("/")[-1])
                    head = (b.netns, b.in_if or "")
                    tag = self._tag(a)
                    label = f"{prefix}{i}" + (f" {tag}" if tag else "")
                    key = frozenset((tail, head))
                    if key in pairs:
                        steps.setdefault(key, []).append((color, label, pairs[key][0] == tail))
                    else:  # not across a veth pair the picture has: a line of its own
                        extra.append(
                            f"  {self._end(*tail, 'c')} -> {self._end(*head, 'c')} [dir=forward, constraint=false, "
                            f'color="{color}", fontcolor="{color}", penwidth=2.4, xlabel=<<b>{_h(label)}</b>>];'
                        )
                if len(hops) == 1:  # delivered inside the source itself (to a local address, over lo)
                    h = self.anchor.get(hops[0].netns, _q(hops[0].netns))
                    extra.append(
                        f'  {h} -> {h} [dir=forward, color="{color}", fontcolor="{color}", penwidth=2.4, '
                        f"xlabel=<<b>{prefix}1 lo</b>>];"
                    )
        out: list[str] = []
        for key, (a, b) in pairs.items():
            attrs = ""
            used = steps.get(key)
            if used:
                colors = list(dict.fromkeys(c for c, _, _ in used))
                down = {d for _, _, d in used}
                direction = "both" if len(down) == 2 else ("forward" if True in down else "back")
                style = ', style="dashed"' if colors == [REPLY] else ""
                text = "<br/>".join(f'<font color="{c}"><b>{_h(t)}</b></font>' for c, t, _ in used)
                attrs = (
                    f' [color="{":".join(colors)}", penwidth={2.4 if len(colors) == 1 else 2}, dir={direction}, '
                    f"arrowsize=0.8{style}, label=<{text}>]"
                )
            out.append(f"  {self._end(a[0], a[1], 's')} -> {self._end(b[0], b[1], 'n')}{attrs};")
        return out + extra

    @staticmethod
    def _tag(hop: Hop) -> str:
        """What a hop did to the packet, in a word, for the edge leaving it."""
        tags = []
        nat = hop.nat or ""
        if "reverse" in nat:
            tags.append("un-NAT")
        else:
            if "DNAT" in nat:
                tags.append("DNAT")
            if "masquerade" in nat or "SNAT" in nat:
                tags.append("SNAT")
        if hop.encap and hop.encap.get("device"):
            tags.append(f"VXLAN {hop.encap.get('vni')}")
        if hop.decap:
            tags.append("decap")
        return " ".join(tags)

    # --- the legend under the picture -------------------------------------------------------

    def legend(self) -> str:
        t = self.topo
        head = (
            f"<b>cluster {_h(t.cluster)}</b> · backend {_h(t.backend)} · pod MTU {t.mtu} · "
            f"{len(t.nodes)} nodes, {len(t.pods)} pods, {len(t.routers)} routers"
        )
        rows = [f'<tr><td align="left" colspan="6">{head}</td></tr>']
        if self.trace is not None:
            rows += self._trace_rows(self.trace)
        if t.services:
            rows.append('<tr><td align="left" colspan="6"><b>services</b> (nftables on every node)</td></tr>')
            for svc in t.services.values():
                ports = ", ".join(
                    f"{p.port}" + (f":{p.node_port}" if p.node_port else "") + f"/{p.protocol}" for p in svc.ports
                )
                eps = sorted({e.pod.split("/")[-1] for p in svc.ports for e in p.endpoints})
                rows.append(
                    f'<tr><td align="left" colspan="2">{_h(svc.key)}</td><td align="left">{_h(svc.type)}</td>'
                    f'<td align="left">{_h(svc.cluster_ip or "None (headless)")} · {_h(ports)}</td>'
                    f'<td align="left" colspan="2">{_h(", ".join(eps) or "no endpoints")}</td></tr>'
                )
        return _table(rows)

    def _trace_rows(self, r: TraceResult) -> list[str]:
        p = r.packet
        what = f"{p.proto}" + (f" port {p.dport}" if p.proto != "icmp" else "")
        color = FORWARD if r.verdict == "delivered" else DROP
        rows = [
            f'<tr><td align="left" colspan="6"><font color="{FORWARD}"><b>trace {_h(r.source)} → '
            f"{_h(r.destination)}</b></font> ({_h(what)}, {_h(r.state)} state): "
            f'<font color="{color}"><b>{_h(r.verdict)}</b></font> · {_h(_short(r.reason or ""))}</td></tr>'
        ]
        if r.dns:
            rows.append(
                f'<tr><td align="left" colspan="6">dns: {_h(r.dns["query"])} asked to {_h(r.dns.get("server"))}: '
                f"{_h(r.dns['tried'][-1]['query'])} → {_h(', '.join(r.dns['answer']))}</td></tr>"
            )
        heads = ("edge", "hop", "in → out", "packet as it leaves")
        rows.append("<tr>" + "".join(f'<td align="left"><b>{c}</b></td>' for c in heads) + '<td colspan="2"></td></tr>')
        rows += self._hop_rows(r.hops, "", FORWARD, None if r.verdict == "delivered" else r.verdict)
        if r.reply:
            rows.append(
                f'<tr><td align="left" colspan="6"><font color="{REPLY}"><b>reply</b></font> '
                f"({_h(r.reply_verdict or '')})</td></tr>"
            )
            rows += self._hop_rows(r.reply, "r", REPLY, None if r.reply_verdict == "delivered" else r.reply_verdict)
        return rows

    def _hop_rows(self, hops: list[Hop], prefix: str, color: str, stopped: str | None) -> list[str]:
        """One row per hop; ``stopped``: the verdict when the last hop did not deliver."""
        rows = []
        for i, hop in enumerate(hops, 1):
            last = i == len(hops)
            edge = "" if last else f"{prefix}{i}"
            pk = hop.packet
            if pk is None:
                packet = ""
            elif pk.proto == "icmp":
                packet = f"icmp {pk.src_ip} → {pk.dst_ip} ttl {pk.ttl}"
            else:
                packet = f"{pk.proto} {pk.src_ip}:{pk.sport} → {pk.dst_ip}:{pk.dport} ttl {pk.ttl}"
            notes = short_nat(hop.nat)
            if hop.encap and hop.encap.get("device"):
                e = hop.encap
                notes.append(f"VXLAN VNI {e['vni']} {e['outer_src']} → {e['outer_dst']}:{e['udp_dport']}")
            if hop.decap:
                notes.append(f"decap VNI {hop.decap['vni']} on {hop.decap['device']}")
            if last and stopped:
                notes += hop.netfilter
            if hop.observed is not None:
                notes.append("seen" if hop.observed else "NOT SEEN")
            end = f"({stopped})" if last and stopped else "(delivered)"
            ifs = f"{hop.in_if or '(local)'} → {hop.out_if or end}"
            mark = f'<font color="{color}"><b>{_h(edge)}</b></font>' if edge else ""
            rows.append(
                f'<tr><td align="left">{mark}</td>'
                f'<td align="left">{_h(hop.kind)} {_h(hop.name)}</td>'
                f'<td align="left">{_small(_h(ifs), size=10)}</td>'
                f'<td align="left">{_h(packet)}</td>'
                f'<td align="left" balign="left" colspan="2">{"<br/>".join(_h(_short(n)) for n in notes)}</td></tr>'
            )
        return rows

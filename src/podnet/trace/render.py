"""A trace for people: numbered hops, what each namespace decided, compact or detailed (-v)."""

from __future__ import annotations

from rich.console import Console

from podnet.trace.model import Hop, TraceResult

KIND_STYLE = {"pod": "cyan", "node": "green", "router": "magenta", "switch": "blue", "external": "yellow"}
VERDICT_STYLE = {"delivered": "bold green", "refused": "bold yellow", "dropped": "bold red"}


def _headers(hop: Hop) -> str:
    p = hop.packet
    if p is None:
        return ""
    ports = f":{p.sport} -> " if p.proto != "icmp" else " -> "
    dst = f"{p.dst_ip}:{p.dport}" if p.proto != "icmp" else p.dst_ip
    macs = f" [{p.src_mac} -> {p.dst_mac}]" if p.src_mac or p.dst_mac else ""
    return f"{p.proto} {p.src_ip}{ports}{dst} ttl {p.ttl}{macs}"


def _hop_lines(i: int, hop: Hop, verbose: bool) -> list[str]:
    style = KIND_STYLE.get(hop.kind, "white")
    where = f"[{style}]{hop.kind} {hop.name}[/]"
    ifs = f"{hop.in_if or '(local)'} -> {hop.out_if or '(delivered)'}"
    seen = ""
    if hop.observed is True:
        seen = " [green]seen[/]"
    elif hop.observed is False:
        seen = " [red]NOT SEEN[/]"
    lines = [f"{i:>2}. {where}  {ifs}{seen}", f"      {_headers(hop)}"]
    for text in hop.netfilter:
        lines.append(f"      [yellow]netfilter[/] {text}")
    if hop.nat and not hop.netfilter:
        lines.append(f"      [yellow]conntrack[/] {hop.nat}")
    if hop.bridge and not hop.bridge.get("to_ip"):
        b = hop.bridge
        what = f"port {b['port']}" if b.get("port") else "flood"
        lines.append(f"      bridge {b['bridge']}: FDB {b['dst_mac']} -> {what}")
    if hop.decap:
        d = hop.decap
        lines.append(f"      [blue]decap[/] VXLAN VNI {d['vni']} from {d['outer_src']} on {d['device']}")
    if hop.route and hop.route.get("chosen"):
        r = hop.route
        learned = " (learned by BGP: proto bird)" if r["chosen"]["proto"] == "bird" else ""
        lines.append(f"      route {r['chosen']['dst']}{learned}: {r['reason']}")
        if verbose:
            for c in r["candidates"]:
                hops = ", ".join(f"via {h['gateway']}" if h["gateway"] else f"dev {h['dev']}" for h in c["nexthops"])
                lines.append(f"        candidate {c['dst']} ({c['proto']}) {hops}")
    elif hop.route and hop.route.get("reason"):
        lines.append(f"      route: {hop.route['reason']}")
    if hop.neighbour and hop.neighbour.get("mac"):
        n = hop.neighbour
        lines.append(f"      neighbour {n['ip']} is {n['mac']} ({n['source']})")
    if hop.encap and hop.encap.get("device"):
        e = hop.encap
        lines.append(
            f"      [blue]encap[/] VXLAN VNI {e['vni']}: udp {e['outer_src']}:{e.get('udp_sport')} -> "
            f"{e['outer_dst']}:{e['udp_dport']}"
        )
        underlay = (hop.route or {}).get("underlay")
        if underlay and underlay.get("ecmp"):
            lines.append(f"      underlay route {underlay['chosen']['dst']}: {underlay['reason']}")
    elif hop.encap:
        e = hop.encap
        outer = f"{e['outer_src']}:{e.get('udp_sport')} -> {e['outer_dst']}:{e['udp_dport']}"
        lines.append(f"      (inside VXLAN: udp {outer}, VNI {e['vni']})")
    if verbose:
        for note in hop.notes:
            lines.append(f"      [dim]{note}[/]")
    for c in hop.captured:
        lines.append(f"      [dim]captured: {c}[/]")
    return lines


def render(result: TraceResult, console: Console, verbose: bool = False) -> None:
    p = result.packet
    console.print(
        f"[bold]trace[/] {result.source} -> {result.destination}: {p.proto}"
        + (f" port {p.dport}" if p.proto != "icmp" else "")
        + f" ({result.state} state)"
    )
    if result.drift:
        console.print("[bold red]drift:[/] the kernel differs from the plan:")
        for d in result.drift:
            console.print(f"  - {d}")
    if result.dns:
        d = result.dns
        console.print(f"[bold]dns[/] {d['query']} asked to {d['server']} (search {' '.join(d['search'])})")
        for t in d["tried"]:
            answer = t["answer"] if isinstance(t["answer"], str) else ", ".join(t["answer"])
            console.print(f"    {t['query']} -> {answer}")
    for i, hop in enumerate(result.hops, 1):
        for line in _hop_lines(i, hop, verbose):
            console.print(line, highlight=False)
    style = VERDICT_STYLE.get(result.verdict, "bold")
    console.print(f"[{style}]{result.verdict}[/]: {result.reason}")
    if result.reply:
        console.print(f"[bold]reply[/] ({result.reply_verdict})")
        for i, hop in enumerate(result.reply, 1):
            for line in _hop_lines(i, hop, verbose):
                console.print(line, highlight=False)
    for note in result.notes:
        console.print(f"[bold]note[/] {note}")
    if result.verified is not None:
        console.print("[bold green]verified[/]" if result.verified else "[bold red]verification failed[/]")

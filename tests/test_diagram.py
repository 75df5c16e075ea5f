"""podnet diagram: the planned examples as Graphviz dot, a trace drawn over them, and rendered.

No root needed. Rendering needs Graphviz's ``dot``, which ``make deps`` installs (the Makefile
lists graphviz among the system packages): these tests do not skip without it.
"""

from __future__ import annotations

import re
import subprocess
from html import unescape
from itertools import pairwise
from pathlib import Path

import pytest

from podnet import diagram
from podnet.plan import plan
from podnet.spec import load_text
from podnet.trace import Tracer
from tests.conftest import REPO, run_cli

EXAMPLES = ("quickstart.yaml", "racks.yaml", "services.yaml")


def planned(example: str):
    return plan(load_text((REPO / "examples" / example).read_text(), example))


def ends(netns: str, ifname: str) -> tuple[str, str]:
    """How the dot text names an interface: a port of its box, or a node of its own."""
    return (f'"{netns}":if_{re.sub(r"[^A-Za-z0-9_]", "_", ifname)}', f'"{netns}/{ifname}"')


def edge_lines(dot: str) -> list[str]:
    return [line for line in dot.splitlines() if " -> " in line]


def line_joining(dot: str, a: tuple[str, str], b: tuple[str, str]) -> str:
    """The one edge between interface a and interface b."""
    found = [
        line
        for line in edge_lines(dot)
        if any(x + ":" in line or x + " " in line for x in ends(*a))
        and any(x + ":" in line or x + " " in line or x + ";" in line for x in ends(*b))
    ]
    assert len(found) == 1, f"{a} -- {b}: {found}"
    return found[0]


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_part_of_the_cluster_is_drawn(example: str) -> None:
    p = planned(example)
    topo, state = p.topology, p.state
    dot = diagram.to_dot(topo, state)
    assert dot.startswith("digraph ")
    for subnet in topo.subnets.values():
        assert f'"cluster_subnet_{subnet.name}"' in dot
        assert f"<b>{subnet.name}</b>" in dot and subnet.cidr in dot
    for node in topo.nodes.values():
        assert f'"cluster_node_{node.name}"' in dot and f"<b>{node.name}</b>" in dot
        assert f"{node.underlay_ip}/{node.underlay_prefix}" in dot and node.pod_cidr in dot
    for router in topo.routers.values():
        assert f'"cluster_ns_{router.netns}"' in dot and f"<b>{router.name}</b>" in dot
        for iface in router.interfaces:
            assert f'"{router.netns}/{iface.ifname}"' in dot and f"{iface.ip}/{iface.prefix}" in dot
    if any(r.uplink for r in topo.routers.values()):
        assert "edge router" in dot and "uplink" in dot
    for host in topo.hosts.values():
        assert f'"{host.netns}" [label=' in dot and f"<b>{host.name}</b>" in dot and host.ip in dot
    for pod in topo.pods.values():
        assert f'"{pod.netns}" [label=' in dot and f"<b>{pod.name}</b>" in dot and pod.ip in dot
        # The pod sits inside its node's cluster.
        block = dot.split(f'"cluster_node_{pod.node}"', 1)[1].split("\n    }", 1)[0]
        assert f'"{pod.netns}" [label=' in block
    for svc in topo.services.values():
        assert svc.key in dot
    # Every veth pair is one line, and nothing else is.
    pairs = {
        frozenset({(ns.name, link.name), (link.peer_netns, link.peer_name)})
        for ns in state.namespaces.values()
        for link in ns.links.values()
        if link.kind == "veth"
    }
    assert len(edge_lines(dot)) == len(pairs)
    for pair in pairs:
        a, b = sorted(pair)
        line_joining(dot, a, b)


def test_a_trace_is_drawn_on_the_lines_it_takes() -> None:
    p = planned("racks.yaml")
    result = Tracer(p.state, p.topology, p.state, p.dns_config).trace("shop/web-1", "shop/web-2")
    assert result.verdict == "delivered" and result.reply
    dot = diagram.to_dot(p.topology, p.state, result)
    for hops, color, prefix in ((result.hops, diagram.FORWARD, ""), (result.reply, diagram.REPLY, "r")):
        for i, (a, b) in enumerate(pairwise(hops), 1):
            line = line_joining(dot, (a.netns, a.out_if.split("/")[-1]), (b.netns, b.in_if))
            assert color in line
            assert re.search(rf">{prefix}{i}( [^<]*)?</b>", line), line
    # What changed on the way is named on the line that leaves the hop.
    assert "2 VXLAN 1" in dot and "6 decap" in dot
    # The forward and the reply cross the same veths here: one red and one blue line side by side.
    assert f'color="{diagram.FORWARD}:{diagram.REPLY}"' in dot and "dir=both" in dot
    # Untouched lines stay plain: spine-1 is not on this flow's ECMP path (or spine-2 is not).
    assert sum(1 for line in edge_lines(dot) if "color=" not in line) > 0
    # The table under the picture lists every hop with its headers.
    assert "trace shop/web-1 → shop/web-2" in dot
    for hop in result.hops:
        assert f"{hop.kind} {hop.name}" in dot


def test_a_trace_that_is_refused_marks_where_it_stopped() -> None:
    p = planned("services.yaml")
    result = Tracer(p.state, p.topology, p.state, p.dns_config).trace("shop/shell", "10.96.0.16")
    assert result.verdict == "refused"
    dot = diagram.to_dot(p.topology, p.state, result)
    node = result.hops[-1]
    box = next(line for line in dot.splitlines() if line.strip().startswith(f'"{node.netns}" [label='))
    assert "✗ refused" in box and diagram.DROP in box
    assert "(refused)" in dot


def test_a_pod_to_itself_is_a_loop() -> None:
    p = planned("quickstart.yaml")
    result = Tracer(p.state, p.topology, p.state, p.dns_config).trace("shop/web-1", "shop/web-1")
    dot = diagram.to_dot(p.topology, p.state, result)
    pod = p.topology.pods["shop/web-1"]
    assert f'"{pod.netns}" -> "{pod.netns}"' in dot and "1 lo" in dot


@pytest.mark.parametrize("example", EXAMPLES)
def test_dot_renders_every_example_to_svg(example: str) -> None:
    p = planned(example)
    pod = next(iter(p.topology.pods.values()))
    other = list(p.topology.pods.values())[-1]
    result = Tracer(p.state, p.topology, p.state, p.dns_config).trace(pod.key, other.key)
    for dot in (diagram.to_dot(p.topology, p.state), diagram.to_dot(p.topology, p.state, result)):
        svg = unescape(diagram.render(dot, "svg").decode())  # dot writes "-" as &#45;
        assert "<svg" in svg and f">{pod.name}<" in svg
        # dot accepts the text without complaint (no syntax warnings on stderr).
        proc = subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=dot.encode(), capture_output=True)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()


def test_cli_prints_dot_writes_svg_png_and_refuses_a_bad_extension(tmp_path: Path) -> None:
    racks = str(REPO / "examples" / "racks.yaml")
    proc = run_cli("diagram", "-f", racks, check=True)
    assert proc.stdout.startswith('digraph "podnet_racks"')

    svg = tmp_path / "racks.svg"
    run_cli("diagram", "-f", racks, "--trace", "shop/web-1", "example", "-o", str(svg), check=True)
    text = unescape(svg.read_text())
    assert "<svg" in text and "trace shop/web-1 → example" in text

    png = tmp_path / "racks.png"
    run_cli("diagram", "-f", racks, "-o", str(png), check=True)
    assert png.read_bytes().startswith(b"\x89PNG")

    dot = tmp_path / "racks.dot"
    run_cli("diagram", "-f", racks, "--trace", "shop/web-1", "shop/web-2", "--proto", "udp", "-o", str(dot), check=True)
    assert "udp port 53" in dot.read_text()

    bad = run_cli("diagram", "-f", racks, "-o", str(tmp_path / "racks.jpg"))
    assert bad.returncode == 2 and ".svg, .png or .dot" in bad.stderr
    assert not (tmp_path / "racks.jpg").exists()
    both = run_cli("diagram", "-f", racks, "-c", "racks")
    assert both.returncode == 2
    unknown = run_cli("diagram", "-f", racks, "--trace", "shop/nobody", "shop/web-2")
    assert unknown.returncode == 2 and "shop/nobody" in unknown.stderr

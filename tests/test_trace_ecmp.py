"""ECMP in the trace, without root: the member the kernel's hash picks, the overlay's outer source
port, and ``--verify``'s judgement when the kernel took another member than predicted.

That the Python hash is the kernel's is shown against the kernel in tests/test_kernel_ecmp.py.
"""

from __future__ import annotations

from podnet.plan import flowhash
from podnet.state import NextHop
from podnet.trace import fib, verify
from podnet.trace.verify import Seen
from tests.test_trace_planned import RACKS


def _seen_along(result, tracer, swap: dict[str, str] | None = None) -> list[Seen]:
    """What capture would see if every hop saw the packet as predicted; ``swap`` moves a
    router's capture (and the switch port facing it) to another router: another ECMP member."""
    swap = swap or {}
    seen = []
    for i, hop in enumerate(result.hops):
        last = i == len(result.hops) - 1
        ns, iface = hop.netns, ((hop.in_if if last and hop.in_if else hop.out_if) or "").split("/")[-1]
        if hop.kind == "router" and hop.name in swap:
            ns = tracer.topo.routers[swap[hop.name]].netns
        if hop.kind == "switch" and i + 1 < len(result.hops) and result.hops[i + 1].name in swap:
            router_ns = tracer.topo.routers[swap[result.hops[i + 1].name]].netns
            sw = tracer.state.namespaces[hop.netns]
            iface = next(link.name for link in sw.links.values() if link.peer_netns == router_ns)
        p = hop.packet
        outer = (
            (hop.encap["outer_src"], hop.encap["outer_dst"], hop.encap["vni"], hop.encap["udp_sport"])
            if hop.encap
            else None
        )
        if hop.decap and last:
            outer = None
        where = [iface, hop.in_if] if hop.kind == "router" else [iface]  # a router sees it arrive too
        for ifname in where:
            seen.append(
                Seen(ns, ifname, p.src_mac, p.dst_mac, p.src_ip, p.dst_ip, p.proto, p.sport, p.dport, p.ttl, outer)
            )
    return seen


def _cross_rack():
    result = RACKS.trace("shop/web-1", "shop/web-2")
    result.reply = []  # the forward path is what these tests judge
    spine = result.hops[3]
    assert spine.kind == "router"
    other = {"spine-1": "spine-2", "spine-2": "spine-1"}[spine.name]
    return result, spine, other


def test_verify_passes_when_the_kernel_took_the_predicted_member() -> None:
    result, _, _ = _cross_rack()
    ok, _ = verify._mark(result, RACKS, _seen_along(result, RACKS), cold=False)
    assert ok
    assert all(h.observed for h in result.hops[1:])


def test_verify_fails_when_the_kernel_took_another_ecmp_member_than_predicted() -> None:
    result, spine, other = _cross_rack()
    ok, _ = verify._mark(result, RACKS, _seen_along(result, RACKS, swap={spine.name: other}), cold=False)
    assert not ok
    assert spine.observed is False
    assert any(f"via ECMP member {other}" in c and f"predicted {spine.name}" in c for c in spine.captured)


def test_the_planned_trace_names_the_member_and_the_outer_port() -> None:
    result, spine, _ = _cross_rack()
    node = result.hops[1]
    underlay = node.route["underlay"]
    assert underlay["ecmp_predicted"] is True
    assert "the kernel's hash (policy 3, the 5-tuple) picks" in underlay["reason"]
    # The spine crossed is the one whose rack-a address is the chosen next hop.
    assert underlay["nexthop"]["gateway"] in {i.ip for i in RACKS.topo.routers[spine.name].interfaces}
    # The outer source port: the VXLAN device's, from the flow hash podnet's program sets.
    node_ns = RACKS.state.namespaces[node.netns]
    assert node_ns.tc["vxlan0"].id == flowhash.program_id()
    p = result.packet
    inner = flowhash.inner_hash(p.src_ip, p.dst_ip, p.proto, p.sport, p.dport)
    assert node.encap["udp_sport"] == flowhash.outer_source_port(inner, flowhash.port_range(node_ns.sysctls))


def test_flows_spread_over_both_spines_in_the_plan() -> None:
    spines = {RACKS.trace("shop/web-1", "shop/web-2", port=p).hops[3].name for p in range(80, 100)}
    assert spines == {"spine-1", "spine-2"}


def test_without_a_seed_or_under_policy_1_forwarding_the_member_is_not_claimed() -> None:
    flow = ("10.244.1.2", "203.0.113.10", "tcp", 41000, 80)
    assert fib.multipath_hash({"net.ipv4.fib_multipath_hash_policy": "3"}, flow, forwarded=True)[0] is None
    policy1 = {"net.ipv4.fib_multipath_hash_policy": "1", "net.ipv4.fib_multipath_hash_seed": "7"}
    mhash, why = fib.multipath_hash(policy1, flow, forwarded=True)
    assert mhash is None and "random" in why
    assert fib.multipath_hash(policy1, flow, forwarded=False)[0] is not None


def test_next_hop_upper_bounds_split_the_hash_space_by_weight() -> None:
    two = (NextHop("a"), NextHop("b"))
    assert [fib.select_nexthop(two, h) for h in (0, (1 << 30) - 1, 1 << 30, (1 << 31) - 1)] == [0, 0, 1, 1]
    weighted = (NextHop("a", weight=3), NextHop("b", weight=1))
    assert fib.select_nexthop(weighted, (3 << 29) - 1) == 0 and fib.select_nexthop(weighted, 3 << 29) == 1

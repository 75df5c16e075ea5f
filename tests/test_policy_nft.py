"""The nftables layout of NetworkPolicy and what a change costs; probe selectors. Pure, no root."""

from __future__ import annotations

import pytest

from podnet.errors import UsageError
from podnet.kernel.nft import script
from podnet.plan import plan
from podnet.plan.policy import EGRESS_HOOK, INGRESS_HOOK, LOG_GROUP
from podnet.probe import parse_selector, select_pods
from podnet.spec import load_text
from podnet.state import NftTable
from tests import policy_model as m


def tables(policies: str, labels: dict | None = None) -> dict[str, NftTable]:
    state = plan(load_text(m.cluster_text("t", policies, labels))).state
    return {n.removeprefix("podnet_t_"): ns.nft for n, ns in state.namespaces.items() if ns.nft is not None}


def ips(policies: str = "") -> dict[str, str]:
    topo = plan(load_text(m.cluster_text("t", policies))).topology
    return {k: p.ip for k, p in topo.pods.items()}


def rules(table: NftTable, chain: str) -> list[str]:
    return [r.text for r in table.chains[chain].rules]


def test_without_policies_the_data_path_has_no_policy_chain() -> None:
    for table in tables("").values():
        assert not [c for c in table.chains if "policy" in c or "gress" in c]
        assert not [s for s in table.sets if "pods" in s or s.startswith("sel-")]


def test_isolated_pods_get_chains_behind_verdict_maps_on_their_node_only() -> None:
    t = tables(m.DENY_INGRESS_X)
    ip = ips()
    node1, node2 = t["node-1"], t["node-2"]
    assert node1.chains["policy-ingress"].hook == INGRESS_HOOK
    assert node1.chains["policy-egress"].hook == EGRESS_HOOK
    assert rules(node1, "policy-ingress") == ["ct state established,related accept", "ip daddr vmap @ingress-pods"]
    assert rules(node1, "policy-egress") == ["ct state established,related accept", "ip saddr vmap @egress-pods"]
    # x/a and x/c live on node-1, x/b on node-2.
    assert node1.sets["ingress-pods"].elements == {
        f"{ip['x/a']} : goto ingress-x/a",
        f"{ip['x/c']} : goto ingress-x/c",
    }
    assert node2.sets["ingress-pods"].elements == {f"{ip['x/b']} : goto ingress-x/b"}
    assert node1.sets["egress-pods"].elements == frozenset()
    assert rules(node1, "ingress-x/a") == [
        f"ip saddr {ip['x/a']} accept",
        "jump np-ingress-x/deny-ingress",
        f'counter log prefix "podnet drop ingress x/a: " group {LOG_GROUP} drop',
    ]
    assert rules(node1, "np-ingress-x/deny-ingress") == []  # selects, allows nothing


def test_a_node_without_isolated_pods_has_no_policy_chains() -> None:
    # y/named-out isolates y/b (node-1) only; x/named-in x/a (node-1).
    t = tables(m.NAMED_PORTS)
    assert "policy-egress" in t["node-1"].chains
    assert "policy-egress" not in t["node-2"].chains


def test_rules_per_peer_and_port_group_with_shared_selector_sets() -> None:
    t = tables(m.join(m.OR_PEERS, m.END_PORT.replace("name: range", "name: range-2")))
    node1 = t["node-1"]
    ors = rules(node1, "np-ingress-x/or")
    assert len(ors) == 2 and all(r.startswith("ip saddr @sel-") and r.endswith(" accept") for r in ors)
    assert rules(node1, "np-ingress-x/range-2") == ["tcp dport 81-90 accept", "udp dport 70-80 accept"]
    ip = ips()
    set_name = ors[0].split("@")[1].split()[0]
    assert node1.sets[set_name].elements == {ip["y/a"], ip["y/b"], ip["y/c"]}
    # The same selector in another policy is the same set.
    again = m.OR_PEERS.replace("name: or", "name: or-again")
    t2 = tables(m.join(m.OR_PEERS, again))["node-1"]
    assert rules(t2, "np-ingress-x/or") == rules(t2, "np-ingress-x/or-again")


def test_overlapping_ports_are_merged_and_protocol_only_ports_win() -> None:
    t = tables(
        m.policy(
            "ports",
            "x",
            """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80, endPort: 90}, {port: 85}, {port: 91}, {port: 100}, {protocol: UDP, port: 53}, {protocol: UDP}]
""",
        )
    )
    assert rules(t["node-1"], "np-ingress-x/ports") == ["tcp dport { 80-91, 100 } accept", "meta l4proto udp accept"]


def test_ip_blocks_are_written_into_the_rule() -> None:
    t = tables(m.EGRESS_EXTERNAL)
    assert rules(t["node-1"], "np-egress-x/to-ext") == [
        "ip daddr 203.0.113.0/24 ip daddr != { 203.0.113.128/25 } tcp dport 80 accept"
    ]


def test_named_ports_are_a_set_of_address_protocol_port() -> None:
    t = tables(m.NAMED_PORTS)
    ip = ips()
    node1 = t["node-1"]
    assert rules(node1, "np-ingress-x/named-in") == [
        "ip daddr . meta l4proto . th dport @np-ingress-x/named-in/0/ports accept"
    ]
    assert node1.sets["np-ingress-x/named-in/0/ports"].elements == {
        f"{ip['x/a']} . tcp . 81",
        f"{ip['x/a']} . udp . 80",
    }
    # Egress: resolved on every pod that may be the destination.
    egress = node1.sets["np-egress-y/named-out/0/ports"].elements
    assert len(egress) == len(ip) - 1 and f"{ip['z/c']} . tcp . 80" in egress  # all but coredns


def test_sctp_ports_are_matched_in_the_sctp_header() -> None:
    t = tables(m.SCTP_ONLY)
    ip = ips()
    assert rules(t["node-1"], "np-ingress-x/sctp-80") == ["sctp dport 80 accept"]  # x/a is on node-1
    named = t["node-2"].sets["np-ingress-x/sctp-named/0/ports"]  # x/b is on node-2
    assert named.elements == {f"{ip['x/b']} . sctp . 81"}


def test_a_pod_joining_a_selector_changes_set_elements_only() -> None:
    before = tables(m.CLIENTS_ONLY)
    after = tables(m.CLIENTS_ONLY, {"z/c": {"role": "client"}})
    ip = ips()
    for node in ("node-1", "node-2"):
        lines = script(after[node], before[node]).splitlines()
        assert all(line.startswith("add element ip podnet sel-") for line in lines[1:]), lines
        assert lines[:1] in ([], ["add table ip podnet"])
    assert script(after["node-1"], before["node-1"]).endswith(f"{{ {ip['z/c']} }}\n")


def test_a_policy_selecting_one_more_pod_adds_its_chain_and_element() -> None:
    before = tables(m.CLIENTS_ONLY)
    wider = m.CLIENTS_ONLY.replace(
        "podSelector: {matchLabels: {pod: a}}",
        "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}",
    )
    after = tables(wider)
    text = script(after["node-1"], before["node-1"])
    ip = ips()
    assert "add chain ip podnet ingress-x/c" in text
    assert f"add element ip podnet ingress-pods {{ {ip['x/c']} : goto ingress-x/c }}" in text
    assert "ingress-x/a" not in text  # the other pod's chain is untouched
    assert script(after["node-2"], before["node-2"]) == ""  # nothing to write


def test_removing_the_last_policy_of_a_node_deletes_maps_before_chains() -> None:
    before = tables(m.DENY_INGRESS_X)["node-2"]
    after = tables("")["node-2"]
    lines = script(after, before).splitlines()
    first_chain_delete = min(i for i, line in enumerate(lines) if line.startswith("delete chain"))
    assert lines.index("delete map ip podnet ingress-pods") < first_chain_delete  # its elements hold the chains
    assert lines.index("flush chain ip podnet policy-ingress") < first_chain_delete


# --- probe selectors ------------------------------------------------------------------------


def picked(selector: str | None, labels: dict | None = None) -> list[str]:
    topo = plan(load_text(m.cluster_text("t", "", labels))).topology
    return [p.key for p in select_pods(topo, selector)]


def test_probe_selects_every_pod_but_the_dns_server_by_default() -> None:
    assert picked(None) == m.PODS
    assert picked("kube-system/*") == ["kube-system/coredns"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("x/*", ["x/a", "x/b", "x/c"]),
        ("*/a", ["x/a", "y/a", "z/a"]),
        ("x/*,pod=b", ["x/b"]),
        ("pod==b", ["x/b", "y/b", "z/b"]),
        ("pod in (a, c),y/*", ["y/a", "y/c"]),
        ("pod notin (a,b)", ["kube-system/coredns", "x/c", "y/c", "z/c"]),
        ("role", ["y/b"]),
        ("!role,z/*", ["z/a", "z/b", "z/c"]),
        ("pod!=a,x/*", ["x/b", "x/c"]),
    ],
)
def test_probe_selectors(selector: str, expected: list[str]) -> None:
    assert picked(selector, {"y/b": {"role": "client"}}) == expected


@pytest.mark.parametrize("selector", ["pod=(a", "x/a,,y/a", "pod in a"])
def test_bad_probe_selectors_are_usage_errors(selector: str) -> None:
    with pytest.raises(UsageError):
        parse_selector(selector)

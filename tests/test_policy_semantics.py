"""NetworkPolicy semantics, parsing and validation: pure, no root."""

from __future__ import annotations

import subprocess
import sys

import pytest

from podnet.errors import SpecError
from podnet.plan import plan
from podnet.plan.policy import selector_matches, verdict
from podnet.spec import load_text
from podnet.spec.models import LabelSelector, SelectorRequirement
from tests import policy_model as m


def topo(policies: str, labels: dict | None = None):
    return plan(load_text(m.cluster_text("t", policies, labels))).topology


def reached(t, src: str, dst: str, proto: str = "TCP", port: int = 80) -> bool:
    return verdict(t, src, dst, proto, port).allowed


# --- selectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values", "labels", "expected"),
    [
        ("In", ("a", "b"), {"k": "a"}, True),
        ("In", ("a", "b"), {"k": "c"}, False),
        ("In", ("a",), {}, False),
        ("NotIn", ("a",), {"k": "b"}, True),
        ("NotIn", ("a",), {"k": "a"}, False),
        ("NotIn", ("a",), {}, True),  # a missing label is "not in"
        ("Exists", (), {"k": ""}, True),
        ("Exists", (), {}, False),
        ("DoesNotExist", (), {}, True),
        ("DoesNotExist", (), {"k": "x"}, False),
    ],
)
def test_match_expression_operators(operator: str, values: tuple, labels: dict, expected: bool) -> None:
    sel = LabelSelector((), (SelectorRequirement("k", operator, values),))
    assert selector_matches(sel, labels) is expected


def test_empty_selector_matches_everything_and_terms_are_anded() -> None:
    assert selector_matches(LabelSelector(), {})
    sel = LabelSelector((("app", "web"),), (SelectorRequirement("tier", "Exists"),))
    assert selector_matches(sel, {"app": "web", "tier": "x"})
    assert not selector_matches(sel, {"app": "web"})
    assert not selector_matches(sel, {"app": "db", "tier": "x"})


# --- semantics ------------------------------------------------------------------------------


def test_no_policy_allows_everything() -> None:
    t = topo("")
    v = verdict(t, "x/a", "y/b", "TCP", 80)
    assert v.allowed and v.policies == []
    assert v.reason == "egress of x/a: not isolated; ingress of y/b: not isolated"


def test_isolation_is_per_direction() -> None:
    t = topo(m.DENY_INGRESS_X)
    assert not reached(t, "y/a", "x/a")  # x/a is ingress-isolated
    assert reached(t, "x/a", "y/a")  # but not egress-isolated


def test_both_ends_must_allow() -> None:
    # y/b may send only to serve-80-tcp; x/a accepts only serve-81-tcp and serve-80-udp.
    t = topo(m.NAMED_PORTS)
    v = verdict(t, "y/b", "x/a", "TCP", 80)
    assert not v.allowed and v.policies == ["x/named-in"]
    assert "egress of y/b: allowed by y/named-out" in v.reason
    assert "ingress of x/a: isolated by x/named-in, and no rule allows from y/b" in v.reason
    assert not reached(t, "y/b", "x/a", "TCP", 81)  # x/a would accept it, y/b may not send it
    assert reached(t, "x/b", "x/a", "TCP", 81)


def test_policies_add_up_and_the_verdict_names_them() -> None:
    t = topo(m.ADD_UP)
    v = verdict(t, "x/b", "x/a", "UDP", 81)
    assert v.allowed and v.policies == ["x/all-from-b"]
    assert verdict(t, "y/c", "x/a", "TCP", 80).policies == ["x/web-from-y"]
    denied = verdict(t, "y/c", "x/a", "UDP", 80)
    assert not denied.allowed and denied.policies == ["x/web-from-y", "x/all-from-b"]


def test_and_versus_or_peers() -> None:
    t = topo(m.AND_PEER)
    assert [s for s in m.PODS if reached(t, s, "x/a")] == ["x/a", "y/b"]
    t = topo(m.OR_PEERS)
    assert [s for s in m.PODS if reached(t, s, "x/a")] == ["x/a", "x/b", "y/a", "y/b", "y/c"]


def test_namespace_selector_sees_the_automatic_name_label() -> None:
    policy = m.policy(
        "dns-only",
        "x",
        """
  podSelector: {}
  policyTypes: [Egress]
  egress:"""
        + m.DNS_EGRESS,
    )
    t = topo(policy)
    assert reached(t, "x/a", "kube-system/coredns", "UDP", 53)
    assert reached(t, "x/a", "kube-system/coredns", "TCP", 53)
    assert not reached(t, "x/a", "kube-system/coredns", "UDP", 54)
    assert not reached(t, "x/a", "y/a", "UDP", 53)


def test_ip_block_except_and_addresses_outside_the_cluster() -> None:
    t = topo(m.EGRESS_EXTERNAL)
    assert reached(t, "x/a", m.EXTERNAL_IP, "TCP", 80)
    assert not reached(t, "x/a", m.EXTERNAL_IP, "TCP", 81)
    assert not reached(t, "x/a", "203.0.113.200", "TCP", 80)  # in except 203.0.113.128/25
    assert not reached(t, "x/a", "y/a", "TCP", 80)
    t = topo(m.IP_BLOCK)
    assert reached(t, "10.244.0.77", "x/a") and not reached(t, "10.244.1.77", "x/a")
    assert not reached(t, "198.51.100.1", "x/a")


def test_named_port_resolves_on_the_destination_pod_with_its_protocol() -> None:
    t = topo(m.NAMED_PORTS)
    assert reached(t, "z/a", "x/a", "TCP", 81)  # serve-81-tcp
    assert reached(t, "z/a", "x/a", "UDP", 80)  # serve-80-udp
    assert not reached(t, "z/a", "x/a", "UDP", 81)
    assert not reached(t, "z/a", "x/a", "TCP", 80)
    # An address that is no pod's has no named ports.
    assert not reached(t, "y/b", m.EXTERNAL_IP, "TCP", 80)


def test_end_port_is_an_inclusive_range() -> None:
    t = topo(m.END_PORT)
    assert [p for p in (80, 81, 90, 91) if reached(t, "y/a", "x/a", "TCP", p)] == [81, 90]
    assert [p for p in (69, 70, 80, 81) if reached(t, "y/a", "x/a", "UDP", p)] == [70, 80]


def test_a_pod_reaches_itself_and_its_node_reaches_it() -> None:
    t = topo(m.join(m.DENY_INGRESS_X, m.DENY_EGRESS_X))
    assert verdict(t, "x/a", "x/a", "TCP", 80).allowed
    node = t.nodes[t.pods["x/a"].node]
    for address in (node.underlay_ip, node.gateway):
        assert verdict(t, address, "x/a", "TCP", 80).allowed
        assert verdict(t, "x/a", address, "TCP", 80).allowed
    other = next(n for n in t.nodes.values() if n.name != node.name)
    assert not verdict(t, other.underlay_ip, "x/a", "TCP", 80).allowed


def test_policy_types_default_from_the_rules() -> None:
    t = topo(
        m.policy(
            "egress-rules",
            "x",
            """
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: 81}]}]
""",
        )
    )
    # No policyTypes and egress rules: Ingress and Egress; no ingress rules: ingress denied.
    assert t.policies.policies[0].types == ("Ingress", "Egress")
    assert not reached(t, "y/a", "x/a")
    assert reached(t, "x/a", "y/a", "TCP", 81) and not reached(t, "x/a", "y/a", "TCP", 80)


def test_rules_of_a_type_not_listed_are_ignored() -> None:
    t = topo(
        m.policy(
            "egress-only",
            "x",
            """
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
""",
        )
    )
    assert reached(t, "y/a", "x/a")  # not ingress-isolated: its ingress rules mean nothing
    assert not reached(t, "x/a", "y/a")


def test_empty_rule_allows_everything_and_empty_list_nothing() -> None:
    t = topo(m.policy("all", "x", "  podSelector: {}\n  ingress: [{}]\n"))
    assert reached(t, "y/a", "x/a", "UDP", 81)
    t = topo(m.policy("none", "x", "  podSelector: {}\n  ingress: []\n"))
    assert not reached(t, "y/a", "x/a")


def test_verdict_takes_pod_info_and_addresses() -> None:
    t = topo(m.DENY_INGRESS_X)
    a, b = t.pods["x/a"], t.pods["x/b"]
    assert verdict(t, b, a, "tcp", 80) == verdict(t, b.ip, a.ip, "TCP", 80)
    with pytest.raises(ValueError):
        verdict(t, "nobody/here", "x/a", "TCP", 80)


# --- parsing and validation -----------------------------------------------------------------


def load_policy(body: str, name: str = "p", namespace: str = "x") -> tuple[str, object]:
    text = m.cluster_text("t", m.policy(name, namespace, body))
    return text, load_text(text, "c.yaml")


def error_of(body: str, namespace: str = "x") -> tuple[SpecError, str]:
    text = m.cluster_text("t", m.policy("p", namespace, body))
    with pytest.raises(SpecError) as exc:
        load_text(text, "c.yaml")
    return exc.value, text


def line_of(text: str, needle: str) -> int:
    """The last line holding ``needle`` (the policy is the file's last document)."""
    return max(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_loads_a_policy_as_kubernetes_reads_it() -> None:
    _, spec = load_policy(
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.1/8, except: [10.1.0.0/16]}
    ports: [{port: "80"}, {port: serve-81-udp, protocol: UDP}, {protocol: UDP}]
"""
    )
    (pol,) = spec.policies
    assert (pol.key, pol.types, pol.log_drops) == ("x/p", ("Ingress",), False)
    (rule,) = pol.ingress
    assert rule.peers[0].ip_block.cidr == "10.0.0.0/8"  # host bits dropped, as Kubernetes does
    assert [(p.protocol, p.port) for p in rule.ports] == [("TCP", 80), ("UDP", "serve-81-udp"), ("UDP", None)]


@pytest.mark.parametrize(
    ("body", "needle", "field", "message"),
    [
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - {}\n",
            "- {}",
            "spec.ingress[0].from[0]",
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n      ipBlock: {cidr: 10.0.0.0/8}\n",
            "ipBlock",
            "spec.ingress[0].from[0].ipBlock",
            "ipBlock cannot be combined",
        ),
        (
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [11.0.0.0/16]\n",
            "except",
            "spec.egress[0].to[0].ipBlock.except[0]",
            "11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8",
        ),
        (
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 'fd00::/8'}\n",
            "ipBlock",
            "spec.egress[0].to[0].ipBlock.cidr",
            "IPv6",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 90}\n",
            "endPort",
            "spec.ingress[0].ports[0].endPort",
            "endPort needs a numeric port",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}\n",
            "endPort",
            "spec.ingress[0].ports[0].endPort",
            "80 is out of range (expected 90-65535)",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 70000}\n",
            "70000",
            "spec.ingress[0].ports[0].port",
            "out of range",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: not_a_name}\n",
            "not_a_name",
            "spec.ingress[0].ports[0].port",
            "is not a port name",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 53, protocol: ICMP}\n",
            "ICMP",
            "spec.ingress[0].ports[0].protocol",
            "got 'ICMP'",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n",
            "operator: In",
            "spec.podSelector.matchExpressions[0].values",
            "operator In needs at least one value",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Exists, values: [a]}\n",
            "operator: Exists",
            "spec.podSelector.matchExpressions[0].values",
            "operator Exists takes no values",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Like, values: [a]}\n",
            "Like",
            "spec.podSelector.matchExpressions[0].operator",
            "got 'Like'",
        ),
        (
            "  podSelector:\n    matchLabels: {'-bad': x}\n",
            "-bad",
            "spec.podSelector.matchLabels.-bad",
            "is not valid",
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Ingress]\n",
            "policyTypes",
            "spec.policyTypes[1]",
            "Ingress is listed twice",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - fromm: []\n",
            "fromm",
            "spec.ingress[0].fromm",
            "unknown field (expected one of: from, ports)",
        ),
        (
            "  ingress: []\n",
            "spec:",  # a missing field: the line of its parent
            "spec.podSelector",
            "required field is missing",
        ),
    ],
)
def test_invalid_policies_name_file_line_and_field(body: str, needle: str, field: str, message: str) -> None:
    exc, text = error_of(body)
    assert exc.file == "c.yaml"
    assert exc.field == field
    assert message in exc.message
    assert exc.line == line_of(text, needle), (exc, text)


def test_policy_namespace_must_exist_and_names_be_unique() -> None:
    exc, _ = error_of("  podSelector: {}\n", namespace="nowhere")
    assert exc.field == "metadata.namespace" and "namespace 'nowhere' is not declared" in exc.message
    text = m.cluster_text(
        "t", m.join(m.policy("p", "x", "  podSelector: {}\n"), m.policy("p", "x", "  podSelector: {}\n"))
    )
    with pytest.raises(SpecError, match="duplicate NetworkPolicy x/p"):
        load_text(text)


def test_log_annotation_must_be_a_boolean() -> None:
    text = m.cluster_text("t", m.policy("p", "x", "  podSelector: {}\n", annotations="podnet.io/log-drops: 'yes'"))
    with pytest.raises(SpecError) as exc:
        load_text(text)
    assert exc.value.field == "metadata.annotations.podnet.io/log-drops"
    assert load_text(m.cluster_text("t", m.DENY_INGRESS_X)).policies[0].log_drops


def test_cli_refuses_a_bad_policy_with_exit_2(tmp_path) -> None:
    exc, text = error_of("  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "podnet", "up", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"bad.yaml:{exc.line}: spec.ingress[0].ports[0].endPort:" in proc.stderr.replace("\n", "")


def test_the_example_matches_its_documented_matrix() -> None:
    from tests.conftest import REPO

    t = plan(load_text((REPO / "examples" / "policy.yaml").read_text())).topology
    documented = """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   .   .   .   X   X   X
x/b  X   .   X   .   .   .   X   X   X
x/c  X   X   .   .   .   .   X   X   X
y/a  .   X   X   .   .   .   .   .   .
y/b  .   X   X   .   .   .   .   .   .
y/c  .   X   X   .   .   .   .   .   .
z/a  X   X   X   .   .   .   .   .   .
z/b  X   X   X   .   .   .   .   .   .
z/c  X   X   X   .   .   .   .   .   .
"""  # docs/policy.md, `podnet probe -c netpol --model`
    assert {(s, d): reached(t, s, d) for s in m.PODS for d in m.PODS} == m.parse_matrix(documented)
    assert "x/a      .    X    X    .    .    .    X    X    X" in (REPO / "docs" / "policy.md").read_text()


def test_sctp_is_a_protocol_of_its_own() -> None:
    """A policy whose only port is SCTP isolates for TCP and UDP too; an SCTP allow is no TCP one."""
    t = topo(m.SCTP_ONLY)
    for port, protocol in m.CHECKS + m.SCTP_CHECKS:
        combo = f"{protocol}/{port}"
        want = m.parse_matrix(m.SCTP_ONLY_MATRICES.get(combo) or m.SCTP_ONLY_MATRICES["*"])
        got = {(s, d): reached(t, s, d, protocol, port) for s in m.PODS for d in m.PODS}
        assert got == want, f"{combo}:\n{m.format_matrix(got)}"
    assert verdict(t, "y/a", "x/b", "SCTP", 81).policies == ["x/sctp-named"]
    assert "no rule allows from y/a (10.244." in verdict(t, "y/a", "x/a", "TCP", 80).reason

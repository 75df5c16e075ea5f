"""SCTP is a Kubernetes protocol: accepted in Pod, Service and NetworkPolicy ports, and
planned into nftables like TCP and UDP (the kernel matches SCTP headers without the SCTP
socket module). Pure, no root; the kernel tests send raw SCTP INITs through the result."""

from __future__ import annotations

from podnet.plan import plan
from podnet.spec import load_text
from tests import policy_model as m
from tests.conftest import REPO


def test_pod_service_and_policy_ports_accept_sctp() -> None:
    spec = load_text(m.cluster_text("t", m.SCTP_ONLY))
    assert {p.protocol for pod in spec.pods for p in pod.ports} >= {"SCTP"}
    assert [p.protocol for pol in spec.policies for r in pol.ingress for p in r.ports] == ["SCTP", "SCTP"]
    services = load_text((REPO / "examples" / "services.yaml").read_text(), "services.yaml").services
    assert [p.protocol for s in services if s.name == "signal" for p in s.ports] == ["SCTP"]


def test_sctp_service_rules_dnat_by_the_sctp_header() -> None:
    p = plan(load_text((REPO / "examples" / "services.yaml").read_text(), "services.yaml"))
    svc = p.topology.services["shop/signal"]
    node = p.state.namespaces[p.topology.nodes["node-1"].netns].nft
    port = svc.ports[0]
    assert f"{svc.cluster_ip} . sctp . 9000 : goto svc-shop/signal/sctp/9000" in node.sets["services"].elements
    assert f"sctp . {port.node_port} : goto nodeport-shop/signal/sctp/9000" in node.sets["nodeports"].elements
    [pick] = node.chains["svc-shop/signal/sctp/9000"].rules
    assert pick.text.startswith("meta l4proto sctp dnat ip to numgen random mod 3 offset")
    shard = pick.text.rsplit("@", 1)[1]
    assert node.sets[shard].decl == "typeof numgen random mod 2 : ip daddr . sctp dport"

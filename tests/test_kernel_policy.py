"""NetworkPolicy on the real kernel: the probed reachability matrix of every scenario, written out.

One cluster (tests/policy_model.py: namespaces x, y, z of pods a, b, c on two nodes, each
serving TCP and UDP on ports 80 and 81) is shared by every scenario: each test writes its
policies into the cluster file and runs ``up`` again, which changes only the nodes' nftables
tables. Every matrix is probed for real (all four port/protocol combinations at once) and must
equal the one written in the test; the model (``podnet.plan.policy.verdict``) must agree too.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import cluster as usecases
from podnet import probe
from podnet.kernel import nft
from podnet.plan import plan
from podnet.plan.policy import LOG_GROUP, verdict
from podnet.spec import load_text
from tests import policy_model as m
from tests import sctp
from tests.conftest import Cluster, assert_observed_equals_plan, leftovers, run_cli, unique_name

pytestmark = pytest.mark.root

TIMEOUT = 1.5
SCTP_SPORTS = itertools.count(20_000 + random.randrange(100) * 200, 200)  # fresh flows per probe round

ALL_REACHED = """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
"""


@pytest.fixture(scope="module")
def pc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    name = unique_name("np")
    c = Cluster(name, Path(tmp_path_factory.mktemp("policy")) / "policy.yaml")
    c.write(m.cluster_text(name))
    try:
        c.up()
        yield c
    finally:
        usecases.down(name)
        assert leftovers(name) == []


def apply(c: Cluster, policies: str = "", labels: dict | None = None) -> dict:
    c.write(m.cluster_text(c.name, policies, labels))
    return c.up()


def assert_matrices(c: Cluster, expected: dict[str, str]) -> None:
    """Probe all four port/protocol combinations; each must equal ``expected[combo]`` (or ``["*"]``)."""
    for matrix in probe.probe_cluster(c.name, m.CHECKS, model=True, timeout=TIMEOUT):
        combo = f"{matrix.protocol}/{matrix.port}"
        want = m.parse_matrix(expected.get(combo) or expected["*"])
        kernel = {(r["from"], r["to"]): r["allowed"] for r in matrix.results}
        model = {(r["from"], r["to"]): r["expected"] for r in matrix.results}
        outcomes = {
            (r["from"], r["to"]): r["outcome"] for r in matrix.results if r["allowed"] != want[r["from"], r["to"]]
        }
        assert kernel == want, (
            f"{combo}: the kernel said\n{m.format_matrix(kernel)}\nexpected\n{m.format_matrix(want)}\n{outcomes}"
        )
        assert model == want, f"{combo}: the model said\n{m.format_matrix(model)}\nexpected\n{m.format_matrix(want)}"


def vip(c: Cluster, key: str) -> str:
    _, p = usecases.load_applied(c.name)
    return p.topology.services[key].cluster_ip


def curl_code(c: Cluster, source: str, url: str) -> int:
    """curl's exit code: 0 answered, 7 refused, 28 timed out (what a policy drop looks like)."""
    return c.exec(source, "curl", "-s", "-o", "/dev/null", "--max-time", "1.5", url).returncode


def resolves(c: Cluster, source: str, name: str) -> bool:
    proc = c.exec(source, "dig", "+short", "+time=1", "+tries=1", name)
    return proc.returncode == 0 and proc.stdout.strip() != ""


# --- the scenarios --------------------------------------------------------------------------


def test_no_policy_reaches_everything(pc: Cluster) -> None:
    apply(pc)
    assert_matrices(pc, {"*": ALL_REACHED})
    assert "policy-" not in pc.exec("node-1", "nft", "list", "table", "ip", "podnet").stdout


def test_default_deny_ingress_counts_and_logs_drops(pc: Cluster) -> None:
    apply(pc, m.DENY_INGRESS_X)  # annotated podnet.io/log-drops: "true"
    node = usecases.exec_target(pc.name, "node-1")
    # x/a and x/c are on node-1: what is dropped on their way goes to nflog group 100.
    dump = subprocess.Popen(
        ["ip", "netns", "exec", node, "tcpdump", "-n", "-l", "-i", f"nflog:{LOG_GROUP}", "-c", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in dump.stderr:  # tcpdump says so once it is capturing
            if f"listening on nflog:{LOG_GROUP}" in line:
                break
        else:
            pytest.fail("tcpdump did not start")
        assert_matrices(
            pc,
            {
                "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   .   .   .   .   .   .
x/b  X   .   X   .   .   .   .   .   .
x/c  X   X   .   .   .   .   .   .   .
y/a  X   X   X   .   .   .   .   .   .
y/b  X   X   X   .   .   .   .   .   .
y/c  X   X   X   .   .   .   .   .   .
z/a  X   X   X   .   .   .   .   .   .
z/b  X   X   X   .   .   .   .   .   .
z/c  X   X   X   .   .   .   .   .   .
"""
            },
        )
        out, _ = dump.communicate(timeout=10)
    finally:
        dump.kill()
        dump.wait()
    dst = out.split(" > ")[1].split(":")[0].rsplit(".", 1)[0]  # "10.244.0.2.80: Flags ..." -> the address
    assert dst in (ip(pc, "x/a"), ip(pc, "x/c")), out
    chain = pc.exec("node-1", "nft", "list", "chain", "ip", "podnet", "ingress-x/a").stdout
    packets = int(chain.split("counter packets ")[1].split()[0])
    assert packets >= 8 * 4  # at least one dropped packet from each of 8 sources on each of 4 ports


def ip(c: Cluster, key: str) -> str:
    _, p = usecases.load_applied(c.name)
    return p.topology.pods[key].ip


def test_default_deny_egress_blocks_dns_too(pc: Cluster) -> None:
    apply(pc, m.DENY_EGRESS_X)
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   X   X   X   X   X   X
x/b  X   .   X   X   X   X   X   X   X
x/c  X   X   .   X   X   X   X   X   X
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
"""
        },
    )
    assert not resolves(pc, "x/a", "web.y.svc.cluster.local")  # egress-isolated: no rule for DNS
    assert resolves(pc, "y/a", "web.y.svc.cluster.local")
    assert curl_code(pc, "x/a", f"http://{m.EXTERNAL_IP}/hostname") == 28


def test_egress_with_a_dns_rule_reaches_services_by_name(pc: Cluster) -> None:
    apply(pc, m.EGRESS_WITH_DNS)
    assert_matrices(
        pc,
        {
            "TCP/80": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   .   .   .   X   X   X
x/b  X   .   X   .   .   .   X   X   X
x/c  X   X   .   .   .   .   X   X   X
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
""",
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   X   X   X   X   X   X
x/b  X   .   X   X   X   X   X   X   X
x/c  X   X   .   X   X   X   X   X   X
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
""",
        },
    )
    assert resolves(pc, "x/a", "web.y.svc.cluster.local")
    # Through DNS and the Service's DNAT: the policy judges the endpoint (y/a), not the VIP.
    assert pc.curl("x/b", "http://web.y/hostname") == "a"
    assert curl_code(pc, "x/b", "http://web.z/hostname") == 28


def test_allow_within_namespace(pc: Cluster) -> None:
    apply(pc, m.ALLOW_WITHIN_X)
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  X   X   X   .   .   .   .   .   .
y/b  X   X   X   .   .   .   .   .   .
y/c  X   X   X   .   .   .   .   .   .
z/a  X   X   X   .   .   .   .   .   .
z/b  X   X   X   .   .   .   .   .   .
z/c  X   X   X   .   .   .   .   .   .
"""
        },
    )


def test_namespace_selector(pc: Cluster) -> None:
    apply(pc, m.NAMESPACE_SELECTOR)
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
        },
    )


def test_peers_in_one_entry_and_while_separate_entries_or(pc: Cluster) -> None:
    apply(pc, m.AND_PEER)  # namespaceSelector ns=y AND podSelector pod=b: only y/b
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
        },
    )
    apply(pc, m.OR_PEERS)  # namespaceSelector ns=y, OR podSelector pod=b (of x): every y pod and x/b
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
        },
    )


def test_ip_block_with_except(pc: Cluster) -> None:
    # x/a accepts 10.244.0.0/16 except node-2's block: the pods of node-1 (bridged or not) only.
    apply(pc, m.IP_BLOCK)
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
"""
        },
    )


def test_egress_to_external_by_ip_block(pc: Cluster) -> None:
    apply(pc, m.EGRESS_EXTERNAL)  # x/a: egress to 203.0.113.0/24 except .128/25, TCP 80 only
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   X   X   X   X   X   X   X
x/b  .   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
"""
        },
    )
    assert pc.curl("x/a", f"http://{m.EXTERNAL_IP}/hostname") == "ext"
    assert curl_code(pc, "x/a", f"http://{m.EXTERNAL_IP}:81/") == 28  # port 81: dropped
    assert curl_code(pc, "x/b", f"http://{m.EXTERNAL_IP}:81/") == 7  # not isolated: refused by ext


def test_named_ports(pc: Cluster) -> None:
    # x/a accepts serve-81-tcp and serve-80-udp; y/b may send to serve-80-tcp of any pod.
    apply(pc, m.NAMED_PORTS)
    assert_matrices(
        pc,
        {
            "TCP/80": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  X   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
""",
            "TCP/81": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  X   X   X   X   .   X   X   X   X
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
""",
            "UDP/80": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  .   .   .   .   .   .   .   .   .
y/a  .   .   .   .   .   .   .   .   .
y/b  X   X   X   X   .   X   X   X   X
y/c  .   .   .   .   .   .   .   .   .
z/a  .   .   .   .   .   .   .   .   .
z/b  .   .   .   .   .   .   .   .   .
z/c  .   .   .   .   .   .   .   .   .
""",
            "UDP/81": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  X   X   X   X   .   X   X   X   X
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
""",
        },
    )


def test_end_port_ranges(pc: Cluster) -> None:
    apply(pc, m.END_PORT)  # x/a: TCP 81-90 and UDP 70-80
    denied_to_a = """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  X   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
    assert_matrices(pc, {"TCP/80": denied_to_a, "TCP/81": ALL_REACHED, "UDP/80": ALL_REACHED, "UDP/81": denied_to_a})


def test_several_policies_add_up(pc: Cluster) -> None:
    # x/a: TCP 80 from namespace y, plus anything from x/b; x/c: nothing.
    apply(pc, m.ADD_UP)
    other_ports = """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   X   .   .   .   .   .   .
x/b  .   .   X   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   X   .   .   .   .   .   .
y/b  X   .   X   .   .   .   .   .   .
y/c  X   .   X   .   .   .   .   .   .
z/a  X   .   X   .   .   .   .   .   .
z/b  X   .   X   .   .   .   .   .   .
z/c  X   .   X   .   .   .   .   .   .
"""
    assert_matrices(
        pc,
        {
            "TCP/80": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   X   .   .   .   .   .   .
x/b  .   .   X   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  .   .   X   .   .   .   .   .   .
y/b  .   .   X   .   .   .   .   .   .
y/c  .   .   X   .   .   .   .   .   .
z/a  X   .   X   .   .   .   .   .   .
z/b  X   .   X   .   .   .   .   .   .
z/c  X   .   X   .   .   .   .   .   .
""",
            "*": other_ports,
        },
    )


def test_match_expressions(pc: Cluster) -> None:
    # x/a: from pods a or b of namespaces whose ns is not y (x, z, and unlabelled ones);
    # y/a: from pods with a pod label other than c, in namespaces with an ns label;
    # z/c: from namespaces without an ns label only (kube-system, default): none of the model.
    apply(pc, m.MATCH_EXPRESSIONS)
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   X
x/b  .   .   .   .   .   .   .   .   X
x/c  X   .   .   X   .   .   .   .   X
y/a  X   .   .   .   .   .   .   .   X
y/b  X   .   .   .   .   .   .   .   X
y/c  X   .   .   X   .   .   .   .   X
z/a  .   .   .   .   .   .   .   .   X
z/b  .   .   .   .   .   .   .   .   X
z/c  X   .   .   X   .   .   .   .   .
"""
        },
    )
    # Service traffic is judged after DNAT: web.y's endpoint is y/a, which refuses x/c.
    service = f"http://{vip(pc, 'y/web')}/hostname"
    assert pc.curl("x/a", service) == "a"
    assert curl_code(pc, "x/c", service) == 28


def test_policy_changes_on_a_running_cluster(pc: Cluster) -> None:
    apply(pc, m.CLIENTS_ONLY)  # x/a accepts pods labelled role=client, of any namespace: none yet
    only_self_to_a = """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  X   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
    assert_matrices(pc, {"*": only_self_to_a})

    # y/b becomes a client: on every node that is one set element, not a new rule or chain.
    labels = {"y/b": {"role": "client"}}
    before = plan(load_text(m.cluster_text(pc.name, m.CLIENTS_ONLY))).state
    after = plan(load_text(m.cluster_text(pc.name, m.CLIENTS_ONLY, labels))).state
    for name, ns in after.namespaces.items():
        if ns.nft is not None:
            lines = nft.script(ns.nft, before.namespaces[name].nft).splitlines()
            assert all(line.startswith(("add table", "add element", "delete element")) for line in lines), lines
    result = apply(pc, m.CLIENTS_ONLY, labels)
    assert set(result["summary"]) == {"set_nft"}, result
    assert_matrices(
        pc,
        {
            "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   .   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   .   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  .   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   .   .   .   .   .   .   .   .
z/b  X   .   .   .   .   .   .   .   .
z/c  X   .   .   .   .   .   .   .   .
"""
        },
    )

    # The policy goes away: everything is reachable again, and no policy chain is left.
    apply(pc, "", labels)
    assert_matrices(pc, {"*": ALL_REACHED})
    for node in ("node-1", "node-2"):
        assert "policy-" not in pc.exec(node, "nft", "list", "table", "ip", "podnet").stdout


def assert_sctp_matrices(c: Cluster, expected: dict[str, str]) -> None:
    """Each SCTP port probed with a raw INIT per cell (every cell at once), beside the model."""
    _, p = usecases.load_applied(c.name)
    pods = p.topology.pods
    cells = [(s, d) for s in m.PODS for d in m.PODS]
    for port, protocol in m.SCTP_CHECKS:
        combo = f"{protocol}/{port}"
        want = m.parse_matrix(expected.get(combo) or expected["*"])
        probes = [(pods[s].netns, pods[d].netns, pods[d].ip) for s, d in cells]
        kernel = dict(zip(cells, sctp.reached(probes, port, next(SCTP_SPORTS)), strict=True))
        model = {(s, d): verdict(p.topology, s, d, protocol, port).allowed for s, d in cells}
        assert kernel == want, f"{combo}: the kernel said\n{m.format_matrix(kernel)}"
        assert model == want, f"{combo}: the model said\n{m.format_matrix(model)}"


def test_a_policy_of_sctp_ports_alone(pc: Cluster) -> None:
    apply(pc, m.SCTP_ONLY)
    assert_matrices(pc, m.SCTP_ONLY_MATRICES)  # TCP and UDP: isolated, nothing allowed
    assert_sctp_matrices(pc, m.SCTP_ONLY_MATRICES)  # SCTP: the ports the policies name


def test_observed_equals_plan_with_policies(pc: Cluster) -> None:
    apply(pc, m.join(m.ADD_UP, m.NAMED_PORTS, m.DENY_INGRESS_X, m.EGRESS_WITH_DNS))
    assert_observed_equals_plan(pc.name)
    assert pc.up()["changes"] == 0


def test_probe_command_and_a_kernel_that_disagrees(pc: Cluster) -> None:
    apply(pc, m.NAMESPACE_SELECTOR)
    proc = run_cli("probe", "-c", pc.name, "--from", "y/*,pod in (a, b)", "--to", "x/a", "--model", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["port"], data["protocol"], data["disagreements"]) == (80, "TCP", 0)
    assert [(r["from"], r["to"], r["allowed"], r["expected"]) for r in data["results"]] == [
        ("y/a", "x/a", True, True),
        ("y/b", "x/a", True, True),
    ]

    # Someone empties x/a's ingress chain behind podnet's back: the kernel now lets z in.
    pc.exec("node-1", "nft", "flush", "chain", "ip", "podnet", "ingress-x/a")
    proc = run_cli("probe", "-c", pc.name, "--proto", "udp", "--port", "81", "--to", "x/a", "--model")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "X!" not in proc.stdout and ".!" in proc.stdout  # reached where the policies deny
    assert "z/c -> x/a: reached" in proc.stdout

    assert pc.up()["changes"] == 1  # drift repaired: node-1's table
    proc = run_cli("probe", "-c", pc.name, "--to", "x/a", "--model")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agrees with the policies on every cell" in proc.stdout


def test_trace_names_the_policy_and_verify_agrees(pc: Cluster) -> None:
    apply(pc, m.ALLOW_WITHIN_X)
    allowed = usecases.trace("x/b", "x/a", cluster=pc.name, verify=True)
    assert allowed.verdict == "delivered" and allowed.verified
    assert any("ingress of x/a: allowed by" in line for h in allowed.hops for line in h.netfilter)
    dropped = usecases.trace("y/a", "x/a", cluster=pc.name, verify=True)
    assert dropped.verdict == "dropped" and dropped.reason.startswith("NetworkPolicy: ingress of x/a")
    assert dropped.verified  # the real packet stops at x/a's node, where the trace says it does
    assert dropped.hops[-1].kind == "node"

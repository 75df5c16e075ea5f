"""The cluster file: every kind of bad input names the file, the line and the field. No root needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.errors import SpecError
from podnet.plan import plan
from podnet.spec import load_file, load_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"

CLUSTER = """\
apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata:
  name: demo
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  dns: {enabled: false}
  underlay:
    cidr: 172.31.0.0/24
  nodes:
  - name: node-1
  - name: node-2
"""


def namespace_doc(name: str) -> str:
    return f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"


def pod_doc(
    name: str,
    namespace: str | None = None,
    node: str | None = None,
    ports: tuple[str, ...] = (),
    container: str = "main",
) -> str:
    text = f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n"
    if namespace is not None:
        text += f"  namespace: {namespace}\n"
    text += "spec:\n"
    if node is not None:
        text += f"  nodeName: {node}\n"
    text += f"  containers:\n  - name: {container}\n"
    if ports:
        text += "    ports:\n" + "".join(f"    - {p}\n" for p in ports)
    return text


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based number of the ``nth`` line of ``text`` that contains ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} times"
    return hits[nth - 1]


def load_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    return exc.value


def check(err: SpecError, line: int | None, field: str, fragment: str) -> None:
    assert err.file == "f.yaml"
    assert err.line == line
    assert err.field == field
    assert fragment in err.message
    where = f"f.yaml:{line}" if line else "f.yaml"
    prefix = f"{where}: {field}: " if field else f"{where}: "
    assert str(err).startswith(prefix), str(err)
    assert err.exit_code == 2


# --- valid input -----------------------------------------------------------------------------


def test_example_file_loads() -> None:
    spec = load_text(EXAMPLE.read_text(), "f.yaml")
    assert spec.file == "f.yaml"
    assert spec.cluster.name == "demo"
    assert spec.cluster.nodes == ["node-1", "node-2"]
    assert str(spec.cluster.pod_cidr) == "10.244.0.0/16"
    assert spec.cluster.node_mask == 24
    assert [p.key for p in spec.pods] == ["shop/web-1", "shop/web-2", "shop/db", "default/client", "default/cache"]
    web = spec.pods[0]
    assert web.node == "node-1"
    assert web.labels == {"app": "web"}
    assert [(p.port, p.protocol) for p in web.ports] == [(80, "TCP"), (53, "UDP")]


def test_defaults_apply() -> None:
    text = """\
apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {name: demo}
spec:
  nodes: [{name: node-1}]
"""
    text += pod_doc("web", ports=("containerPort: 80", "{name: dns, containerPort: 53, protocol: UDP}"))
    spec = load_text(text, "f.yaml")
    c = spec.cluster
    assert (str(c.pod_cidr), c.node_mask, str(c.service_cidr)) == ("10.244.0.0/16", 24, "10.96.0.0/12")
    assert (c.backend, c.underlay_mtu) == ("host-gw", 1500)
    (pod,) = spec.pods
    assert pod.namespace == "default"  # implicit
    assert pod.node is None  # placement happens in plan
    assert pod.line == line_of(text, "kind: Pod") - 1
    assert [(p.port, p.protocol, p.name) for p in pod.ports] == [(80, "TCP", None), (53, "UDP", "dns")]
    assert set(spec.namespaces) == {"default", "kube-system"}  # both exist in every Kubernetes cluster


def test_namespaces_carry_metadata_name_label() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {team: shop}\n"
    text += pod_doc("web", namespace="shop")
    spec = load_text(text, "f.yaml")
    assert spec.namespaces["default"].labels == {"kubernetes.io/metadata.name": "default"}
    assert spec.namespaces["shop"].labels == {"team": "shop", "kubernetes.io/metadata.name": "shop"}
    assert spec.pods[0].namespace == "shop"


def test_metadata_name_label_cannot_be_overridden() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
    text += "  labels: {kubernetes.io/metadata.name: other}\n"
    spec = load_text(text, "f.yaml")
    assert spec.namespaces["shop"].labels == {"kubernetes.io/metadata.name": "shop"}


def test_same_pod_name_in_two_namespaces_is_fine() -> None:
    text = CLUSTER + namespace_doc("shop") + pod_doc("web") + pod_doc("web", namespace="shop")
    spec = load_text(text, "f.yaml")
    assert [p.key for p in spec.pods] == ["default/web", "shop/web"]


# --- bad input: one test per kind ------------------------------------------------------------


def test_yaml_syntax_error() -> None:
    text = CLUSTER.replace("  name: demo\n", "  name: demo\n   extra: indented\n")
    err = load_error(text)
    check(err, line_of(text, "extra: indented"), "", "YAML syntax error")


def test_yaml_error_names_the_line_where_the_construct_begins() -> None:
    # An unclosed flow sequence: the parser gives up on the next line; the mistake is on this one.
    text = CLUSTER.replace("podCIDR: 10.244.0.0/16", "podCIDR: [10.244.0.0/16")
    err = load_error(text)
    began, failed = line_of(text, "podCIDR"), line_of(text, "nodeCIDRMaskSize")
    check(err, began, "", "YAML syntax error")
    assert "flow sequence that begins here" in err.message
    assert f"line {failed}" in err.message


def test_unclosed_quote_is_reported_where_it_opens() -> None:
    text = CLUSTER.replace("name: demo", 'name: "demo')
    err = load_error(text)
    check(err, line_of(text, '"demo'), "", "quoted scalar that begins here")


def test_yaml_errors_are_one_line() -> None:
    for bad in ("podCIDR: [10.244.0.0/16", "podCIDR: {a: 1", "podCIDR: *nowhere", "podCIDR: \t1"):
        err = load_error(CLUSTER.replace("podCIDR: 10.244.0.0/16", bad))
        assert "\n" not in str(err), str(err)
        assert err.line is not None


@pytest.mark.parametrize("depth", [101, 500, 999, 5000])
def test_deeply_nested_yaml_is_refused(depth: int) -> None:
    text = CLUSTER + pod_doc("web") + "  overhead: " + "[" * depth + "]" * depth + "\n"
    err = load_error(text)
    check(err, line_of(text, "overhead"), "", "nest")  # ours past 100 levels, libyaml's past 1,000


@pytest.mark.parametrize("flow", [True, False])
def test_deeply_nested_block_yaml_is_refused(flow: bool) -> None:
    lines = "".join(" " * (2 * i) + f"k{i}:\n" for i in range(600)) if not flow else "[" * 600 + "]" * 600
    err = load_error(CLUSTER + "---\n" + lines + "\n")
    assert "nested" in err.message and err.exit_code == 2 and err.line is not None


def alias_bomb(levels: int = 9, fan_out: int = 9) -> str:
    """The billion laughs: each level lists the previous one ``fan_out`` times."""
    text = CLUSTER + pod_doc("web") + "  overhead:\n"
    text += "    l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]\n"
    for i in range(1, levels):
        text += f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]\n"
    return text


def test_alias_bomb_is_refused_before_it_expands() -> None:
    text = alias_bomb()
    assert len(text.encode()) < 2048
    err = load_error(text)
    assert err.message.startswith("YAML aliases expand"), err.message
    assert err.line is not None and line_of(text, "l0:") <= err.line <= line_of(text, "l8:")


def test_modest_aliases_are_fine() -> None:
    # Anchors live within one document, as YAML says.
    text = CLUSTER + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: &team {team: a}\n"
    text += "  annotations: *team\nspec:\n  containers: [{name: main}]\n"
    spec = load_text(text, "f.yaml")
    assert spec.pods[0].labels == {"team": "a"}


def test_non_utf8_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(CLUSTER.encode() + b"# caf\xe9\n")
    with pytest.raises(SpecError) as exc:
        load_file(path)
    err = exc.value
    assert (err.file, err.line, err.exit_code) == (str(path), CLUSTER.count("\n") + 1, 2)
    assert "not UTF-8" in err.message and "0xe9" in err.message


def test_unknown_kind() -> None:
    text = CLUSTER + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n"
    err = load_error(text)
    check(err, line_of(text, "kind: Ingress"), "kind", "unknown kind 'Ingress'")
    assert "Cluster, Namespace, Pod, Service, NetworkPolicy, Deployment" in err.message


def test_unknown_field_in_cluster_spec() -> None:
    text = CLUSTER.replace("  podCIDR:", "  podCidr: 10.0.0.0/16\n  podCIDR:")
    err = load_error(text)
    check(err, line_of(text, "podCidr"), "spec.podCidr", "unknown field")
    assert "podCIDR" in err.message  # says what would have been accepted


def test_unknown_field_in_pod_container() -> None:
    text = CLUSTER + pod_doc("web") + "    prots: [{containerPort: 80}]\n"
    err = load_error(text)
    check(err, line_of(text, "prots"), "spec.containers[0].prots", "unknown field")
    assert "ports" in err.message


@pytest.mark.parametrize("value", ["10.244.0.1/16", "10.244.0.0/33", "banana"])
def test_invalid_cidr(value: str) -> None:
    text = CLUSTER.replace("podCIDR: 10.244.0.0/16", f"podCIDR: {value}")
    err = load_error(text)
    check(err, line_of(text, "podCIDR"), "spec.podCIDR", "is not a valid IPv4 CIDR")
    assert value in err.message


def test_pod_cidr_overlaps_service_cidr() -> None:
    text = CLUSTER.replace("serviceCIDR: 10.96.0.0/12", "serviceCIDR: 10.244.128.0/17")
    err = load_error(text)
    check(err, line_of(text, "serviceCIDR"), "spec.serviceCIDR", "overlaps spec.podCIDR 10.244.0.0/16")


def test_underlay_overlaps_pod_cidr() -> None:
    text = CLUSTER.replace("cidr: 172.31.0.0/24", "cidr: 10.244.7.0/24")
    err = load_error(text)
    check(err, line_of(text, "cidr: 10.244.7.0/24"), "spec.underlay.cidr", "overlaps spec.podCIDR")


def test_node_mask_smaller_than_pod_cidr_prefix() -> None:
    text = CLUSTER.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 12")
    err = load_error(text)
    check(err, line_of(text, "nodeCIDRMaskSize"), "spec.nodeCIDRMaskSize", "larger than podCIDR")


def test_pod_on_unknown_node() -> None:
    text = CLUSTER + pod_doc("web", node="node-9")
    err = load_error(text)
    check(err, line_of(text, "nodeName: node-9"), "spec.nodeName", "node 'node-9' does not exist")


def test_duplicate_node_names() -> None:
    text = CLUSTER.replace("- name: node-2", "- name: node-1")
    err = load_error(text)
    check(err, line_of(text, "- name: node-1", nth=2), "spec.nodes[1].name", "duplicate")
    assert "'node-1'" in err.message


def test_duplicate_pods_in_a_namespace() -> None:
    text = CLUSTER + namespace_doc("shop") + pod_doc("web", namespace="shop") + pod_doc("web", namespace="shop")
    err = load_error(text)
    check(err, line_of(text, "name: web", nth=2), "metadata.name", "duplicate Pod shop/web")


@pytest.mark.parametrize("name", ["shop", "default"])
def test_duplicate_namespaces(name: str) -> None:
    text = CLUSTER + namespace_doc(name) + namespace_doc(name)
    err = load_error(text)
    check(err, line_of(text, f"name: {name}", nth=2), "metadata.name", f"duplicate Namespace {name!r}")


@pytest.mark.parametrize(
    ("port", "fragment"), [(0, "greater than or equal to 1"), (70000, "less than or equal to 65535")]
)
def test_port_out_of_range(port: int, fragment: str) -> None:
    text = CLUSTER + pod_doc("web", ports=(f"containerPort: {port}",))
    err = load_error(text)
    check(err, line_of(text, "containerPort"), "spec.containers[0].ports[0].containerPort", fragment)


def test_node_name_not_dns_label() -> None:
    text = CLUSTER.replace("- name: node-2", "- name: Node_2")
    err = load_error(text)
    check(err, line_of(text, "Node_2"), "spec.nodes[1].name", "'Node_2' is not a DNS-1123 label")


def test_pod_name_not_dns_label() -> None:
    text = CLUSTER + pod_doc("web.1")
    err = load_error(text)
    check(err, line_of(text, "name: web.1"), "metadata.name", "'web.1' is not a DNS-1123 label")


def test_cluster_name_not_dns_label() -> None:
    text = CLUSTER.replace("name: demo", "name: Demo")
    err = load_error(text)
    check(err, line_of(text, "name: Demo"), "metadata.name", "'Demo' is not a DNS-1123 label")


def test_cluster_name_too_long() -> None:
    text = CLUSTER.replace("name: demo", "name: " + "a" * 64)
    err = load_error(text)
    check(err, line_of(text, "a" * 64), "metadata.name", "is not a DNS-1123 label")


def test_namespace_not_declared() -> None:
    text = CLUSTER + pod_doc("web", namespace="shop")
    err = load_error(text)
    check(err, line_of(text, "namespace: shop"), "metadata.namespace", "namespace 'shop' is not declared")


def test_missing_cluster_document() -> None:
    text = namespace_doc("shop").removeprefix("---\n") + pod_doc("web", namespace="shop")
    err = load_error(text)
    check(err, None, "kind", "no Cluster document")


def test_empty_file_has_no_cluster_document() -> None:
    check(load_error(""), None, "kind", "no Cluster document")


def test_two_cluster_documents() -> None:
    text = CLUSTER + "---\n" + CLUSTER
    err = load_error(text)
    check(err, line_of(text, "kind: Cluster", nth=2), "kind", "exactly one Cluster document")
    assert "the first is f.yaml:1" in err.message


def test_duplicate_yaml_key() -> None:
    text = CLUSTER.replace("  nodeCIDRMaskSize: 24\n", "  nodeCIDRMaskSize: 24\n  podCIDR: 10.245.0.0/16\n")
    err = load_error(text)
    check(err, line_of(text, "podCIDR", nth=2), "spec.podCIDR", "duplicate key")


def test_document_not_a_mapping() -> None:
    text = CLUSTER + "---\n- just\n- a list\n"
    err = load_error(text)
    check(err, line_of(text, "- just"), "", "must be a mapping")


def test_more_pods_than_a_node_block_holds() -> None:
    # A /30 block has 2 host addresses; the first is the node's gateway (cni0): room for 1 pod.
    text = CLUSTER.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 30")
    text += pod_doc("a") + pod_doc("b") + pod_doc("c")  # a -> node-1, b -> node-2, c -> node-1: full
    spec = load_text(text, "f.yaml")
    with pytest.raises(SpecError) as exc:
        plan(spec)
    err = exc.value
    # Errors found while planning point at the start of the pod's document.
    check(err, line_of(text, "name: c") - 3, "metadata.name", "node 'node-1' has no address left for pod default/c")
    assert "10.244.0.0/30" in err.message


def test_more_pinned_pods_than_a_node_block_holds() -> None:
    text = CLUSTER.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 30")
    text += pod_doc("a", node="node-2") + pod_doc("b", node="node-2")
    spec = load_text(text, "f.yaml")
    with pytest.raises(SpecError) as exc:
        plan(spec)
    check(
        exc.value, line_of(text, "name: b") - 3, "spec.nodeName", "node 'node-2' has no address left for pod default/b"
    )


def test_one_pod_per_node_fits_a_slash_30_block() -> None:
    text = CLUSTER.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 30") + pod_doc("a") + pod_doc("b")
    p = plan(load_text(text, "f.yaml"))
    assert p.allocations["pod_ip"] == {"default/a": "10.244.0.2", "default/b": "10.244.0.6"}


# --- the command line ------------------------------------------------------------------------


def run_up(path: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PODNET_STATE_DIR=str(state_dir))
    return subprocess.run(
        [sys.executable, "-m", "podnet", "up", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_up_with_bad_file_exits_2_and_touches_nothing(tmp_path: Path) -> None:
    text = CLUSTER.replace("serviceCIDR: 10.96.0.0/12", "serviceCIDR: 10.244.0.0/12")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    result = run_up(path, state_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}:{line_of(text, 'serviceCIDR')}: spec.serviceCIDR:" in lines[0]
    assert result.stdout == ""
    assert list(state_dir.iterdir()) == []


def test_cli_up_with_file_refused_by_plan_touches_nothing(tmp_path: Path) -> None:
    text = CLUSTER.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 30")
    text += pod_doc("a", node="node-1") + pod_doc("b", node="node-1")
    path = tmp_path / "full.yaml"
    path.write_text(text)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    result = run_up(path, state_dir)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}:{line_of(text, 'name: b') - 3}: spec.nodeName:" in lines[0]
    # "Nothing is touched before the whole spec is valid": not even a lock file.
    assert list(state_dir.iterdir()) == []

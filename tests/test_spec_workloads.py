"""Workloads expand into the pods Kubernetes would run, named as its controllers name them. No root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from podnet.plan import plan
from podnet.spec import load_text
from podnet.spec.workloads import MAX_GENERATED_BASE, SAFE_ALPHABET
from tests.test_spec import CLUSTER, check, line_of, load_error

SUFFIX = f"[{SAFE_ALPHABET}]{{5}}"
HASH = f"[{SAFE_ALPHABET}]{{1,10}}"


def workload(
    kind: str,
    name: str = "web",
    replicas: int | None = 3,
    labels: str = "{app: web}",
    selector: str = "{matchLabels: {app: web}}",
    extra_spec: str = "",
    pod_spec: str = "",
    container: str = "",
    namespace: str | None = None,
) -> str:
    text = f"---\napiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\n"
    if namespace:
        text += f"  namespace: {namespace}\n"
    text += "spec:\n"
    if replicas is not None:
        text += f"  replicas: {replicas}\n"
    text += f"  selector: {selector}\n{extra_spec}"
    text += f"  template:\n    metadata:\n      labels: {labels}\n    spec:\n{pod_spec}"
    text += f"      containers:\n      - name: main\n        ports: [{{containerPort: 80}}]\n{container}"
    return text


def pods_of(text: str) -> dict[str, object]:
    return {p.key: p for p in load_text(CLUSTER + text, "f.yaml").pods}


# --- Deployment, ReplicaSet ------------------------------------------------------------------


def test_deployment_pods_are_name_hash_suffix_with_the_hash_label() -> None:
    pods = pods_of(workload("Deployment"))
    assert len(pods) == 3
    hashes = set()
    for key, pod in pods.items():
        match = re.fullmatch(f"default/web-({HASH})-{SUFFIX}", key)
        assert match, key
        hashes.add(match[1])
        assert pod.labels == {"app": "web", "pod-template-hash": match[1]}
    assert len(hashes) == 1


def test_deployment_names_are_stable_while_the_template_is_unchanged() -> None:
    first = list(pods_of(workload("Deployment")))
    assert list(pods_of(workload("Deployment"))) == first
    # What the template holds changes the hash, even fields podnet ignores (Kubernetes rolls on an image change).
    changed = list(pods_of(workload("Deployment", container="        image: nginx:1.27\n")))
    assert set(changed).isdisjoint(first)
    assert all(key.split("-")[1] != first[0].split("-")[1] for key in changed)
    # The replica count is not part of the template: scaling keeps the names there are.
    assert list(pods_of(workload("Deployment", replicas=5)))[:3] == first
    assert list(pods_of(workload("Deployment", replicas=1))) == first[:1]


def test_names_do_not_depend_on_the_process() -> None:
    script = (
        "import json, sys; from podnet.spec import load_text; "
        "print(json.dumps([p.key for p in load_text(sys.stdin.read(), 'f.yaml').pods]))"
    )
    text = CLUSTER + workload("Deployment") + workload("DaemonSet", name="agent", replicas=None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    assert len(json.loads(runs[0])) == 5


def test_replicaset_pods_are_name_suffix() -> None:
    pods = pods_of(workload("ReplicaSet", replicas=2))
    assert all(re.fullmatch(f"default/web-{SUFFIX}", key) for key in pods), list(pods)
    assert all(pod.labels == {"app": "web"} for pod in pods.values())


def test_zero_replicas_run_no_pod() -> None:
    assert pods_of(workload("Deployment", replicas=0)) == {}


def test_long_names_are_cut_as_generate_name_cuts_them() -> None:
    name = "a" * 60
    (key,) = pods_of(workload("Deployment", name=name, replicas=1))
    pod_name = key.split("/")[1]
    assert len(pod_name) == 63
    assert re.fullmatch(f"a{{{MAX_GENERATED_BASE}}}{SUFFIX}", pod_name), pod_name


def test_replicas_default_to_one() -> None:
    assert len(pods_of(workload("Deployment", replicas=None))) == 1


# --- StatefulSet -----------------------------------------------------------------------------


def test_statefulset_pods_are_ordinals_with_hostname_and_subdomain() -> None:
    pods = pods_of(workload("StatefulSet", extra_spec="  serviceName: web\n"))
    assert list(pods) == ["default/web-0", "default/web-1", "default/web-2"]
    for i, pod in enumerate(pods.values()):
        assert (pod.hostname, pod.subdomain) == (f"web-{i}", "web")
        assert pod.labels["statefulset.kubernetes.io/pod-name"] == f"web-{i}"
        assert pod.labels["apps.kubernetes.io/pod-index"] == str(i)
        assert re.fullmatch(f"web-{HASH}", pod.labels["controller-revision-hash"])


def test_statefulset_scales_down_from_the_highest_ordinal_and_may_start_elsewhere() -> None:
    assert list(pods_of(workload("StatefulSet", replicas=2))) == ["default/web-0", "default/web-1"]
    pods = pods_of(workload("StatefulSet", replicas=2, extra_spec="  ordinals: {start: 5}\n"))
    assert list(pods) == ["default/web-5", "default/web-6"]


def test_statefulset_pod_names_must_fit_a_label() -> None:
    text = CLUSTER + workload("StatefulSet", name="s" * 62, replicas=10)
    err = load_error(text)
    check(err, line_of(text, "s" * 62), "metadata.name", f"its pods would be named '{'s' * 62}-0'")


# --- DaemonSet -------------------------------------------------------------------------------


def test_daemonset_runs_one_pod_on_every_node() -> None:
    pods = pods_of(workload("DaemonSet", name="agent", replicas=None))
    assert sorted(p.node for p in pods.values()) == ["node-1", "node-2"]
    assert all(re.fullmatch(f"default/agent-{SUFFIX}", key) for key in pods), list(pods)
    assert all(p.labels["pod-template-generation"] == "1" for p in pods.values())


def test_a_new_node_adds_a_daemonset_pod_and_renames_none() -> None:
    before = {p.node: p.key for p in pods_of(workload("DaemonSet", name="agent", replicas=None)).values()}
    more = CLUSTER.replace("  - name: node-2\n", "  - name: node-2\n  - name: node-3\n")
    after = {p.node: p.key for p in load_text(more + workload("DaemonSet", name="agent", replicas=None), "f.yaml").pods}
    assert {k: after[k] for k in before} == before
    assert set(after) == {"node-1", "node-2", "node-3"}


def test_daemonset_with_a_node_name_runs_there_only() -> None:
    pods = pods_of(workload("DaemonSet", name="agent", replicas=None, pod_spec="      nodeName: node-2\n"))
    assert [p.node for p in pods.values()] == ["node-2"]


# --- what every workload must get right ------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"])
def test_the_selector_must_select_the_template(kind: str) -> None:
    replicas = None if kind == "DaemonSet" else 1
    text = CLUSTER + workload(kind, replicas=replicas, labels="{app: other}")
    err = load_error(text)
    check(err, line_of(text, "app: other"), "spec.template.metadata.labels", "does not select the template's labels")
    text = CLUSTER + workload(kind, replicas=replicas, selector="{}")
    check(load_error(text), line_of(text, "selector: {}"), "spec.selector", "an empty selector")


def test_workload_selectors_are_label_selectors() -> None:
    text = CLUSTER + workload("Deployment", selector="{matchExpressions: [{key: app, operator: In, values: [web]}]}")
    assert len(load_text(text, "f.yaml").pods) == 3
    text = CLUSTER + workload("Deployment", selector="{matchLabels: {app: -web}}", labels="{app: -web}")
    check(load_error(text), line_of(text, "selector:"), "spec.selector.matchLabels.app", "label value '-web'")


def test_a_typo_in_a_template_names_its_place() -> None:
    text = CLUSTER + workload("Deployment", container="        prots: []\n")
    err = load_error(text)
    check(err, line_of(text, "prots"), "spec.template.spec.containers[0].prots", "did you mean 'ports'?")


def test_template_fields_podnet_ignores_are_warned() -> None:
    spec = load_text(CLUSTER + workload("Deployment", container="        image: nginx\n"), "f.yaml")
    assert any("spec.template.spec.containers[0].image: ignored" in w for w in spec.warnings)
    spec = load_text(CLUSTER + workload("Deployment", extra_spec="  strategy: {type: Recreate}\n"), "f.yaml")
    assert any("DeploymentSpec.strategy" in w for w in spec.warnings)


def test_a_workload_in_an_undeclared_namespace_is_refused_at_its_namespace() -> None:
    text = CLUSTER + workload("Deployment", namespace="shop")
    check(load_error(text), line_of(text, "namespace: shop"), "metadata.namespace", "namespace 'shop' is not declared")


def test_a_generated_pod_name_clashing_with_a_pod_is_a_duplicate() -> None:
    text = CLUSTER + workload("StatefulSet", replicas=1)
    text += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0}\nspec: {containers: [{name: c}]}\n"
    err = load_error(text)
    assert "duplicate Pod default/web-0" in err.message


def test_two_workloads_of_a_kind_may_not_share_a_name() -> None:
    text = CLUSTER + workload("Deployment") + workload("Deployment", replicas=1)
    err = load_error(text)
    check(err, line_of(text, "name: web", nth=2), "metadata.name", "duplicate Deployment default/web")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [("replicas", "-1", "greater than or equal to 0"), ("replicas", "two", "integer")],
)
def test_replicas_are_checked(field: str, value: str, fragment: str) -> None:
    text = CLUSTER + workload("Deployment").replace("replicas: 3", f"{field}: {value}")
    check(load_error(text), line_of(text, f"{field}: {value}"), f"spec.{field}", fragment)


def test_a_workload_needs_apps_v1() -> None:
    text = CLUSTER + workload("Deployment").replace("apps/v1", "extensions/v1beta1")
    check(load_error(text), line_of(text, "extensions/v1beta1"), "apiVersion", "'apps/v1'")


# --- DNS: hostname and subdomain --------------------------------------------------------------

HEADLESS = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
HEADLESS += "spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}\n"


def records(text: str) -> dict[str, set[str]]:
    zone = plan(load_text(CLUSTER.replace("dns: {enabled: false}", "dns: {enabled: true}") + text, "f.yaml"))
    out: dict[str, set[str]] = {}
    for r in zone.dns_config["zone"]["records"]:
        if r["type"] == "A":
            out.setdefault(r["name"], set()).add(r["data"])
    return out


def test_statefulset_pods_resolve_under_their_headless_service() -> None:
    p = plan(
        load_text(
            CLUSTER.replace("dns: {enabled: false}", "dns: {enabled: true}")
            + workload("StatefulSet", extra_spec="  serviceName: web\n")
            + HEADLESS,
            "f.yaml",
        )
    )
    a = {r["name"]: r["data"] for r in p.dns_config["zone"]["records"] if r["type"] == "A"}
    for i in range(3):
        assert a[f"web-{i}.web.default.svc.cluster.local."] == p.topology.pods[f"default/web-{i}"].ip


def test_a_pods_hostname_and_subdomain_name_its_record() -> None:
    pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-abc12, labels: {app: web}}\n"
    pod += "spec: {hostname: front, subdomain: web, containers: [{name: c}]}\n"
    got = records(pod + HEADLESS)
    assert "front.web.default.svc.cluster.local." in got
    assert "web-abc12.web.default.svc.cluster.local." not in got
    # A subdomain naming another service leaves the endpoint's name as it is.
    got = records(pod.replace("subdomain: web", "subdomain: other") + HEADLESS)
    assert "web-abc12.web.default.svc.cluster.local." in got
    assert "front.web.default.svc.cluster.local." not in got


@pytest.mark.parametrize("field", ["hostname", "subdomain"])
def test_hostname_and_subdomain_may_be_null(field: str) -> None:
    text = CLUSTER + f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  {field}: null\n"
    assert load_text(text + "  containers: [{name: c}]\n", "f.yaml").pods[0].hostname is None


def test_a_statefulset_service_name_may_be_null() -> None:
    pods = pods_of(workload("StatefulSet", replicas=1, extra_spec="  serviceName: null\n"))
    assert pods["default/web-0"].subdomain is None


@pytest.mark.parametrize("field", ["hostname", "subdomain"])
def test_hostname_and_subdomain_are_dns_labels(field: str) -> None:
    text = CLUSTER + f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  {field}: Not_A_Label\n"
    text += "  containers: [{name: c}]\n"
    check(load_error(text), line_of(text, "Not_A_Label"), f"spec.{field}", "is not a DNS-1123 label")

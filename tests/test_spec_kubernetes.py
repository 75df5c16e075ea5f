"""Real Kubernetes manifests load: the fields podnet does not use are ignored (once warned), typos
are still errors, and labels are checked as the API server checks them. No root needed."""

from __future__ import annotations

import pytest

from podnet.errors import SpecError
from podnet.spec import load_text
from podnet.spec.kubefields import KUBERNETES_FIELDS, KUBERNETES_TYPE, _model_fields
from tests.test_spec import CLUSTER, check, line_of, load_error

# A Pod as real projects write them: probes, resources, env, volumes, a security context, status.
REAL_POD = """\
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  uid: 7d5f6c3a-0000-4000-8000-000000000001
  labels: {app: web, app.kubernetes.io/name: web}
  annotations: {prometheus.io/scrape: "true"}
spec:
  restartPolicy: Always
  serviceAccountName: web
  securityContext: {runAsNonRoot: true, runAsUser: 1000}
  volumes:
  - name: cache
    emptyDir: {}
  initContainers:
  - name: migrate
    image: example.org/web:1.2
    command: [/bin/migrate]
  containers:
  - name: web
    image: example.org/web:1.2
    imagePullPolicy: IfNotPresent
    command: [/bin/web]
    args: [--port=8080]
    env:
    - {name: MODE, value: production}
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {memory: 128Mi}
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    livenessProbe:
      httpGet: {path: /healthz, port: http}
    readinessProbe:
      httpGet: {path: /ready, port: http}
    volumeMounts:
    - {name: cache, mountPath: /cache}
  - name: sidecar
    image: example.org/proxy:2
    resources:
      limits: {memory: 32Mi}
status:
  phase: Running
"""


def ignored_field(warning: str) -> str:
    """``Container.image`` of a warning line."""
    return warning.split("podnet does not use ")[1].split(" ")[0]


def test_a_real_pod_loads_with_the_fields_podnet_reads() -> None:
    spec = load_text(CLUSTER + REAL_POD, "f.yaml")
    (pod,) = spec.pods
    assert pod.key == "default/web"
    assert pod.labels == {"app": "web", "app.kubernetes.io/name": "web"}
    assert [(p.port, p.protocol, p.name) for p in pod.ports] == [(8080, "TCP", "http")]


def test_each_ignored_field_is_warned_once_where_it_first_appears() -> None:
    text = CLUSTER + REAL_POD
    spec = load_text(text, "f.yaml")
    image = [w for w in spec.warnings if ignored_field(w) == "Container.image"]
    assert image == [
        f"f.yaml:{line_of(text, 'image: example.org/web:1.2', nth=2)}: spec.containers[0].image: "
        "ignored: podnet does not use Container.image (and in 1 more place)"
    ]
    fields = {ignored_field(w) for w in spec.warnings}
    assert fields == {
        "ObjectMeta.uid",
        "PodSpec.restartPolicy",
        "PodSpec.serviceAccountName",
        "PodSpec.securityContext",
        "PodSpec.volumes",
        "PodSpec.initContainers",
        "Container.image",
        "Container.imagePullPolicy",
        "Container.command",
        "Container.args",
        "Container.env",
        "Container.resources",
        "Container.livenessProbe",
        "Container.readinessProbe",
        "Container.volumeMounts",
        "Pod.status",
    }
    assert len(spec.warnings) == len(fields)


def test_a_plain_spec_has_no_warnings() -> None:
    assert (
        load_text(
            CLUSTER + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n", "f.yaml"
        ).warnings
        == []
    )


@pytest.mark.parametrize(
    ("typo", "path", "suggestion"),
    [
        ("  contaners: []\n", "spec.contaners", "did you mean 'containers'?"),
        ("  hostNetwrok: true\n", "spec.hostNetwrok", "did you mean 'hostNetwork'?"),
        ("    imagee: x\n", "spec.containers[0].imagee", "did you mean 'image'?"),
    ],
)
def test_a_field_kubernetes_does_not_have_is_still_an_error(typo: str, path: str, suggestion: str) -> None:
    pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n"
    text = CLUSTER + pod + typo
    err = load_error(text)
    check(err, line_of(text, typo.strip()), path, "unknown field")
    assert suggestion in err.message
    assert "a Kubernetes" in err.message


def test_a_typo_is_reported_rather_than_the_field_it_leaves_missing() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  contaners: [{name: c}]\n"
    err = load_error(text)
    check(err, line_of(text, "contaners"), "spec.contaners", "did you mean 'containers'?")


def test_the_cluster_document_stays_strict() -> None:
    # status is a field of every Kubernetes object, not of podnet's Cluster.
    err = load_error(CLUSTER + "status: {}\n")
    check(err, line_of(CLUSTER + "status: {}\n", "status"), "status", "unknown field (expected one of:")
    # An external host's ports are podnet's: hostIP is a ContainerPort field, not one of podnet's.
    text = CLUSTER.replace(
        "  nodes:\n",
        "  external:\n    name: internet\n    cidr: 203.0.113.0/24\n"
        "    hosts: [{name: web, address: 203.0.113.10, ports: [{containerPort: 80, hostIP: 1.2.3.4}]}]\n"
        "  nodes:\n",
    )
    err = load_error(text)
    assert err.field == "spec.external.hosts[0].ports[0].hostIP"
    assert "unknown field" in err.message


def test_used_fields_keep_their_types() -> None:
    pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: x\n"
    err = load_error(CLUSTER + pod + "    ports: [{containerPort: http}]\n")
    assert err.field == "spec.containers[0].ports[0].containerPort"
    assert "integer" in err.message


def test_ignored_fields_are_not_looked_into() -> None:
    """kubectl would check a probe's fields too; podnet models none of them, and says so in a warning."""
    pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n"
    spec = load_text(CLUSTER + pod + "    livenessProbe: {anything: [1, 2]}\n", "f.yaml")
    assert any("Container.livenessProbe" in w for w in spec.warnings)


def test_kubernetes_services_and_policies_take_their_extra_fields() -> None:
    text = (
        CLUSTER
        + """\
---
apiVersion: v1
kind: Service
metadata: {name: web, resourceVersion: "1"}
spec:
  selector: {app: web}
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  internalTrafficPolicy: Cluster
  ports: [{name: http, port: 80, appProtocol: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, generation: 2}
spec:
  podSelector: {}
"""
    )
    spec = load_text(text, "f.yaml")
    assert [s.key for s in spec.services] == ["default/web"]
    assert {ignored_field(w) for w in spec.warnings} == {
        "ObjectMeta.resourceVersion",
        "ServiceSpec.ipFamilies",
        "ServiceSpec.ipFamilyPolicy",
        "ServiceSpec.internalTrafficPolicy",
        "ServicePort.appProtocol",
        "ObjectMeta.generation",
    }


def test_a_list_is_read_item_by_item() -> None:
    text = (
        CLUSTER
        + """\
---
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a}
  spec: {containers: [{name: c}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b}
  spec: {containers: [{name: c, prots: []}]}
"""
    )
    err = load_error(text)
    check(err, line_of(text, "prots"), "items[1].spec.containers[0].prots", "did you mean 'ports'?")
    spec = load_text(text.replace("prots", "ports"), "f.yaml")
    assert [p.key for p in spec.pods] == ["default/a", "default/b"]


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_jobs_are_refused_with_a_reason(kind: str) -> None:
    text = CLUSTER + f"---\napiVersion: batch/v1\nkind: {kind}\nmetadata: {{name: once}}\n"
    err = load_error(text)
    check(err, line_of(text, f"kind: {kind}"), "kind", f"{kind} is not supported")


@pytest.mark.parametrize("kind", ["[Pod]", "{a: 1}", "5"])
def test_a_kind_that_is_not_a_name_is_an_error(kind: str) -> None:
    text = CLUSTER + f"---\napiVersion: v1\nkind: {kind}\nmetadata: {{name: a}}\n"
    check(load_error(text), line_of(text, f"kind: {kind}"), "kind", "kind must be a string")


def test_a_document_without_kind() -> None:
    text = CLUSTER + "---\napiVersion: v1\nmetadata: {name: a}\n"
    check(
        load_error(text), line_of(text, "apiVersion: v1"), "kind", "required field is missing (expected one of: Cluster"
    )


def test_every_field_podnet_reads_is_a_kubernetes_field() -> None:
    for model, kube in KUBERNETES_TYPE.items():
        assert set(_model_fields(model)) <= KUBERNETES_FIELDS[kube], (model.__name__, kube)


# --- labels, as the API server checks them ---------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "bad"),
    [
        ('{app: "' + "a" * 64 + '"}', "is not valid (expected at most 63"),
        ("{app: -web}", "label value '-web'"),
        ("{app: web-}", "label value 'web-'"),
        ('{app: "a b"}', "label value 'a b'"),
        ("{-app: web}", "label key '-app'"),
        ("{Example.com/app: web}", "its prefix 'Example.com' is not a DNS subdomain"),
        ("{example.com/: web}", "label key 'example.com/'"),
        ("{/app: web}", "label key '/app'"),
        ('{"' + "k" * 64 + '": v}', "label key"),
    ],
)
def test_pod_labels_are_validated(labels: str, bad: str) -> None:
    text = CLUSTER + f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {labels}\n"
    text += "spec: {containers: [{name: c}]}\n"
    err = load_error(text)
    assert err.field.startswith("metadata.labels."), err.field
    assert err.line == line_of(text, "labels:")
    assert bad in err.message


@pytest.mark.parametrize(
    "labels", ["{app: ''}", "{app.kubernetes.io/name: web}", "{a: A_b.c-1}", '{app: "' + "a" * 63 + '"}']
)
def test_valid_labels_pass(labels: str) -> None:
    text = CLUSTER + f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {labels}\n"
    load_text(text + "spec: {containers: [{name: c}]}\n", "f.yaml")


def test_namespace_and_service_labels_and_selectors_are_validated() -> None:
    ns = CLUSTER + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: -x}}\n"
    check(load_error(ns), line_of(ns, "team"), "metadata.labels.team", "label value '-x'")
    svc = CLUSTER + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n"
    svc += "  selector: {app: web!}\n  ports: [{port: 80}]\n"
    check(load_error(svc), line_of(svc, "app: web!"), "spec.selector.app", "label value 'web!'")


def test_annotation_keys_are_validated() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations: {'bad key': x}\n"
    err = load_error(text + "spec: {containers: [{name: c}]}\n")
    assert err.field == "metadata.annotations.bad key"
    assert "annotation key 'bad key'" in err.message


def test_label_values_of_other_types_are_refused() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels: {version: 1.0}\n"
    err = load_error(text + "spec: {containers: [{name: c}]}\n")
    assert err.field == "metadata.labels.version"
    assert "string" in err.message


def test_errors_in_a_list_item_name_the_item() -> None:
    text = CLUSTER + "---\napiVersion: v1\nkind: List\nitems:\n- 5\n"
    with pytest.raises(SpecError) as exc:
        load_text(text, "f.yaml")
    assert exc.value.field == "items[0]"

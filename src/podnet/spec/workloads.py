"""Deployments, ReplicaSets, StatefulSets and DaemonSets: the pods Kubernetes would run for them.

Each workload becomes ordinary pods, named and labelled as Kubernetes' controllers name them:

- ReplicaSet ``R``: ``replicas`` pods ``R-XXXXX`` (the API server's ``generateName``: a base of
  at most 58 characters and 5 characters of the alphabet ``bcdfghjklmnpqrstvwxz2456789``).
- Deployment ``D``: its ReplicaSet is ``D-HASH``, HASH the ``pod-template-hash`` of the pod
  template, so its pods are ``D-HASH-XXXXX`` with the label ``pod-template-hash: HASH``. The
  hash is Kubernetes' recipe in spirit (FNV-1a, 32 bits, of the template; its decimal digits
  mapped onto that alphabet) but of the template as written, not of Go's in-memory object:
  stable across runs while the template is unchanged, new when it changes (a rollout).
- StatefulSet ``S``: pods ``S-0 .. S-(N-1)`` (from ``ordinals.start``), each with hostname
  ``S-i`` and subdomain ``serviceName`` (so ``S-i.SERVICE.NS.svc.DOMAIN`` resolves under the
  headless Service), and the labels ``statefulset.kubernetes.io/pod-name``,
  ``apps.kubernetes.io/pod-index`` and ``controller-revision-hash: S-HASH``.
- DaemonSet ``DS``: one pod ``DS-XXXXX`` per node (or only on the template's ``nodeName``),
  with ``controller-revision-hash: HASH`` and ``pod-template-generation: "1"``.

Where Kubernetes draws the five characters at random, podnet derives them from the pod's
place (ReplicaSet and index, DaemonSet and node), so names stay the same from one ``up`` to
the next; scaling down removes the highest indices (the highest ordinals of a StatefulSet).
The selector must select the template's labels, as the API server requires.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from podnet.spec import models as m
from podnet.spec.yamlpos import Document, spec_error

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery util/rand: no vowels, no 0 1 3
SUFFIX_LENGTH = 5
MAX_GENERATED_BASE = 63 - SUFFIX_LENGTH  # the API server cuts generateName to 58 characters
FNV32_OFFSET, FNV32_PRIME = 2166136261, 16777619

POD_TEMPLATE_HASH = "pod-template-hash"
REVISION_HASH = "controller-revision-hash"
STATEFULSET_POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"
TEMPLATE_GENERATION = "pod-template-generation"

TEMPLATE = ("spec", "template")


def template_hash(template: Any) -> str:
    """The hash of a pod template as written: FNV-1a of its canonical JSON, safely encoded."""
    h = FNV32_OFFSET
    for byte in json.dumps(template, sort_keys=True, separators=(",", ":"), default=str).encode():
        h = ((h ^ byte) * FNV32_PRIME) & 0xFFFFFFFF
    return safe_encode(str(h))


def safe_encode(text: str) -> str:
    """Kubernetes' ``rand.SafeEncodeString``: each character mapped onto the safe alphabet."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def generated_name(base: str, seed: str) -> str:
    """``generateName`` with a suffix drawn from ``seed`` instead of at random."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    suffix = ""
    for _ in range(SUFFIX_LENGTH):
        number, digit = divmod(number, len(SAFE_ALPHABET))
        suffix += SAFE_ALPHABET[digit]
    return base[:MAX_GENERATED_BASE] + suffix


def expand(doc: Document, workload: m.WorkloadDoc, nodes: list[str]) -> list[tuple[Document, m.PodDoc]]:
    """The pods of a workload, each with the part of the document (its template) errors name."""
    body = workload.spec
    template = body.template
    _check_selector(doc, body.selector, template.metadata.labels)
    namespace = workload.metadata.namespace
    name = workload.metadata.name
    raw = doc.data["spec"]["template"]
    where = doc.at(TEMPLATE, raw)
    labels = dict(template.metadata.labels)
    if isinstance(workload, m.StatefulSetDoc):
        revision = f"{name}-{template_hash(raw)}"
        start = body.ordinals.start
        pods = []
        for ordinal in range(start, start + body.replicas):
            pod = f"{name}-{ordinal}"
            extra = {STATEFULSET_POD_NAME: pod, POD_INDEX: str(ordinal), REVISION_HASH: revision}
            spec = {"hostname": pod, "subdomain": body.serviceName}
            pods.append(_pod(doc, where, template, namespace, pod, {**labels, **extra}, spec))
        return pods
    if isinstance(workload, m.DaemonSetDoc):
        extra = {REVISION_HASH: template_hash(raw), TEMPLATE_GENERATION: "1"}
        on = [template.spec.nodeName] if template.spec.nodeName else nodes
        return [
            _pod(
                doc,
                where,
                template,
                namespace,
                generated_name(f"{name}-", f"{namespace}/{name}/{node}"),
                {**labels, **extra},
                {"nodeName": node},
            )
            for node in on
        ]
    replica_set = name
    if isinstance(workload, m.DeploymentDoc):
        pod_hash = template_hash(raw)
        replica_set = f"{name}-{pod_hash}"
        labels[POD_TEMPLATE_HASH] = pod_hash
    names: list[str] = []
    for index in range(body.replicas):
        attempt = 0
        while (pod := generated_name(f"{replica_set}-", f"{namespace}/{replica_set}/{index}/{attempt}")) in names:
            attempt += 1  # two indices drew the same suffix: draw again, as the API server would
        names.append(pod)
    return [_pod(doc, where, template, namespace, pod, labels, {}) for pod in names]


def _pod(
    doc: Document,
    where: Document,
    template: m.PodTemplate,
    namespace: str | None,
    name: str,
    labels: dict[str, str],
    spec: dict[str, Any],
) -> tuple[Document, m.PodDoc]:
    try:
        m.check_label(name)
    except ValueError as exc:
        raise spec_error(doc, ("metadata", "name"), f"its pods would be named {name!r}: {exc}") from None
    meta = m.ObjectMeta(name=name, namespace=namespace, labels=labels, annotations=template.metadata.annotations)
    body = template.spec.model_copy(update=spec)
    return where, m.PodDoc(apiVersion="v1", kind="Pod", metadata=meta, spec=body)


def _check_selector(doc: Document, selector: m.LabelSelectorDoc, labels: dict[str, str]) -> None:
    from podnet.plan.policy import selector_matches  # the one definition of selector semantics

    if not selector.matchLabels and not selector.matchExpressions:
        raise spec_error(doc, ("spec", "selector"), "an empty selector selects every pod: give matchLabels")
    if not selector_matches(selector.to_selector(), labels):
        raise spec_error(
            doc,
            (*TEMPLATE, "metadata", "labels"),
            "the selector does not select the template's labels (spec.selector must match them)",
        )

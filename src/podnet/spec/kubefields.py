"""Which fields of a document podnet reads, which it ignores, and which are mistakes.

A Kubernetes manifest from any project carries fields podnet has no use for (``image``,
``resources``, ``livenessProbe``, ``status``, ...). Those are accepted and dropped, each
reported once as a warning; the fields podnet reads keep their strict types. A field that
Kubernetes does not define is an error, as ``kubectl apply --validate=strict`` makes it, with
the closest real field suggested. The ``Cluster`` document, and everything else podnet
invents, is strict throughout: any field its model lacks is an error.

The tables below are the JSON field names of each Kubernetes type podnet models, taken from
the Go types of k8s.io/api (core/v1, apps/v1, networking/v1) and k8s.io/apimachinery
(meta/v1) at their July 2026 heads. Fields inside an ignored field are not examined.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel

from podnet.spec import models as m
from podnet.spec.yamlpos import Document, Path, field_path, spec_error


def _fields(names: str) -> frozenset[str]:
    return frozenset(names.split())


_OBJECT = "apiVersion kind metadata spec status"

KUBERNETES_FIELDS: dict[str, frozenset[str]] = {
    "ObjectMeta": _fields(
        "name generateName namespace selfLink uid resourceVersion generation creationTimestamp deletionTimestamp "
        "deletionGracePeriodSeconds labels annotations ownerReferences finalizers managedFields"
    ),
    "Pod": _fields(_OBJECT),
    "PodSpec": _fields(
        "volumes initContainers containers ephemeralContainers restartPolicy terminationGracePeriodSeconds "
        "activeDeadlineSeconds dnsPolicy nodeSelector serviceAccountName serviceAccount automountServiceAccountToken "
        "nodeName hostNetwork hostPID hostIPC shareProcessNamespace securityContext imagePullSecrets hostname "
        "subdomain affinity schedulerName tolerations hostAliases priorityClassName priority dnsConfig readinessGates "
        "runtimeClassName enableServiceLinks preemptionPolicy overhead topologySpreadConstraints setHostnameAsFQDN os "
        "hostUsers schedulingGates resourceClaims resources hostnameOverride schedulingGroup evictionResponders"
    ),
    "Container": _fields(
        "name image command args workingDir ports envFrom env resources resizePolicy restartPolicy "
        "restartPolicyRules volumeMounts volumeDevices livenessProbe readinessProbe startupProbe lifecycle "
        "terminationMessagePath terminationMessagePolicy imagePullPolicy securityContext stdin stdinOnce tty"
    ),
    "ContainerPort": _fields("name hostPort containerPort protocol hostIP"),
    "Service": _fields(_OBJECT),
    "ServiceSpec": _fields(
        "ports selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP "
        "loadBalancerSourceRanges externalName externalTrafficPolicy healthCheckNodePort publishNotReadyAddresses "
        "sessionAffinityConfig ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts loadBalancerClass "
        "internalTrafficPolicy trafficDistribution"
    ),
    "ServicePort": _fields("name protocol appProtocol port targetPort nodePort"),
    "SessionAffinityConfig": _fields("clientIP"),
    "ClientIPConfig": _fields("timeoutSeconds"),
    "Namespace": _fields(_OBJECT),
    "NetworkPolicy": _fields("apiVersion kind metadata spec"),
    "NetworkPolicySpec": _fields("podSelector ingress egress policyTypes"),
    "NetworkPolicyIngressRule": _fields("ports from"),
    "NetworkPolicyEgressRule": _fields("ports to"),
    "NetworkPolicyPeer": _fields("podSelector namespaceSelector ipBlock"),
    "NetworkPolicyPort": _fields("protocol port endPort"),
    "IPBlock": _fields("cidr except"),
    "LabelSelector": _fields("matchLabels matchExpressions"),
    "LabelSelectorRequirement": _fields("key operator values"),
    "PodTemplateSpec": _fields("metadata spec"),
    "Deployment": _fields(_OBJECT),
    "DeploymentSpec": _fields(
        "replicas selector template strategy minReadySeconds revisionHistoryLimit paused progressDeadlineSeconds"
    ),
    "ReplicaSet": _fields(_OBJECT),
    "ReplicaSetSpec": _fields("replicas minReadySeconds selector template"),
    "StatefulSet": _fields(_OBJECT),
    "StatefulSetSpec": _fields(
        "replicas selector template volumeClaimTemplates serviceName podManagementPolicy updateStrategy "
        "revisionHistoryLimit minReadySeconds persistentVolumeClaimRetentionPolicy ordinals"
    ),
    "StatefulSetOrdinals": _fields("start"),
    "DaemonSet": _fields(_OBJECT),
    "DaemonSetSpec": _fields("selector template updateStrategy minReadySeconds revisionHistoryLimit"),
    "List": _fields("apiVersion kind metadata items"),
}

# The Kubernetes type each of podnet's models reads. Models not listed are podnet's own: strict.
KUBERNETES_TYPE: dict[type[BaseModel], str] = {
    m.ObjectMeta: "ObjectMeta",
    m.TemplateMeta: "ObjectMeta",
    m.PodDoc: "Pod",
    m.PodBody: "PodSpec",
    m.Container: "Container",
    m.ContainerPort: "ContainerPort",
    m.ServiceDoc: "Service",
    m.ServiceBody: "ServiceSpec",
    m.ServicePortDoc: "ServicePort",
    m.AffinityConfig: "SessionAffinityConfig",
    m.ClientIPConfig: "ClientIPConfig",
    m.NamespaceDoc: "Namespace",
    m.NetworkPolicyDoc: "NetworkPolicy",
    m.NetworkPolicyBody: "NetworkPolicySpec",
    m.IngressRuleDoc: "NetworkPolicyIngressRule",
    m.EgressRuleDoc: "NetworkPolicyEgressRule",
    m.PolicyPeerDoc: "NetworkPolicyPeer",
    m.PolicyPortDoc: "NetworkPolicyPort",
    m.IPBlockDoc: "IPBlock",
    m.LabelSelectorDoc: "LabelSelector",
    m.SelectorRequirementDoc: "LabelSelectorRequirement",
    m.PodTemplate: "PodTemplateSpec",
    m.DeploymentDoc: "Deployment",
    m.DeploymentBody: "DeploymentSpec",
    m.ReplicaSetDoc: "ReplicaSet",
    m.ReplicaSetBody: "ReplicaSetSpec",
    m.StatefulSetDoc: "StatefulSet",
    m.StatefulSetBody: "StatefulSetSpec",
    m.Ordinals: "StatefulSetOrdinals",
    m.DaemonSetDoc: "DaemonSet",
    m.DaemonSetBody: "DaemonSetSpec",
    m.ListDoc: "List",
}


@dataclass(frozen=True)
class Ignored:
    """A Kubernetes field podnet dropped: where, and which (``Container.image``)."""

    doc: Document
    path: Path
    field: str  # TYPE.NAME

    def where(self) -> str:
        return f"{self.doc.file}:{self.doc.line_of(self.path)}: {field_path((*self.doc.prefix, *self.path))}"


def sort_fields(doc: Document, model: type[BaseModel]) -> tuple[Any, list[Ignored]]:
    """The document's data without the Kubernetes fields podnet ignores, and those fields.

    Raises the SpecError of the first field that is neither podnet's nor Kubernetes'.
    """
    ignored: list[Ignored] = []
    data = _sort(doc, doc.data, model, (), model in KUBERNETES_TYPE, ignored)
    return data, ignored


def _sort(doc: Document, data: Any, model: type[BaseModel], path: Path, lax: bool, ignored: list[Ignored]) -> Any:
    if not isinstance(data, dict):
        return data  # the model's own validation says what was expected
    kube = KUBERNETES_TYPE.get(model) if lax else None
    fields = _model_fields(model)
    out = {}
    for key, value in data.items():
        if key in fields:
            nested = fields[key]
            if nested is None:
                out[key] = value
            elif isinstance(value, list):
                out[key] = [
                    _sort(doc, v, nested, (*path, key, i), kube is not None, ignored) for i, v in enumerate(value)
                ]
            else:
                out[key] = _sort(doc, value, nested, (*path, key), kube is not None, ignored)
        elif kube is not None and key in KUBERNETES_FIELDS[kube]:
            ignored.append(Ignored(doc, (*path, key), f"{kube}.{key}"))
        else:
            raise spec_error(doc, (*path, key), _unknown(key, kube, fields))
    return out


LISTED_FIELDS = 8  # a type with more fields than this is named, with the closest field, not listed


def _unknown(key: str, kube: str | None, fields: dict[str, type[BaseModel] | None]) -> str:
    known = sorted(fields if kube is None else KUBERNETES_FIELDS[kube])
    if kube is None or len(known) <= LISTED_FIELDS:
        return f"unknown field (expected one of: {', '.join(known)})"
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown field: a Kubernetes {kube} has no field {key!r}" + (
        f" (did you mean {close[0]!r}?)" if close else ""
    )


@functools.cache
def _model_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Each field as written in YAML (its alias), with the model of its value when it has one."""
    return {(info.alias or name): _nested_model(info.annotation) for name, info in model.model_fields.items()}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def warnings(ignored: list[Ignored]) -> list[str]:
    """One line per ignored field name: where it first appears, and how often it does."""
    first: dict[str, Ignored] = {}
    count: dict[str, int] = {}
    for item in ignored:
        first.setdefault(item.field, item)
        count[item.field] = count.get(item.field, 0) + 1
    lines = []
    for name, item in first.items():
        where = item.where()
        more = count[name] - 1
        lines.append(
            f"{where}: ignored: podnet does not use {name}"
            + (f" (and in {more} more place{'s' if more > 1 else ''})" if more else "")
        )
    return lines

"""Workloads on the real kernel: examples/workloads.yaml's Deployment, StatefulSet and DaemonSet run
as the pods Kubernetes would name, resolve as Kubernetes' DNS says, and scale on the next ``up``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import names
from podnet.kernel import netns
from podnet.spec.workloads import SAFE_ALPHABET
from tests.conftest import Cluster, assert_observed_equals_plan, example_cluster, run_cli, status_json

pytestmark = pytest.mark.root

SUFFIX = f"[{SAFE_ALPHABET}]{{5}}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "workloads.yaml", "w") as c:
        yield c


def pods(c: Cluster) -> dict[str, dict]:
    return {f"{p['namespace']}/{p['name']}": p for p in status_json(c.name)["pods"]}


def test_workloads_run_as_the_pods_kubernetes_names(work: Cluster) -> None:
    running = pods(work)
    web = sorted(k for k in running if k.startswith("shop/web-"))
    assert len(web) == 3
    assert all(re.fullmatch(f"shop/web-[{SAFE_ALPHABET}]+-{SUFFIX}", k) for k in web), web
    assert sorted(k for k in running if k.startswith("shop/db-")) == ["shop/db-0", "shop/db-1", "shop/db-2"]
    agents = [p for k, p in running.items() if re.fullmatch(f"kube-system/agent-{SUFFIX}", k)]
    assert sorted(p["node"] for p in agents) == ["node-1", "node-2", "node-3"]
    assert all(p["ready"] for p in running.values())
    assert_observed_equals_plan(work.name)


def test_a_statefulset_pod_resolves_from_another_pod(work: Cluster) -> None:
    db1 = work.pod("shop/db-1")["ip"]
    for name in ("db-1.db.shop.svc.cluster.local", "db-1.db"):  # the search path completes the short form
        out = work.exec("shop/shell", "getent", "hosts", name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == db1
    # and it answers there: the pod serves its container port
    assert work.exec("shop/shell", "nc", "-z", "-w", "3", "db-1.db.shop.svc.cluster.local", "5432").returncode == 0


def test_a_pods_hostname_and_subdomain_resolve_from_another_pod(work: Cluster) -> None:
    out = work.exec("shop/shell", "getent", "hosts", "cache.cache.shop.svc.cluster.local")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == work.pod("shop/cache-5d7f8")["ip"]
    assert work.exec("shop/shell", "nc", "-z", "-w", "3", "cache.cache.shop.svc.cluster.local", "6379").returncode == 0


def test_a_deployment_serves_behind_its_service(work: Cluster) -> None:
    served = {work.curl("shop/shell", "http://web.shop/hostname") for _ in range(12)}
    assert served <= {k.split("/")[1] for k in pods(work) if k.startswith("shop/web-")}
    assert served


def test_replicas_scale_up_and_down_on_the_next_up(make_cluster, tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parent.parent / "examples" / "workloads.yaml").read_text()
    c = make_cluster(lambda name: example.replace("metadata: {name: work}", f"metadata: {{name: {name}}}"))
    c.up()
    before = pods(c)
    web = sorted(k for k in before if k.startswith("shop/web-"))

    c.write(c.file.read_text().replace("replicas: 3", "replicas: 1"))
    assert c.up()["changes"] > 0
    after = pods(c)
    assert sorted(k for k in after if k.startswith("shop/db-")) == ["shop/db-0"]  # the highest ordinals go
    assert [k for k in after if k.startswith("shop/web-")] == [k for k in web if k in after]
    assert len([k for k in after if k.startswith("shop/web-")]) == 1
    for gone in set(before) - set(after):
        ns, name = gone.split("/")
        assert not netns.exists(names.pod_netns(c.name, ns, name)), gone
    assert {k: after[k]["ip"] for k in after} == {k: before[k]["ip"] for k in after}  # nothing else moved
    assert c.up()["changes"] == 0

    c.write(c.file.read_text().replace("replicas: 1", "replicas: 4"))
    c.up()
    grown = pods(c)
    assert sorted(k for k in grown if k.startswith("shop/db-")) == [f"shop/db-{i}" for i in range(4)]
    assert len([k for k in grown if k.startswith("shop/web-")]) == 4
    assert c.up()["changes"] == 0
    assert_observed_equals_plan(c.name)


def test_up_from_several_files_and_stdin_then_status_and_trace(make_cluster, tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parent.parent / "examples" / "workloads.yaml").read_text()
    cluster_doc, rest = example.split("\n---\n", 1)
    c = make_cluster(lambda name: cluster_doc.replace("metadata: {name: work}", f"metadata: {{name: {name}}}"))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    namespace, workloads = rest.split("\n---\n", 1)
    (manifests / "00-namespace.yaml").write_text(namespace + "\n")
    (manifests / "10-workloads.yml").write_text(workloads)

    warned = run_cli("up", "-f", str(c.file), "-f", str(manifests), "--dry-run")
    assert warned.returncode == 0, warned.stderr
    assert "ignored: podnet does not use Container.image" in warned.stderr
    assert len([line for line in warned.stderr.splitlines() if "Container.image" in line]) == 1

    up = subprocess.run(
        [sys.executable, "-m", "podnet", "up", "-q", "-f", str(c.file), "-f", "-"],
        input=(manifests / "00-namespace.yaml").read_text() + "---\n" + workloads,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert up.returncode == 0, up.stderr
    assert up.stderr == ""  # -q: no warnings
    assert "shop/db-0" in pods(c)
    trace = run_cli("trace", "-c", c.name, "shop/shell", "shop/db-0", "--port", "5432", "-o", "json")
    assert trace.returncode == 0, trace.stdout + trace.stderr
    assert json.loads(trace.stdout)["verdict"] == "delivered"
    again = run_cli("up", "-f", str(c.file), "-f", str(manifests), "-o", "json")
    assert again.returncode == 0, again.stderr
    assert '"changes": 0' in again.stdout

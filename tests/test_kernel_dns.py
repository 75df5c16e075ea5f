"""Cluster DNS on the real kernel, asked by real clients (dig, the C library) inside pods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from podnet.runtime import process
from podnet.store import cluster_dir
from tests.conftest import Cluster, example_cluster, status_json

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with example_cluster(tmp_path_factory, "services.yaml", "d") as c:
        yield c


def dig(c: Cluster, *args: str) -> str:
    proc = c.exec("shop/shell", "dig", "+short", "+time=2", "+tries=1", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def dig_status(c: Cluster, name: str) -> str:
    out = c.exec("shop/shell", "dig", "+time=2", "+tries=1", name).stdout
    return out.split("status: ", 1)[1].split(",", 1)[0]


def vip(c: Cluster, name: str) -> str:
    return next(s["cluster_ip"] for s in status_json(c.name)["services"] if s["name"] == name)


def test_pods_get_a_kubernetes_resolv_conf(dns: Cluster) -> None:
    text = dns.exec("shop/shell", "cat", "/etc/resolv.conf").stdout
    assert text.splitlines() == [
        "search shop.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.96.0.10",
        "options ndots:5",
    ]


def test_service_a_record(dns: Cluster) -> None:
    assert dig(dns, "web.shop.svc.cluster.local") == vip(dns, "web")
    assert dig(dns, "kube-dns.kube-system.svc.cluster.local") == "10.96.0.10"


def test_headless_service_returns_the_endpoints(dns: Cluster) -> None:
    pods = {dns.pod(f"shop/web-{i}")["ip"] for i in (1, 2, 3)}
    assert set(dig(dns, "web-headless.shop.svc.cluster.local").split()) == pods


def test_srv_records_for_named_ports(dns: Cluster) -> None:
    srv = dig(dns, "SRV", "_http._tcp.web.shop.svc.cluster.local")
    assert srv.split()[2:] == ["80", "web.shop.svc.cluster.local."]
    assert dig(dns, "SRV", "_dns._udp.web.shop.svc.cluster.local").split()[2] == "53"


def test_pod_records_and_ptr(dns: Cluster) -> None:
    ip = dns.pod("shop/web-1")["ip"]
    dashed = ip.replace(".", "-")
    assert dig(dns, f"{dashed}.shop.pod.cluster.local") == ip
    assert dig(dns, "-x", ip) == f"{dashed}.shop.pod.cluster.local."
    assert dig(dns, "-x", vip(dns, "web")) == "web.shop.svc.cluster.local."


def test_unknown_names_nxdomain_inside_refused_outside(dns: Cluster) -> None:
    assert dig_status(dns, "nope.shop.svc.cluster.local") == "NXDOMAIN"
    assert dig_status(dns, "example.org") == "REFUSED"  # no upstreams: never an open resolver


def test_c_library_resolver_uses_the_search_path(dns: Cluster) -> None:
    out = dns.exec("shop/shell", "getent", "hosts", "web").stdout  # web.shop.svc.cluster.local
    assert out.split()[0] == vip(dns, "web")
    out = dns.exec("shop/shell", "getent", "hosts", "kube-dns.kube-system").stdout
    assert out.split()[0] == "10.96.0.10"
    assert dns.curl("shop/shell", "http://web.shop/hostname") in {"web-1", "web-2", "web-3"}


def test_records_follow_changes_without_a_restart(dns: Cluster) -> None:
    pid = process.running_pid(cluster_dir(dns.name), dns.name, process.DNS)
    text = (
        dns.file.read_text()
        + """---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 81, targetPort: 8080}]
"""
    )
    dns.write(text)
    result = dns.up()
    assert result["summary"].get("reload_process") == 1
    assert dig(dns, "late.shop.svc.cluster.local") == vip(dns, "late")
    assert process.running_pid(cluster_dir(dns.name), dns.name, process.DNS) == pid

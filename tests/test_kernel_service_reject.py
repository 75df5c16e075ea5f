"""A connection to a Service address that nothing serves fails as Kubernetes says, on every
node of every topology: refused at once when the Service has no endpoints or lacks the port,
dropped when no Service has the address. From a pod and from the node itself, TCP and UDP.

Kubernetes' e2e test "should be rejected when no endpoints exist" expects ``REFUSED`` from
``agnhost connect``; kube-proxy's nftables mode drops traffic to unallocated ClusterIPs and
rejects traffic to ports a ClusterIP does not serve. A node without a default route must
still route the service CIDR, or the kernel answers ENETUNREACH before any rule runs.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
from collections.abc import Iterator

import pytest

from podnet import cluster as usecases
from podnet.kernel import netns
from tests import sctp
from tests.conftest import Cluster, assert_observed_equals_plan, leftovers, unique_name

pytestmark = pytest.mark.root

NOBODY = "10.96.0.103"  # a Service without endpoints
WEB = "10.96.0.104"  # a Service whose only endpoint is on the other node
UNALLOCATED = "10.96.0.200"
NODE_LISTENER = 7777  # a port the client's node listens on, to show what a VIP must not reach

PROBE = r"""
import errno, json, socket, sys
out = []
for spec in sys.argv[1:]:
    proto, ip, port = spec.split(":")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(1.0)
    try:
        s.connect((ip, int(port)))
        if proto == "tcp":
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            out.append(s.recv(4096).decode().rsplit("\r\n", 1)[-1])
        else:
            s.send(b"hostname")
            out.append(s.recv(4096).decode())
    except TimeoutError:
        out.append("timeout")
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc)))
    finally:
        s.close()
print(json.dumps(out))
"""

EXPECTED = {
    f"tcp:{NOBODY}:80": "ECONNREFUSED",  # no endpoints: TCP reset
    f"udp:{NOBODY}:53": "ECONNREFUSED",  # no endpoints: ICMP port unreachable
    f"tcp:{WEB}:80": "server",  # an endpoint on the other node answers
    f"udp:{WEB}:53": "server",
    f"tcp:{WEB}:81": "ECONNREFUSED",  # a port the Service does not have
    f"tcp:{WEB}:{NODE_LISTENER}": "ECONNREFUSED",  # ... never the node's own listener
    f"tcp:{UNALLOCATED}:{NODE_LISTENER}": "timeout",  # no Service has the address: dropped
}

EDGE = """    routers: [{name: edge, subnets: [underlay], uplink: internet}]
  external:
    name: internet
    cidr: 203.0.113.0/24
    hosts: [{name: ext, address: 203.0.113.10}]
"""


def cluster_text(name: str, backend: str, edge: bool) -> str:
    underlay = "  underlay:\n    cidr: 172.31.0.0/24\n" + (EDGE if edge else "")
    return f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  backend: {backend}
{underlay}  nodes: [{{name: node-1}}, {{name: node-2}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node-1
  containers: [{{name: main}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, labels: {{app: web}}}}
spec:
  nodeName: node-2
  containers:
  - name: main
    ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}, {{containerPort: 9000, protocol: SCTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nobody}}
spec:
  clusterIP: {NOBODY}
  selector: {{app: none}}
  ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}, {{name: sig, port: 9000, protocol: SCTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: {WEB}
  selector: {{app: web}}
  ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}, {{name: sig, port: 9000, protocol: SCTP}}]
"""


TOPOLOGIES = [("host-gw", False), ("vxlan", False), ("bgp", False), ("host-gw", True)]


@pytest.fixture(scope="module", params=TOPOLOGIES, ids=[f"{b}{'-edge' if e else '-no-edge'}" for b, e in TOPOLOGIES])
def topo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    backend, edge = request.param
    name = unique_name("rj")
    c = Cluster(name, tmp_path_factory.mktemp("reject") / "cluster.yaml")
    c.write(cluster_text(name, backend, edge))
    try:
        c.up()
        if backend == "bgp":
            from tests.test_kernel_bgp import converge

            converge(c)
        yield c
    finally:
        usecases.down(name)
        assert leftovers(name) == []


def probe(c: Cluster, source: str) -> dict[str, str]:
    proc = c.exec(source, sys.executable, "-c", PROBE, *EXPECTED)
    assert proc.returncode == 0, proc.stderr
    return dict(zip(EXPECTED, json.loads(proc.stdout), strict=True))


@pytest.fixture
def node_listener(topo: Cluster) -> Iterator[None]:
    """A TCP listener in node-1's namespace on every address: what a VIP must never reach."""
    with netns.entered(usecases.exec_target(topo.name, "node-1")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", NODE_LISTENER))
    sock.listen(8)
    try:
        yield
    finally:
        sock.close()


@pytest.mark.parametrize("source", ["client", "node-1"])
def test_service_addresses_nothing_serves_fail_as_kubernetes_says(topo: Cluster, source: str, node_listener) -> None:
    assert probe(topo, source) == EXPECTED


def test_the_service_route_is_planned_and_observed(topo: Cluster) -> None:
    assert_observed_equals_plan(topo.name)


SPORTS = itertools.count(30_000)


@pytest.mark.parametrize("source", ["client", "node-1"])
def test_sctp_to_a_service_without_endpoints_is_refused_and_with_one_dnated(topo: Cluster, source: str) -> None:
    """No SCTP sockets here: raw INITs. No endpoints: ICMP port unreachable at once (nft's
    reject); an endpoint: the INIT arrives there, DNATed."""
    src = usecases.exec_target(topo.name, source)
    server = usecases.exec_target(topo.name, "server")
    sport = next(SPORTS)
    with sctp.Receiver(src, socket.IPPROTO_ICMP) as errors:
        sctp.send_init(src, NOBODY, 9000, sport)
        refused = errors.wait_for(sport)  # an ICMP port unreachable about this INIT
    assert refused is not None and (refused.dst, refused.dport) == (NOBODY, 9000)
    sport = next(SPORTS)
    with sctp.Receiver(server) as arrivals:
        sctp.send_init(src, WEB, 9000, sport)
        got = arrivals.wait_for(sport)
    assert got is not None and (got.dst, got.dport) == (topo.pod("server")["ip"], 9000)

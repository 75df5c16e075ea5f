"""Fixtures shared by the tests.

Kernel tests run as root against the real kernel, each in its own uniquely named cluster.
The ``cluster`` fixture fails the test if any namespace, process or state of its cluster
survives ``down``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet import cluster as usecases
from podnet import names, store
from podnet.kernel import netns, nftcache
from podnet.runtime import bird, process

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test's clusters keep their state in a temporary directory, never /var/lib/podnet."""
    path = tmp_path_factory.mktemp("podnet-state")
    old = os.environ.get("PODNET_STATE_DIR")
    os.environ["PODNET_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PODNET_STATE_DIR", None)
    else:
        os.environ["PODNET_STATE_DIR"] = old


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def cluster_yaml(name: str, nodes: int = 2, pods: list[dict] | None = None, extra: str = "") -> str:
    """A host-gw cluster file. pods: [{"name", "namespace", "node", "ports": [(port, proto)]}]."""
    node_list = ", ".join(f"{{name: node-{i + 1}}}" for i in range(nodes))
    docs = [
        f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  backend: host-gw
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{node_list}]
{extra}"""
    ]
    namespaces = sorted({p.get("namespace", "default") for p in pods or []} - {"default"})
    for ns in namespaces:
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")
    for p in pods or []:
        ports = ", ".join(f"{{containerPort: {port}, protocol: {proto}}}" for port, proto in p.get("ports", []))
        node = f"\n  nodeName: {p['node']}" if p.get("node") else ""
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: {p["name"]}, namespace: {p.get("namespace", "default")}}}
spec:{node}
  containers:
  - name: main
    ports: [{ports}]
"""
        )
    return "---\n".join(docs)


def run_cli(
    *args: str, check: bool = False, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "podnet", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podnet {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (exit 1 or 2, no traceback, nothing else on stderr)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), (
        f"exit {proc.returncode}:\n{proc.stderr}"
    )
    return lines[0]


def leftovers(name: str) -> list[str]:
    """Everything of cluster ``name`` that still exists on this machine."""
    found = [f"netns {n}" for n in netns.list_prefixed(names.cluster_prefix(name))]
    found += [f"process {pid}" for pid in process.find(name)]
    found += [f"bird {pid} in {ns}" for pid, ns in bird.find(name).items()]
    found += [f"/etc/netns/{n}" for n in netns.list_etc_prefixed(names.cluster_prefix(name))]
    found += [f"nft record {n}" for n in nftcache.list_prefixed(names.cluster_prefix(name))]
    state = Path(os.environ["PODNET_STATE_DIR"]) / name
    if state.exists():
        found.append(f"state dir {state}")
    found += [f"claim {p}" for p in (store.owner_file(name), store.lock_file(name)) if p.exists()]
    return found


@dataclass
class Cluster:
    name: str
    file: Path

    def write(self, text: str) -> None:
        self.file.write_text(text)

    def up(self) -> dict:
        return usecases.up(str(self.file)).to_json()

    def down(self) -> None:
        usecases.down(self.name)

    def status(self) -> dict:
        return usecases.status(self.name)

    def exec(self, target: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        ns = usecases.exec_target(self.name, target)
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)

    def curl(self, source: str, url: str) -> str:
        proc = self.exec(source, "curl", "-s", "--max-time", "5", url)
        assert proc.returncode == 0, f"curl {url} from {source} failed: {proc.returncode} {proc.stderr}"
        return proc.stdout

    def udp(self, source: str, ip: str, port: int, message: str) -> str:
        """One datagram from inside ``source``, and the answer (empty when none came in 2 s)."""
        proc = self.exec(source, sys.executable, "-c", UDP_CLIENT, ip, str(port), message)
        return proc.stdout

    def pod(self, key: str) -> dict:
        ns, name = key.split("/") if "/" in key else ("default", key)
        return next(p for p in self.status()["pods"] if p["namespace"] == ns and p["name"] == name)


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
try:
    sys.stdout.write(s.recv(65535).decode())
except TimeoutError:
    pass
"""


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Factory for clusters that are torn down, and checked for leftovers, after the test."""
    _require_root()
    made: list[Cluster] = []

    def factory(text_for_name) -> Cluster:
        name = unique_name()
        c = Cluster(name, tmp_path / f"{name}.yaml")
        c.write(text_for_name(name))
        made.append(c)
        return c

    yield factory
    problems = []
    for c in made:
        usecases.down(c.name)
        left = leftovers(c.name)
        if left:
            problems.append(f"{c.name}: {left}")
    assert not problems, f"cluster left things behind after down: {problems}"


def status_json(name: str) -> dict:
    return json.loads(run_cli("status", "-c", name, "-o", "json", check=True).stdout)


def assert_observed_equals_plan(name: str) -> None:
    """Every namespace podnet manages holds exactly what the plan says, and nothing else."""
    from podnet.cluster import observe_cluster

    _, p = usecases.load_applied(name)
    observed, extra = observe_cluster(name, p.state)
    assert extra == []
    assert set(observed.namespaces) == set(p.state.namespaces)
    for ns_name, want in p.state.namespaces.items():
        have = observed.namespaces[ns_name]
        assert set(have.links) == set(want.links), ns_name
        for link_name, link in want.links.items():
            assert have.links[link_name].satisfies(link), f"{ns_name}: {have.links[link_name]} != {link}"
        assert have.addresses == want.addresses, ns_name
        # Routes BIRD installed (backend bgp) are BGP's, not the plan's: tests/test_kernel_bgp.py
        # compares them with what plan.bgp expects once BGP has converged.
        assert {k: r for k, r in have.routes.items() if r.proto != "bird"} == want.routes, ns_name
        assert have.neighbours == want.neighbours, ns_name
        assert have.fdb == want.fdb, ns_name
        assert {k: have.sysctls.get(k) for k in want.sysctls} == want.sysctls, ns_name
        assert have.nft == want.nft, ns_name
    assert {k: v.digest for k, v in observed.processes.items()} == {k: v.digest for k, v in p.state.processes.items()}


def example_text(example: str, name: str) -> str:
    """An example cluster file with its Cluster renamed (tests never share a cluster name)."""
    text = (REPO / "examples" / example).read_text()
    renamed, n = re.subn(r"(kind: Cluster\nmetadata: \{name: )[a-z0-9-]+\}", rf"\g<1>{name}}}", text, count=1)
    assert n == 1, f"examples/{example} has no 'metadata: {{name: ...}}' after 'kind: Cluster'"
    return renamed


@contextmanager
def example_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    example: str,
    prefix: str,
    ready: Callable[[Cluster], object] | None = None,
) -> Iterator[Cluster]:
    """One of examples/*.yaml, up under a unique name; down, and checked for leftovers, after."""
    name = unique_name(prefix)
    c = Cluster(name, Path(tmp_path_factory.mktemp(prefix)) / example)
    c.write(example_text(example, name))
    try:
        c.up()
        if ready is not None:
            ready(c)
        yield c
    finally:
        usecases.down(name)
        assert leftovers(name) == []

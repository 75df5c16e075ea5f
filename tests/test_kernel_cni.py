"""podnet-cni and podnet agent on the real kernel, driven the way a container runtime drives them.

Every "host" is a network namespace created here (``podnet_cnitest<hex>_*``), joined to the
others by a switch namespace; an agent runs inside each host (``ip netns exec``), and every
plugin, ours and the chained reference ones, runs in its host's namespace as a runtime on that
host would run it. The root namespace is never touched: the lab's fixture checks it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podnet.cni import install
from podnet.cni.ipam import Ipam, pool_of
from podnet.cni.protocol import result_problems
from podnet.kernel import netns
from tests.rootsnap import differences, snapshot

pytestmark = pytest.mark.root

CNI_DIR = "/usr/lib/cni"
NETWORK = "podnettest"
EXTERNAL_IP = "172.31.0.200"  # a host on the underlay that is neither a node nor a pod

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\\n")
    c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode().strip())
"""


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``ok`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def cluster_yaml(
    name: str, backend: str = "host-gw", mask: int = 24, nodes: int = 2, cidr: str = "10.244.0.0/16"
) -> str:
    node_list = ", ".join(f"{{name: node-{i + 1}}}" for i in range(nodes))
    return f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  podCIDR: {cidr}
  nodeCIDRMaskSize: {mask}
  serviceCIDR: 10.96.0.0/12
  backend: {backend}
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{node_list}]
"""


@dataclass
class Result:
    rc: int
    out: dict | None
    raw: str

    @property
    def ip(self) -> str:
        assert self.out is not None, self.raw
        return self.out["ips"][-1]["address"].split("/")[0]


@dataclass
class Agent:
    lab: Lab
    node: str
    host: str  # its namespace
    config: Path
    socket: str
    state_dir: Path
    proc: subprocess.Popen | None = None
    log_file: Path | None = None

    def start(self) -> None:
        self.log_file = self.lab.tmp / f"agent-{self.node}-{uuid.uuid4().hex[:4]}.log"
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host, sys.executable, "-m", "podnet", "agent", "--node", self.node,
                 "--config", str(self.config), "--socket", self.socket, "--state-dir", str(self.state_dir)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(f"agent {self.node}", lambda: self._connects() or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, f"agent {self.node} exited {self.proc.returncode}: {self.log}"

    def _connects(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
        except OSError:
            return False
        finally:
            s.close()
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file and self.log_file.exists() else ""

    def attachments(self) -> list:
        ipam = Ipam(self.state_dir / "ipam.db", [])
        try:
            return ipam.all()
        finally:
            ipam.close()


class Lab:
    """Namespaces, agents and processes of one group of tests; all removed by :meth:`close`."""

    def __init__(self) -> None:
        self.prefix = f"podnet_cnitest{uuid.uuid4().hex[:8]}_"
        self.tmp = Path(tempfile.mkdtemp(prefix="podnet-cnitest-"))
        self.namespaces: list[str] = []
        self.agents: list[Agent] = []
        self.procs: list[subprocess.Popen] = []
        self.plugin = install.install(NETWORK, str(self.tmp / "bin"), str(self.tmp / "conf"), "/unused")["plugin"]
        self._containers = 0
        self.switch = self.netns("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def netns(self, short: str) -> str:
        name = self.prefix + short
        netns.create(name)
        self.namespaces.append(name)
        return name

    def plug(self, short: str, ip: str) -> str:
        """A namespace on the underlay switch, its uplink ``eth0`` holding ``ip``."""
        name = self.netns(short)
        port = f"p{len(self.namespaces)}"
        sh("ip", "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def agent(self, node: str, host: str, cluster: str) -> Agent:
        config = self.tmp / f"cluster-{len(self.agents)}.yaml"
        config.write_text(cluster)
        agent = Agent(self, node, host, config, str(self.tmp / "run" / f"{node}-{host[-6:]}.sock"),
                      self.tmp / "state" / f"{node}-{host[-6:]}")  # fmt: skip
        self.agents.append(agent)
        agent.start()
        return agent

    def container(self) -> str:
        self._containers += 1
        return self.netns(f"c{self._containers}")

    def cni(
        self,
        agent: Agent,
        command: str,
        container: str | None = None,
        cid: str | None = None,
        ifname: str = "eth0",
        version: str = "1.1.0",
        env: dict | None = None,
        **conf: object,
    ) -> Result:
        """Run podnet-cni in the agent's host, as the runtime there would."""
        full_conf = {"cniVersion": version, "name": NETWORK, "type": "podnet-cni", "agentSocket": agent.socket, **conf}
        full_env = {"CNI_COMMAND": command, "CNI_PATH": CNI_DIR, "CNI_IFNAME": ifname}
        if container is not None:
            full_env["CNI_NETNS"] = netns.path(container)
            full_env["CNI_CONTAINERID"] = cid or container.removeprefix(self.prefix)
        elif cid is not None:
            full_env["CNI_CONTAINERID"] = cid
        full_env.update(env or {})
        return self.exec(agent.host, [self.plugin], full_conf, full_env)

    def exec(self, host: str, argv: list[str], conf: dict, env: dict) -> Result:
        proc = subprocess.run(
            ["nsenter", f"--net={netns.path(host)}", *argv],
            input=json.dumps(conf), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        try:
            out = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            out = None
        return Result(proc.returncode, out, proc.stdout + proc.stderr)

    def serve(self, ns: str, port: int) -> None:
        """A TCP server in ``ns`` that answers every connection with the client's address."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER, str(port)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def ask(self, ns: str, ip: str, port: int) -> str:
        """Connect from ``ns`` to ip:port; what the server said (who it saw), or '' on failure."""
        proc = sh("ip", "netns", "exec", ns, "python3", "-c", CLIENT, ip, str(port), check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def ping(self, ns: str, ip: str) -> bool:
        return sh("ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip, check=False).returncode == 0

    def close(self) -> list[str]:
        problems = []
        for proc in self.procs:
            with_suppress_kill(proc)
        for agent in self.agents:
            agent.stop()
        for name in netns.list_prefixed(self.prefix):
            netns.delete(name)
        left = netns.list_prefixed(self.prefix)
        if left:
            problems.append(f"namespaces left: {left}")
        listed = sh("ip", "netns", "list").stdout
        if self.prefix in listed:
            problems.append("ip netns list still shows the lab's namespaces")
        running = [a.node for a in self.agents if a.proc is not None]
        if running:
            problems.append(f"agents still running: {running}")
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)
        return problems


def with_suppress_kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def host_links(host: str) -> list[dict]:
    return json.loads(sh("ip", "-n", host, "-j", "-d", "link", "show").stdout)


def bridge_ports(host: str) -> list[str]:
    return [link["ifname"] for link in host_links(host) if link.get("master") == "cni0"]


@pytest.fixture(scope="module")
def root_untouched() -> Iterator[None]:
    before = snapshot()
    yield
    after = snapshot()
    changed = {k: v for k, v in differences(before, after).items() if k != "netns"}  # others' tests add theirs
    assert not changed, f"the root namespace changed: {list(changed)}"


@dataclass
class Cluster:
    lab: Lab
    hosts: dict[str, str] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    external: str = ""


@pytest.fixture(scope="module")
def cluster(root_untouched: None) -> Iterator[Cluster]:
    """Two host-gw nodes and an external host on one underlay switch, an agent on each node."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    lab = Lab()
    try:
        c = Cluster(lab)
        text = cluster_yaml(f"cni{lab.prefix[14:22]}")
        for node, ip in (("node-1", "172.31.0.2"), ("node-2", "172.31.0.3")):
            c.hosts[node] = lab.plug(node, ip)
        c.external = lab.plug("ext", EXTERNAL_IP)
        for node, host in c.hosts.items():
            c.agents[node] = lab.agent(node, host, text)
        yield c
    finally:
        problems = lab.close()
        assert not problems, problems


# --- the node ------------------------------------------------------------------------------------


def test_node_is_set_up_as_the_cluster_file_says(cluster: Cluster) -> None:
    host = cluster.hosts["node-1"]
    cni0 = json.loads(sh("ip", "-n", host, "-j", "addr", "show", "cni0").stdout)[0]
    assert cni0["address"] == "0a:58:0a:f4:00:01"
    assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"] if a["family"] == "inet"] == [("10.244.0.1", 24)]
    routes = json.loads(sh("ip", "-n", host, "-j", "route", "show", "10.244.1.0/24").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("172.31.0.3", "eth0")]  # host-gw via node-2
    assert sh("ip", "netns", "exec", host, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    table = sh("ip", "netns", "exec", host, "nft", "list", "table", "ip", "podnet").stdout
    egress = [line for line in table.splitlines() if "egress" in line]
    assert len(egress) == 1 and "ip saddr 10.244.0.0/16" in egress[0] and "masquerade" in egress[0], table
    assert "10.96.0.10" not in table and "dnat to" not in table  # no Services under a runtime (the plan's kube-dns)
    assert "10.244.0.2" not in {a.ip for a in cluster.agents["node-1"].attachments()}  # the plan's CoreDNS pod's


# --- ADD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_wires_the_container(cluster: Cluster, version: str) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-1"], cluster.hosts["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c, version=version)
    assert res.rc == 0, res.raw
    assert result_problems(res.out, version) == []
    host_if, eth0 = res.out["interfaces"]
    assert eth0 == {
        "name": "eth0",
        "mac": eth0["mac"],
        "sandbox": netns.path(c),
        **({"mtu": 1500} if version == "1.1.0" else {}),
    }
    ip = res.ip
    assert ip.startswith("10.244.0.") and res.out["ips"][0]["gateway"] == "10.244.0.1"

    link = json.loads(sh("ip", "-n", c, "-j", "addr", "show", "eth0").stdout)[0]
    assert link["address"] == eth0["mac"] == "0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
    assert "UP" in link["flags"] and link["mtu"] == 1500
    assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"} == {(ip, 24)}
    routes = json.loads(sh("ip", "-n", c, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("10.244.0.1", "eth0")]
    assert host_if["name"] in bridge_ports(host)
    assert lab.ping(c, "10.244.0.1")


def test_containers_on_one_node_talk_over_tcp(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    a, b = lab.container(), lab.container()
    ip_a, ip_b = lab.cni(agent, "ADD", a).ip, lab.cni(agent, "ADD", b).ip
    lab.serve(a, 7000)
    assert lab.ask(b, ip_a, 7000) == ip_b


def test_containers_on_two_nodes_talk_with_their_own_addresses(cluster: Cluster) -> None:
    lab = cluster.lab
    a, b = lab.container(), lab.container()
    ip_a = lab.cni(cluster.agents["node-1"], "ADD", a).ip
    ip_b = lab.cni(cluster.agents["node-2"], "ADD", b).ip
    assert ip_b.startswith("10.244.1.")
    lab.serve(a, 7001)
    assert lab.ask(b, ip_a, 7001) == ip_b  # host-gw: routed, not NATed


def test_egress_leaves_with_the_node_address(cluster: Cluster) -> None:
    lab = cluster.lab
    c = lab.container()
    assert lab.cni(cluster.agents["node-1"], "ADD", c).rc == 0
    lab.serve(cluster.external, 7002)
    assert lab.ask(c, EXTERNAL_IP, 7002) == "172.31.0.2"


def test_add_again_keeps_the_address(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    c = lab.container()
    first = lab.cni(agent, "ADD", c)
    again = lab.cni(agent, "ADD", c)
    assert again.rc == 0, again.raw
    assert again.ip == first.ip
    assert lab.ping(c, "10.244.0.1")


def test_add_into_a_missing_namespace_is_unknown_container(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    before = len(agent.attachments())
    res = lab.cni(agent, "ADD", cid="ghost", env={"CNI_NETNS": f"/run/netns/{lab.prefix}nope"})
    assert res.rc == 1 and res.out["code"] == 3, res.raw
    assert len(agent.attachments()) == before


def test_add_by_proc_pid_path(cluster: Cluster) -> None:
    """Runtimes may name the namespace by a process in it rather than by a pin under /run/netns."""
    lab, agent = cluster.lab, cluster.agents["node-1"]
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"], start_new_session=True)
    lab.procs.append(proc)
    path = f"/proc/{proc.pid}/ns/net"
    wait_for("the process to have its namespace", lambda: os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino)
    res = lab.cni(agent, "ADD", cid="by-pid", env={"CNI_NETNS": path})
    assert res.rc == 0, res.raw
    assert res.out["interfaces"][1]["sandbox"] == path
    ping = sh("nsenter", f"--net={path}", "ping", "-c1", "-W2", "10.244.0.1", check=False)
    assert ping.returncode == 0, ping.stdout
    assert lab.cni(agent, "DEL", cid="by-pid", env={"CNI_NETNS": path}).rc == 0


def test_add_into_something_that_is_not_a_container_namespace(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    plain = lab.tmp / "not-a-netns"
    plain.write_text("")
    for path, words in ((str(plain), "not a network namespace"), (netns.path(agent.host), "own namespace")):
        res = lab.cni(agent, "ADD", cid="odd", env={"CNI_NETNS": path})
        assert res.rc == 1 and res.out["code"] == 4 and words in res.out["msg"], res.raw
    assert "odd" not in {a.container_id for a in agent.attachments()}


def test_add_with_an_interface_name_in_use_fails_and_leaks_nothing(cluster: Cluster) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-1"], cluster.hosts["node-1"]
    c = lab.container()
    sh("ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0b")
    ports, held = bridge_ports(host), len(agent.attachments())
    res = lab.cni(agent, "ADD", c)
    assert res.rc == 1 and res.out["code"] == 102, res.raw
    assert "eth0" in res.out["msg"]
    assert len(agent.attachments()) == held
    wait_for("the half-made pair to go", lambda: bridge_ports(host) == ports)


def test_100_concurrent_adds_get_unique_addresses_and_dels_leak_nothing(cluster: Cluster) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-2"], cluster.hosts["node-2"]
    before = {a.ip for a in agent.attachments()}
    ports = set(bridge_ports(host))
    containers = [lab.container() for _ in range(100)]
    results: dict[str, Result] = {}
    start = threading.Barrier(100)

    def run(command: str, c: str) -> None:
        start.wait()
        results[c] = lab.cni(agent, command, c)

    def all_at_once(command: str) -> None:
        threads = [threading.Thread(target=run, args=(command, c)) for c in containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    all_at_once("ADD")
    failed = {c: r.raw for c, r in results.items() if r.rc != 0}
    assert not failed, list(failed.values())[:3]
    ips = [results[c].ip for c in containers]
    assert len(set(ips)) == 100 and not set(ips) & before
    # What the kernel holds agrees: every container has its own address.
    for c, ip in zip(containers[::10], ips[::10], strict=True):
        assert ip in sh("ip", "-n", c, "-4", "-o", "addr", "show", "eth0").stdout
    assert {a.ip for a in agent.attachments()} == before | set(ips)

    all_at_once("DEL")
    assert all(r.rc == 0 and r.raw == "" for r in results.values())
    assert {a.ip for a in agent.attachments()} == before
    wait_for("the host ends to be deleted", lambda: set(bridge_ports(host)) == ports)


# --- DEL ---------------------------------------------------------------------------------------


def test_del_releases_and_is_idempotent(cluster: Cluster) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-1"], cluster.hosts["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c)
    host_if = res.out["interfaces"][0]["name"]
    for _ in range(2):
        done = lab.cni(agent, "DEL", c, prevResult=res.out)
        assert (done.rc, done.raw) == (0, "")
    assert res.ip not in {a.ip for a in agent.attachments()}
    wait_for("the host end to go", lambda: host_if not in bridge_ports(host))
    assert "eth0" not in sh("ip", "-n", c, "link").stdout
    # A DEL without netns (the runtime lost it) and for a container never added: both fine.
    assert lab.cni(agent, "DEL", cid=c.removeprefix(lab.prefix)).rc == 0
    assert lab.cni(agent, "DEL", cid="never-added").rc == 0


def test_del_after_the_namespace_is_gone(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c)
    netns.delete(c)
    done = lab.cni(agent, "DEL", c)
    assert (done.rc, done.raw) == (0, "")
    assert res.ip not in {a.ip for a in agent.attachments()}


def test_del_after_the_interface_is_gone(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c)
    sh("ip", "-n", c, "link", "del", "eth0")
    assert lab.cni(agent, "DEL", c).rc == 0
    assert res.ip not in {a.ip for a in agent.attachments()}


# --- CHECK -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drift", "words"),
    [
        (["route", "del", "default"], "route 0.0.0.0/0"),
        (["addr", "flush", "dev", "eth0"], "lacks its address"),
        (["link", "set", "eth0", "down"], "is down"),
        (["link", "del", "eth0"], "missing"),
    ],
)
def test_check_reports_drift(cluster: Cluster, drift: list[str], words: str) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c)
    ok = lab.cni(agent, "CHECK", c, prevResult=res.out)
    assert (ok.rc, ok.raw) == (0, "")
    sh("ip", "-n", c, *drift)
    bad = lab.cni(agent, "CHECK", c, prevResult=res.out)
    assert bad.rc == 1 and bad.out["code"] == 103, bad.raw
    assert words in bad.out["details"]


def test_check_finds_a_host_end_off_the_bridge(cluster: Cluster) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-1"], cluster.hosts["node-1"]
    c = lab.container()
    res = lab.cni(agent, "ADD", c)
    sh("ip", "-n", host, "link", "set", res.out["interfaces"][0]["name"], "nomaster")
    bad = lab.cni(agent, "CHECK", c, prevResult=res.out)
    assert bad.rc == 1 and "not on cni0" in bad.out["details"], bad.raw


def test_check_of_an_unknown_attachment(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    c = lab.container()
    res = lab.cni(agent, "CHECK", c, prevResult={"cniVersion": "1.1.0"})
    assert res.rc == 1 and res.out["code"] == 3, res.raw


# --- GC ----------------------------------------------------------------------------------------


def test_gc_removes_attachments_not_listed_and_orphaned_host_ends(cluster: Cluster) -> None:
    lab, agent, host = cluster.lab, cluster.agents["node-2"], cluster.hosts["node-2"]
    keep = [a for a in agent.attachments() if a.network == NETWORK]
    cs = [lab.container() for _ in range(3)]
    added = [lab.cni(agent, "ADD", c) for c in cs]
    # An orphan: a veth on cni0 that no attachment owns (as a crash mid-ADD could leave).
    sh("ip", "-n", host, "link", "add", "vethdeadbeef01", "type", "veth", "peer", "name", "vethdeadbeef02")
    sh("ip", "-n", host, "link", "set", "vethdeadbeef01", "master", "cni0")
    valid = [{"containerID": a.container_id, "ifname": a.ifname} for a in keep]
    valid.append({"containerID": cs[0].removeprefix(lab.prefix), "ifname": "eth0"})
    res = lab.cni(agent, "GC", **{"cni.dev/valid-attachments": valid})
    assert (res.rc, res.raw) == (0, "")
    left = {a.ip for a in agent.attachments() if a.network == NETWORK}
    assert left == {a.ip for a in keep} | {added[0].ip}
    ports = bridge_ports(host)
    assert added[0].out["interfaces"][0]["name"] in ports
    assert not {r.out["interfaces"][0]["name"] for r in added[1:]} & set(ports)
    assert "vethdeadbeef01" not in ports and "vethdeadbeef01" not in sh("ip", "-n", host, "link").stdout
    assert lab.ping(cs[0], "10.244.1.1")


# --- STATUS, agent down and restart ----------------------------------------------------------------


def test_status_is_ready_while_the_agent_runs(cluster: Cluster) -> None:
    res = cluster.lab.cni(cluster.agents["node-1"], "STATUS")
    assert (res.rc, res.raw) == (0, "")


def test_agent_down_and_restarted(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    a, b = lab.container(), lab.container()
    ip_a, ip_b = lab.cni(agent, "ADD", a).ip, lab.cni(agent, "ADD", b).ip
    lab.serve(a, 7003)
    agent.stop()
    try:
        assert lab.ask(b, ip_a, 7003) == ip_b  # the kernel keeps carrying traffic
        down = lab.cni(agent, "ADD", lab.container())
        assert down.rc == 1 and down.out["code"] == 11, down.raw
        status = lab.cni(agent, "STATUS")
        assert status.rc == 1 and status.out["code"] == 50, status.raw
    finally:
        agent.start()
    assert lab.ask(b, ip_a, 7003) == ip_b
    assert "made" not in agent.log, agent.log  # the node was set up already: nothing to change
    c = lab.container()
    ip_c = lab.cni(agent, "ADD", c).ip
    assert ip_c not in (ip_a, ip_b)
    assert lab.ask(c, ip_a, 7003) == ip_c


def test_only_root_may_use_the_agent(cluster: Cluster) -> None:
    lab, agent = cluster.lab, cluster.agents["node-1"]
    sock = Path(agent.socket)
    assert (sock.stat().st_mode & 0o777, sock.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    # A copy of the plugin that user nobody may run.
    public = Path(tempfile.mkdtemp(prefix="podnet-cni-public-"))
    try:
        public.chmod(0o755)
        plugin = install.install(NETWORK, str(public / "bin"), str(public / "conf"))["plugin"]
        conf = {"cniVersion": "1.1.0", "name": NETWORK, "type": "podnet-cni", "agentSocket": agent.socket}
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", plugin]
        denied = lab.exec(agent.host, as_nobody, conf, {"CNI_COMMAND": "STATUS"})
        assert denied.rc == 1 and denied.out["code"] == 104, denied.raw
        # Even with the permissions opened, the agent itself refuses anyone but root.
        modes = {p: p.stat().st_mode & 0o777 for p in (lab.tmp, sock.parent, sock)}
        for p in modes:
            p.chmod(0o777 if p == sock else 0o755)
        try:
            refused = lab.exec(agent.host, as_nobody, conf, {"CNI_COMMAND": "STATUS"})
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        assert refused.rc == 1 and refused.out["code"] == 100 and "root" in refused.out["msg"], refused.raw
    finally:
        subprocess.run(["rm", "-rf", str(public)], check=False)


# --- chained reference plugins ---------------------------------------------------------------------


def test_portmap_and_bandwidth_chain_after_podnet(cluster: Cluster) -> None:
    """The chain a runtime runs for a conflist [podnet-cni, portmap, bandwidth]: each plugin gets
    the previous one's result as prevResult; DEL runs the chain backwards."""
    lab, agent, host = cluster.lab, cluster.agents["node-1"], cluster.hosts["node-1"]
    c = lab.container()
    cid = c.removeprefix(lab.prefix)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns.path(c), "CNI_IFNAME": "eth0",
           "CNI_PATH": CNI_DIR}  # fmt: skip
    chain = [
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True,
         "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 7004, "protocol": "tcp"}]}},
        {"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000,
         "egressBurst": 1_000_000},
    ]  # fmt: skip
    result = lab.cni(agent, "ADD", c, version="1.0.0")  # Debian's reference plugins speak up to 1.0.0
    assert result.rc == 0, result.raw
    prev = result.out
    for plugin in chain:
        conf = {"cniVersion": "1.0.0", "name": NETWORK, **plugin, "prevResult": prev}
        res = lab.exec(host, [f"{CNI_DIR}/{plugin['type']}"], conf, env)
        assert res.rc == 0, f"{plugin['type']}: {res.raw}"
        assert result_problems(res.out, "1.0.0") == []
        prev = res.out
    # podnet's result went through the chain (bandwidth adds its ifb device after podnet's interfaces).
    assert prev["ips"] == result.out["ips"] and prev["interfaces"][:2] == result.out["interfaces"]

    host_if = result.out["interfaces"][0]["name"]
    assert "tbf" in sh("ip", "netns", "exec", host, "tc", "qdisc", "show", "dev", host_if).stdout
    assert any(link["ifname"].startswith("bwp") for link in host_links(host))
    lab.serve(c, 7004)
    assert lab.ask(cluster.external, "172.31.0.2", 8080) == EXTERNAL_IP  # DNAT to the container

    for plugin in reversed([{"type": "podnet-cni", "agentSocket": agent.socket}, *chain]):
        conf = {"cniVersion": "1.0.0", "name": NETWORK, **plugin, "prevResult": prev}
        argv = [lab.plugin] if plugin["type"] == "podnet-cni" else [f"{CNI_DIR}/{plugin['type']}"]
        res = lab.exec(host, argv, conf, {**env, "CNI_COMMAND": "DEL"})
        assert res.rc == 0, f"{plugin['type']} DEL: {res.raw}"
    assert not any(link["ifname"].startswith("bwp") for link in host_links(host))
    assert "8080" not in sh("ip", "netns", "exec", host, "iptables-save", "-t", "nat").stdout
    assert lab.ask(cluster.external, "172.31.0.2", 8080) == ""


# --- other clusters: a full pool, the vxlan backend ---------------------------------------------------


@pytest.fixture
def lab(root_untouched: None) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    lab = Lab()
    yield lab
    problems = lab.close()
    assert not problems, problems


def test_status_and_add_when_the_pool_is_exhausted(lab: Lab) -> None:
    host = lab.plug("node-1", "172.31.0.2")
    agent = lab.agent("node-1", host, cluster_yaml(f"small{lab.prefix[14:20]}", mask=29, nodes=1))
    # 10.244.0.2-6; the cluster's planned CoreDNS pod holds .2, which stays out of the pool.
    assert len(pool_of("10.244.0.0/29", "10.244.0.1")) == 5
    cs = [lab.container() for _ in range(5)]
    added = [lab.cni(agent, "ADD", c) for c in cs[:4]]
    assert all(r.rc == 0 for r in added) and {r.ip for r in added} == {f"10.244.0.{i}" for i in range(3, 7)}
    status = lab.cni(agent, "STATUS")
    assert status.rc == 1 and status.out["code"] == 50 and "in use" in status.out["msg"], status.raw
    full = lab.cni(agent, "ADD", cs[4])
    assert full.rc == 1 and full.out["code"] == 101, full.raw
    assert "eth0" not in sh("ip", "-n", cs[4], "link").stdout
    assert lab.cni(agent, "DEL", cs[0]).rc == 0
    # Ready again once the old interface is gone and its address back in the pool.
    wait_for("STATUS ready", lambda: lab.cni(agent, "STATUS").rc == 0)
    again = lab.cni(agent, "ADD", cs[4])
    assert again.rc == 0 and again.ip == added[0].ip


def test_vxlan_backend_across_nodes(lab: Lab) -> None:
    text = cluster_yaml(f"vx{lab.prefix[14:20]}", backend="vxlan")
    hosts = {n: lab.plug(n, ip) for n, ip in (("node-1", "172.31.0.2"), ("node-2", "172.31.0.3"))}
    agents = {n: lab.agent(n, h, text) for n, h in hosts.items()}
    vxlan = json.loads(sh("ip", "-n", hosts["node-1"], "-j", "-d", "link", "show", "vxlan0").stdout)[0]
    assert vxlan["mtu"] == 1450 and vxlan["linkinfo"]["info_data"]["id"] == 1
    a, b = lab.container(), lab.container()
    ra, rb = lab.cni(agents["node-1"], "ADD", a), lab.cni(agents["node-2"], "ADD", b)
    assert ra.out["interfaces"][1]["mtu"] == 1450
    lab.serve(a, 7005)
    assert lab.ask(b, ra.ip, 7005) == rb.ip
    assert lab.ping(a, rb.ip)


def test_agent_refuses_a_host_without_the_node_address(lab: Lab) -> None:
    host = lab.plug("node-1", "172.31.0.9")  # the plan gives node-1 172.31.0.2
    config = lab.tmp / "c.yaml"
    config.write_text(cluster_yaml("refused"))
    proc = sh("ip", "netns", "exec", host, sys.executable, "-m", "podnet", "agent", "--node", "node-1", "--config",
              str(config), "--socket", str(lab.tmp / "x.sock"), "--state-dir", str(lab.tmp / "st"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "172.31.0.2" in proc.stderr, proc.stderr
    unknown = sh("ip", "netns", "exec", host, sys.executable, "-m", "podnet", "agent", "--node", "node-9",
                 "--config", str(config), "--socket", str(lab.tmp / "x.sock"), check=False)  # fmt: skip
    assert unknown.returncode == 2 and "node-9" in unknown.stderr

"""The services benchmark: podnet's nftables Services beside kube-proxy's iptables mode.

1. Sync: 10,000 ClusterIP services (TCP) with 10 endpoints each, their 100,000 pods 100 to a
   node (the timed node holds 100 of them, as a Kubernetes node holds at most 110 pods; they
   are the hairpin set). podnet builds its node table (``podnet.plan.nat.node_table`` from
   ``ServiceInfo`` objects, timed as "plan") and loads it (``podnet.kernel.nft.load``: the
   table's declarations through ``nft -f``, then the service chains' rules and the maps'
   elements in one nf_tables netlink batch) into a fresh node namespace; then one endpoint of
   one service is replaced and only the difference to the table it wrote is loaded
   (``load(new, old)``: the kernel is not listed again). The baseline is the same services written the way kube-proxy's
   iptables mode writes them (KUBE-SERVICES with one rule per service, a KUBE-SVC chain per
   service with ``statistic`` rules to a KUBE-SEP chain per endpoint doing DNAT and the
   masquerade mark) and loaded with the system's ``iptables-restore`` in another namespace:
   in full into the fresh namespace and again over the rules already there (kube-proxy's full
   re-sync), both replacing the nat table; the changed service's chains alone with
   ``--noflush``; and kube-proxy's partial sync with ``--noflush`` (its top-level chains,
   KUBE-SERVICES with every service, are rewritten on every sync). kube-proxy uses
   ``--noflush`` for full restores too, but this iptables-nft grows super-linearly with the
   chains such a restore declares, so that is timed once at NOFLUSH_SAMPLE services.
2. Connection setup: a client namespace, a router namespace holding the rules and a server
   namespace with a TCP listener on every endpoint address of the service asked for; the
   client times sequential ``connect()`` calls to the VIP (DNAT to one of 10 endpoints), for
   both styles with 10 and with 10,000 services installed. The VIP is the LAST service of
   KUBE-SERVICES, iptables' worst case (its dispatch is a sequential scan); podnet's is one
   map lookup whatever the count. Rounds alternate between the four routers.
3. Conntrack clean-up: CT_SERVICES UDP services over one pool of CT_ENDPOINTS pods, a flow
   from a client to every service and endpoint in a node namespace's conntrack table
   (entries written over ctnetlink, so each run starts from the same table), and CT_GONE
   pods going away: their entries toward the service addresses are deleted the way podnet
   used to (one ``nsenter conntrack -D`` per service address x removed endpoint), with
   pyroute2's conntrack (one dump, a request per delete, in a process inside the namespace)
   and with ``podnet.kernel.conntrack`` (one dump, every delete in one send). Each run must
   leave exactly the other endpoints' entries.

Everything lives in namespaces named ``pbsvc<pid>_*``; addresses (10.123.0.0/16 links and
VIPs, 10.124.0.0/14 pods and client) exist only inside them. The root namespace is never
touched, and everything is removed by :func:`cleanup`, also after an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from base64 import b32encode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console

from bench import nsutil
from bench.nsutil import BenchError

T = TypeVar("T")

SERVICES = 10_000
SMALL = 10  # the services of the small case: the last ten, so the VIP asked for is the same
ENDPOINTS = 10
CHANGES = 5  # one-service changes, median reported
KUBE_PARTIAL_REPEAT = 3
NOFLUSH_SAMPLE = 1000  # services in the --noflush full restore data point (it grows super-linearly)
NOFLUSH_LIMIT_S = 30.0
CONNECTS = 400  # per round and case: 4,000 per case in all
WARMUP = 50
ROUNDS = 10  # short interleaved rounds: the machine may be shared, and its noise comes in spells
ROUND_LIMIT_S = 15.0  # per round and case, whatever the count
CONNECT_TIMEOUT_S = 2.0
LOAD_LIMIT_S = 90.0  # one nft -f or iptables-restore; beyond it the load is killed and reported
REPEAT_FULL_SYNC_UNDER_S = 3.0  # repeat podnet's full sync (fresh namespaces) when it is this fast

FULL_SYNC_TARGET_S = 1.0
CHANGE_TARGET_S = 0.050
CONNECT_TARGET_RATIO = 1.10

SERVICE_CIDR = "10.123.64.0/18"
POD_CIDR = "10.124.0.0/14"  # endpoints and the client: its traffic is not masqueraded by either style
PORT = 80
TARGET_PORT = 8080
MASQ_MARK = "0x4000"
NODE = "node-1"  # the node whose table is built and timed
PODS_PER_NODE = 100  # endpoints live 100 to a node (Kubernetes runs at most 110 pods on one)

CT_SERVICES = 100  # UDP services of the conntrack clean-up
CT_ENDPOINTS = 20  # each: the same pool of pods
CT_GONE = 10  # pods that go away
CT_RUNS = 5  # netlink runs (median); the old way runs once (it takes seconds)
CT_CLIENT = "10.124.200.1"
CT_PORT, CT_TARGET_PORT = 53, 5353

PREFIX = f"pbsvc{os.getpid()}_"
_server: subprocess.Popen | None = None


# --- the services ----------------------------------------------------------------------------


def vip(i: int) -> str:
    return str(ipaddress.IPv4Address("10.123.64.0") + 1 + i)


def endpoint_ip(k: int) -> str:
    return str(ipaddress.IPv4Address("10.124.0.0") + 1 + k)


def pod_node(k: int) -> str:
    """The node of endpoint pod ``k``: the first PODS_PER_NODE are on NODE, the rest elsewhere."""
    return f"node-{1 + k // PODS_PER_NODE}"


def make_services(count: int) -> list[Any]:
    """``count`` ClusterIP services with ENDPOINTS endpoints each, as podnet's planner describes them."""
    from podnet.plan.topology import SLOT_WIDTH, Endpoint, ServiceInfo, ServicePortInfo

    out = []
    for i in range(count):
        ns = f"ns{i % 10}"
        eps = tuple(
            Endpoint(
                f"{ns}/pod-{i * ENDPOINTS + j:06d}",
                endpoint_ip(i * ENDPOINTS + j),
                pod_node(i * ENDPOINTS + j),
                TARGET_PORT,
            )
            for j in range(ENDPOINTS)
        )
        port = ServicePortInfo("http", "TCP", PORT, None, eps, (i + 1) * SLOT_WIDTH)
        out.append(ServiceInfo(ns, f"svc-{i:05d}", "ClusterIP", vip(i), (port,), None, False))
    return out


def replace_endpoint(svc: Any, new_ip: str) -> Any:
    """The same service with its first endpoint replaced by a new pod at ``new_ip``."""
    port = svc.ports[0]
    first = dataclasses.replace(port.endpoints[0], pod=f"{svc.namespace}/new-{new_ip}", ip=new_ip)
    return dataclasses.replace(svc, ports=(dataclasses.replace(port, endpoints=(first, *port.endpoints[1:])),))


def node_info(router_ip: str) -> Any:
    from podnet.plan.topology import NodeInfo

    return NodeInfo(NODE, "", "underlay", router_ip, 24, "10.124.0.0/24", "10.124.0.1")


# --- the same services in kube-proxy's iptables mode ------------------------------------------


def _hash(text: str) -> str:
    """kube-proxy's chain-name hash: base32 of the SHA-256, first 16 characters."""
    return b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@dataclass(frozen=True)
class KubeService:
    dispatch: str  # its rule in KUBE-SERVICES
    chains: tuple[str, ...]  # KUBE-SVC-..., then one KUBE-SEP-... per endpoint
    rules: tuple[str, ...]


def kube_service(svc: Any) -> KubeService:
    port = svc.ports[0]
    name = f"{svc.key}:{port.name}"
    proto = port.protocol.lower()
    svc_chain = f"KUBE-SVC-{_hash(name + proto)}"
    dst = f'-d {svc.cluster_ip}/32 -p {proto} -m comment --comment "{name} cluster IP" -m {proto} --dport {port.port}'
    rules = [f"-A {svc_chain} ! -s {POD_CIDR} {dst} -j KUBE-MARK-MASQ"]
    seps = []
    sep_rules = []
    n = len(port.endpoints)
    for j, ep in enumerate(port.endpoints):
        target = f"{ep.ip}:{ep.port}"
        sep = f"KUBE-SEP-{_hash(name + proto + target)}"
        seps.append(sep)
        pick = f"-m statistic --mode random --probability {1 / (n - j):.11f} " if j < n - 1 else ""
        rules.append(f'-A {svc_chain} -m comment --comment "{name} -> {target}" {pick}-j {sep}')
        sep_rules += [
            f'-A {sep} -s {ep.ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
            f'-A {sep} -p {proto} -m comment --comment "{name}" -m {proto} -j DNAT --to-destination {target}',
        ]
    return KubeService(f"-A KUBE-SERVICES {dst} -j {svc_chain}", (svc_chain, *seps), (*rules, *sep_rules))


KUBE_TOP = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
KUBE_TOP_RULES = (
    f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
    f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
)
KUBE_NODEPORTS_LAST = (
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
    'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
)
# The jumps into kube-proxy's chains (it ensures them with single iptables calls).
KUBE_JUMPS = (
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
)


def kube_restore(
    written: list[KubeService],
    every: list[KubeService] | None = None,
    removed: tuple[str, ...] = (),
    jumps: bool = False,
) -> str:
    """``iptables-restore`` input writing the chains of ``written`` (each declared, so flushed,
    then filled); with ``every``, also the top-level chains, KUBE-SERVICES holding one rule per
    service of ``every`` in order; ``removed`` chains are flushed and deleted; ``jumps``: the
    rules in PREROUTING, OUTPUT and POSTROUTING too (for a restore that replaces the table)."""
    lines = ["*nat"]
    if every is not None:
        lines += [f":{c} - [0:0]" for c in KUBE_TOP]
    lines += [f":{c} - [0:0]" for s in written for c in s.chains]
    lines += [f":{c} - [0:0]" for c in removed]
    if every is not None:
        lines += KUBE_TOP_RULES
        lines += [s.dispatch for s in every]
        lines.append(KUBE_NODEPORTS_LAST)
    lines += [r for s in written for r in s.rules]
    lines += [f"-X {c}" for c in removed]
    if jumps:
        lines += KUBE_JUMPS
    lines += ["COMMIT", ""]
    return "\n".join(lines)


# --- namespaces, the topology and the server --------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One router: a style (nft: podnet, ipt: kube-proxy iptables mode) and a service count."""

    index: int
    style: str
    count: int

    @property
    def key(self) -> str:
        return f"{self.style}_{self.count}"

    @property
    def router(self) -> str:
        return f"{PREFIX}{self.style}{self.count}"

    @property
    def client(self) -> str:
        return f"{PREFIX}cli{self.index}"

    @property
    def client_ip(self) -> str:
        return f"10.127.{250 + self.index}.2"

    @property
    def router_client_ip(self) -> str:
        return f"10.127.{250 + self.index}.1"

    @property
    def router_server_ip(self) -> str:
        return f"10.123.{10 + self.index}.1"

    @property
    def server_ip(self) -> str:
        return f"10.123.{10 + self.index}.2"

    @property
    def label(self) -> str:
        return f"{'podnet nft' if self.style == 'nft' else 'iptables'}, {self.count:,} services"


CASES = (Case(0, "nft", SMALL), Case(1, "nft", SERVICES), Case(2, "ipt", SMALL), Case(3, "ipt", SERVICES))
SERVER_NS = f"{PREFIX}srv"


def topology_script(target_endpoints: list[str]) -> str:
    """Client -> router -> server for each case; one server namespace with every router's link."""
    srv = SERVER_NS
    lines = ["set -e", f"ip netns add {srv}", f"ip -n {srv} link set lo up"]
    for c in CASES:
        cli, rt, srv_if = c.client, c.router, f"r{c.index}"
        lines += [
            f"ip netns add {cli}",
            f"ip netns add {rt}",
            f"ip -n {cli} link set lo up",
            f"ip -n {rt} link set lo up",
            f"ip netns exec {rt} sysctl -qw net.ipv4.ip_forward=1",
            f"ip -n {rt} link add c0 type veth peer name eth0 netns {cli}",
            f"ip -n {rt} link add s0 type veth peer name {srv_if} netns {srv}",
            f"ip -n {rt} addr add {c.router_client_ip}/24 dev c0",
            f"ip -n {rt} addr add {c.router_server_ip}/24 dev s0",
            f"ip -n {cli} addr add {c.client_ip}/24 dev eth0",
            f"ip -n {srv} addr add {c.server_ip}/24 dev {srv_if}",
            f"ip -n {rt} link set c0 up",
            f"ip -n {rt} link set s0 up",
            f"ip -n {cli} link set eth0 up",
            f"ip -n {srv} link set {srv_if} up",
            f"ip -n {cli} route add default via {c.router_client_ip} dev eth0",
            f"ip -n {rt} route add {POD_CIDR} via {c.server_ip} dev s0",
            f"ip -n {srv} route add 10.127.{250 + c.index}.0/24 via {c.router_server_ip} dev {srv_if}",
        ]
    lines += [f"ip -n {srv} addr add {ip}/32 dev lo" for ip in target_endpoints]
    return "\n".join(lines) + "\n"


SERVER_CODE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


def start_server() -> None:
    """A TCP listener on every address of the server namespace; its command line names the namespace."""
    global _server
    _server = subprocess.Popen(
        [
            "nsenter",
            f"--net={nsutil.RUN_NETNS}/{SERVER_NS}",
            sys.executable,
            "-c",
            SERVER_CODE,
            str(TARGET_PORT),
            SERVER_NS,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    assert _server.stdout is not None
    ready, _, _ = select.select([_server.stdout], [], [], 10)
    line = _server.stdout.readline() if ready else ""
    if line.strip() != "ready":
        _server.kill()
        err = _server.stderr.read() if _server.stderr else ""
        raise BenchError(f"the TCP server in {SERVER_NS} did not start: {line!r} {err.strip()[-500:]}")


def stop_server() -> None:
    global _server
    if _server is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_server.pid, signal.SIGKILL)
        _server.wait()
        _server = None


# --- loads, bounded in time ----------------------------------------------------------------------

# Children that a load runs; a load past LOAD_LIMIT_S has them killed (by pid, children only).
_LOADERS = ("nft", "nsenter", "iptables-restor", "xtables-nft-mul", "xtables-legacy")


def _loader_children() -> list[int]:
    me = os.getpid()
    return [
        pid
        for pid, comm, fields in nsutil.proc_stats()
        if int(fields[1]) == me and comm.startswith(_LOADERS) and (_server is None or pid != _server.pid)
    ]


class TimedOut(Exception):
    pass


def bounded(fn: Callable[[], T], limit: float = LOAD_LIMIT_S) -> tuple[T, float]:
    """``fn()`` and its wall time; its loader processes are killed after ``limit`` seconds."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        for pid in _loader_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(limit, kill)
    timer.daemon = True
    timer.start()
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        if fired.is_set():
            raise TimedOut(f"killed after {limit:.0f} s") from exc
        raise
    finally:
        timer.cancel()
    return result, time.perf_counter() - start


def iptables_restore(ns: str, text: str, noflush: bool) -> None:
    """``iptables-restore`` in ``ns``: with ``noflush`` other chains stay, else the nat table is replaced."""
    flags = ["--noflush"] if noflush else []
    nsutil.run(["nsenter", f"--net={nsutil.RUN_NETNS}/{ns}", "iptables-restore", *flags], input=text)


def iptables_version() -> str:
    return nsutil.run(["iptables-restore", "--version"]).strip()


def count_rules(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


# --- 1a. podnet: full sync and one-service change --------------------------------------------


def bench_nft(ctx: Any, out: dict, services: list[Any]) -> None:
    from podnet.kernel import nft
    from podnet.plan.nat import node_table

    res = out["nft"] = {}
    big = CASES[1]
    node = node_info(big.router_client_ip)

    def plan(svcs: list[Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        table = node_table(node, [], svcs, POD_CIDR, SERVICE_CIDR)
        return table, time.perf_counter() - start

    ctx.log.print(f"services: podnet plan + load of {SERVICES:,} services into a fresh node namespace")
    want, plan_s = plan(services)
    start = time.perf_counter()
    sync = nft.plan_sync(want, None)
    diff_s = time.perf_counter() - start
    res.update(
        rules=want.rule_count,
        chains=len(want.chains),
        elements=sum(len(s.elements) for s in want.sets.values()),
        nft_lines=len(sync.before) + len(sync.after),
        batch_messages=len(sync.batch.messages) if sync.batch else 0,
        batch_mb=sync.batch.nbytes / 1e6 if sync.batch else 0.0,
    )
    del sync
    nft.observe(big.router)  # as podnet up does before writing (no table yet), untimed
    nsutil.settle()
    try:
        _, load_s = bounded(lambda: nft.load(big.router, want, None))
    except TimedOut as exc:
        res["full_sync_error"] = f"load {exc}"
        ctx.log.print(f"[red]services: podnet's full load {exc}[/]")
        return
    syncs = [(plan_s, diff_s, load_s)]
    if load_s < REPEAT_FULL_SYNC_UNDER_S:
        for r in range(2):  # fast enough to repeat in fresh namespaces: the median is reported
            scratch = f"{PREFIX}sync{r}"
            nsutil.run(["ip", "netns", "add", scratch])
            try:
                table, p_s = plan(services)
                s0 = time.perf_counter()
                nft.plan_sync(table, None)
                s_s = time.perf_counter() - s0
                nft.observe(scratch)
                nsutil.settle()
                _, l_s = bounded(lambda t=table, ns=scratch: nft.load(ns, t, None))
                syncs.append((p_s, s_s, l_s))
            finally:
                nsutil.delete_netns([scratch])
    p_s, s_s, l_s = sorted(syncs, key=lambda run: run[0] + run[2])[(len(syncs) - 1) // 2]
    res.update(
        full_sync_s=p_s + l_s,
        full_sync_plan_s=p_s,
        full_sync_script_s=s_s,  # diff and encoding (plan_sync), part of the load
        full_sync_nft_s=l_s - s_s,  # nft -f for the declarations, and the netlink batch
        full_sync_runs_s=[p + lo for p, _, lo in syncs],
    )
    ctx.log.print(f"services: podnet full sync {p_s + l_s:.3f} s (plan {p_s:.3f}, load {l_s:.3f})")

    have = want
    changes = []
    for r in range(CHANGES):
        idx = SERVICES // 2 + r
        new_ip = endpoint_ip(SERVICES * ENDPOINTS + r)
        services = [*services[:idx], replace_endpoint(services[idx], new_ip), *services[idx + 1 :]]
        new, p_s = plan(services)
        start = time.perf_counter()
        sync = nft.plan_sync(new, have)
        s_s = time.perf_counter() - start
        _, l_s = bounded(lambda n=new, h=have: nft.load(big.router, n, h))
        lines = len(sync.before) + len(sync.after)
        changes.append({"plan_s": p_s, "script_s": s_s, "load_s": l_s, "lines": lines, "batch": sync.batch})
        have = new
    mid = sorted(changes, key=lambda c: c["load_s"])[(len(changes) - 1) // 2]
    res.update(
        change_s=mid["load_s"],  # diff + nft (none here) + netlink batch: what nft.load does
        change_script_s=mid["script_s"],
        change_plan_s=mid["plan_s"],
        change_lines=mid["lines"],
        change_batch=mid["batch"].what if mid["batch"] else [],
        change_runs_ms=[round(c["load_s"] * 1000, 2) for c in changes],
    )
    ctx.log.print(
        f"services: podnet one-service change {mid['load_s'] * 1000:.1f} ms "
        f"({mid['lines']} nft lines, batch: {'; '.join(res['change_batch'])})"
    )

    same, _ = plan(services)  # rebuilt, as a converged sync does: equal, but other objects
    _, res["noop_s"] = bounded(lambda: nft.load(big.router, same, have))
    ctx.log.print("services: podnet observing its table (its record, valid while no one else committed)")
    _, res["observe_s"] = bounded(lambda: nft.observe(big.router))
    ctx.log.print("services: podnet re-reading its table from the kernel (nft -j list + parse)")
    observed, res["read_s"] = bounded(lambda: nft.read(big.router))
    res["observe_equal"] = observed == have
    left = nft.plan_sync(have, observed)
    res["observe_diff_lines"] = len(left.before) + len(left.after) + (len(left.batch.messages) if left.batch else 0)

    small = CASES[0]
    table = node_table(node_info(small.router_client_ip), [], services[-SMALL:], POD_CIDR, SERVICE_CIDR)
    _, res["small_load_s"] = bounded(lambda: nft.load(small.router, table, None))


# --- 1b. kube-proxy's iptables mode ------------------------------------------------------------


def bench_iptables(ctx: Any, out: dict, services: list[Any]) -> None:
    res = out["iptables"] = {"version": iptables_version()}
    big, small = CASES[3], CASES[2]
    start = time.perf_counter()
    kube = [kube_service(s) for s in services]
    full = kube_restore(kube, kube, jumps=True)
    res["render_s"] = time.perf_counter() - start
    res.update(rules=count_rules(full), chains=sum(len(k.chains) for k in kube) + len(KUBE_TOP))

    # kube-proxy always restores with --noflush; this iptables-nft grows super-linearly with the
    # chains such a restore declares (1,000 services: seconds; 3,000: minutes), so the full loads
    # below replace the table instead (the namespace holds nothing else), and --noflush is timed
    # for the partial restores and once, in full, at NOFLUSH_SAMPLE services.
    ctx.log.print(f"services: iptables-restore --noflush of all chains at {NOFLUSH_SAMPLE:,} services")
    scratch = f"{PREFIX}noflush"
    nsutil.run(["ip", "netns", "add", scratch])
    try:
        sample = kube[-NOFLUSH_SAMPLE:]
        jumps = "\n".join(["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", *KUBE_JUMPS, "COMMIT", ""])
        iptables_restore(scratch, jumps, noflush=True)
        _, res["noflush_sample_s"] = bounded(
            lambda: iptables_restore(scratch, kube_restore(sample, sample), noflush=True), NOFLUSH_LIMIT_S
        )
    except TimedOut as exc:
        res["noflush_sample_error"] = f"iptables-restore --noflush {exc}"
    finally:
        nsutil.delete_netns([scratch])

    ctx.log.print(f"services: iptables-restore of {SERVICES:,} services ({res['version']})")
    nsutil.settle()
    try:
        _, res["full_s"] = bounded(lambda: iptables_restore(big.router, full, noflush=False))
    except TimedOut as exc:
        res["full_error"] = f"iptables-restore {exc}"
        ctx.log.print(f"[red]services: iptables full restore {exc}[/]")
        return
    ctx.log.print(f"services: iptables-restore full {res['full_s']:.3f} s")

    def change(idx: int, r: int, top: bool) -> tuple[float, int]:
        """Replace one endpoint of service ``idx``; write its chains (and with ``top`` kube-proxy's
        top-level chains too) with --noflush, deleting the old endpoint's chain."""
        old = kube[idx]
        kube[idx] = kube_service(replace_endpoint(services[idx], endpoint_ip(SERVICES * ENDPOINTS + r)))
        removed = tuple(c for c in old.chains if c not in kube[idx].chains)
        text = kube_restore([kube[idx]], kube if top else None, removed)
        _, took = bounded(lambda: iptables_restore(big.router, text, noflush=True))
        return took, count_rules(text)

    changed = [change(SERVICES // 2 + r, r, top=False) for r in range(CHANGES)]
    partial = [change(SERVICES // 2 + CHANGES + r, CHANGES + r, top=True) for r in range(KUBE_PARTIAL_REPEAT)]
    res.update(
        change_s=statistics.median(t for t, _ in changed),
        change_runs_ms=[round(t * 1000, 2) for t, _ in changed],
        change_rules=changed[0][1],
        partial_sync_s=statistics.median(t for t, _ in partial),
        partial_sync_rules=partial[0][1],
    )
    ctx.log.print(f"services: iptables one-service change {res['change_s'] * 1000:.1f} ms")
    ctx.log.print("services: iptables-restore full re-sync over the rules already there")
    try:
        resync = kube_restore(kube, kube, jumps=True)
        _, res["resync_s"] = bounded(lambda: iptables_restore(big.router, resync, noflush=False))
    except TimedOut as exc:
        res["resync_error"] = f"iptables-restore {exc}"

    small_kube = kube[-SMALL:]
    small_text = kube_restore(small_kube, small_kube, jumps=True)
    _, res["small_load_s"] = bounded(lambda: iptables_restore(small.router, small_text, noflush=False))


# --- 2. connection setup -----------------------------------------------------------------------


def connect_batch(dst: str, count: int, warmup: int, limit: float, cpu: int | None = None) -> dict:
    """In the calling thread's namespace: ``count`` sequential TCP connects to ``dst``:PORT,
    each closed with a reset (no TIME_WAIT); the microseconds each ``connect()`` took.

    ``cpu``: pin the calling thread there first. The handshake runs in the client's softirq
    context, so every case is then measured on the same CPU."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # 0: this thread
    linger = struct.pack("ii", 1, 0)
    samples: list[float] = []
    failures = 0
    last_error = ""
    deadline = time.monotonic() + limit
    for i in range(warmup + count):
        if nsutil.STOP.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(CONNECT_TIMEOUT_S)
            start = time.perf_counter_ns()
            s.connect((dst, PORT))
            took = (time.perf_counter_ns() - start) / 1000
            if i >= warmup:
                samples.append(took)
        except OSError as exc:
            failures += 1
            last_error = repr(exc)
        finally:
            s.close()
    return {"samples": samples, "failures": failures, "last_error": last_error, "cut_short": len(samples) < count}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_connect(ctx: Any, out: dict, target_vip: str) -> None:
    ready = [c for c in CASES if out.get("ready", {}).get(c.key)]
    res = out["connect"] = {"vip": f"{target_vip}:{PORT}", "connects": CONNECTS, "rounds": ROUNDS}
    for c in ready:  # each path works before anything is timed
        probe = nsutil.in_netns(c.client, lambda: connect_batch(target_vip, 3, 0, 10))
        if len(probe["samples"]) < 3:
            raise BenchError(f"{c.label}: no TCP connection to {target_vip}:{PORT}: {probe['last_error']}")
    cpu = max(os.sched_getaffinity(0))
    res["client_cpu"] = cpu
    runs: dict[str, list[dict]] = {c.key: [] for c in ready}
    for r in range(ROUNDS):
        order = ready[r % len(ready) :] + ready[: r % len(ready)] if ready else []
        for c in order:
            batch = nsutil.in_netns(
                c.client, lambda: connect_batch(target_vip, CONNECTS, WARMUP, ROUND_LIMIT_S, cpu=cpu)
            )
            runs[c.key].append(batch)
            mean = statistics.fmean(batch["samples"]) if batch["samples"] else float("nan")
            if r in (0, ROUNDS - 1) or ROUNDS <= 5:
                ctx.log.print(f"services: connect round {r + 1}/{ROUNDS}: {c.label:28} mean {mean:7.1f} us")
    for c in ready:
        batches = runs[c.key]
        pooled = [x for b in batches for x in b["samples"]]
        means = [statistics.fmean(b["samples"]) for b in batches if b["samples"]]
        if not pooled:
            continue
        res[c.key] = {
            "label": c.label,
            "mean_us": statistics.median(means),
            "round_means_us": [round(m, 1) for m in means],
            "p50_us": _pct(pooled, 0.50),
            "p99_us": _pct(pooled, 0.99),
            "samples": len(pooled),
            "failures": sum(b["failures"] for b in batches),
            "cut_short": any(b["cut_short"] for b in batches),
        }


# --- conntrack clean-up ----------------------------------------------------------------------------


def ct_vips() -> list[str]:
    return [str(ipaddress.IPv4Address("10.123.100.0") + 1 + i) for i in range(CT_SERVICES)]


def ct_endpoints() -> list[tuple[str, int]]:
    return [(endpoint_ip(50_000 + k), CT_TARGET_PORT) for k in range(CT_ENDPOINTS)]


def _ct_tuple(kind: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    from podnet.kernel import conntrack as ct

    ip = ct._attr(1, socket.inet_aton(src)) + ct._attr(2, socket.inet_aton(dst))
    proto = ct._attr(1, bytes([17])) + ct._attr(2, struct.pack(">H", sport)) + ct._attr(3, struct.pack(">H", dport))
    return ct._attr(kind | 0x8000, ct._attr(1 | 0x8000, ip) + ct._attr(2 | 0x8000, proto))


def ct_populate(ns: str) -> int:
    """A UDP flow from the client to every service and endpoint (the reply tuple is the DNAT
    to it), written as ctnetlink IPCTNL_MSG_CT_NEW messages in one send; returns the count."""
    from podnet.kernel import conntrack as ct

    messages = []
    for i, vip in enumerate(ct_vips()):
        for j, (ip, port) in enumerate(ct_endpoints()):
            sport = 20_000 + i * CT_ENDPOINTS + j
            body = (
                ct.NFGENMSG.pack(socket.AF_INET, 0, 0)
                + _ct_tuple(1, CT_CLIENT, vip, sport, CT_PORT)
                + _ct_tuple(2, ip, CT_CLIENT, port, sport)
                + ct._attr(7, struct.pack(">I", 300))  # CTA_TIMEOUT
            )
            messages.append(body)

    def send() -> int:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER) as sock:
            sock.bind((0, 0))
            sock.setsockopt(socket.SOL_SOCKET, ct.SO_RCVBUFFORCE, 1 << 22)
            sock.setsockopt(ct.SOL_NETLINK, ct.NETLINK_CAP_ACK, 1)
            for start in range(0, len(messages), 500):
                part = messages[start : start + 500]
                sock.send(
                    b"".join(
                        ct.NLMSG.pack(16 + len(b), 1 << 8 | 0, 0x1 | 0x400 | 0x4, k, 0) + b  # CT_NEW, CREATE, ACK
                        for k, b in enumerate(part, start=1)
                    )
                )
                acked = 0
                while acked < len(part):
                    data = sock.recv(1 << 20)
                    offset = 0
                    while offset + 16 <= len(data):
                        length, kind, _f, _seq, _pid = ct.NLMSG.unpack_from(data, offset)
                        if kind == ct.NLMSG_ERROR:
                            (code,) = struct.unpack_from("=i", data, offset + 16)
                            if code not in (0, -17):  # EEXIST: left from a run that failed
                                raise BenchError(f"conntrack refused an entry: {os.strerror(-code)}")
                            acked += 1
                        offset += (length + 3) & ~3
        return ct_count(ns)

    return nsutil.in_netns(ns, send)


def ct_count(ns: str) -> int:
    return nsutil.in_netns(ns, lambda: int(open("/proc/sys/net/netfilter/nf_conntrack_count").read()))


def ct_old_way(ns: str, vips: list[str], gone: list[tuple[str, int]]) -> int:
    """What podnet did before: one ``nsenter conntrack -D`` per service address x removed endpoint."""
    from podnet.kernel import netns

    enter = ["nsenter", f"--net={netns.path(ns)}"]
    for ip, port in gone:
        for vip in vips:
            match = ["-p", "udp", "--orig-dst", vip, "--reply-src", ip, "--reply-port-src", str(port)]
            subprocess.run([*enter, "conntrack", "-D", *match], capture_output=True, text=True)
    return len(gone) * len(vips)


PYROUTE2_FORGET = """
import json, sys, time
from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
vips, gone = set(json.loads(sys.argv[1])), {tuple(e) for e in json.loads(sys.argv[2])}
start = time.perf_counter()
ct = Conntrack()
doomed = [e for e in ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=17))
          if e.tuple_orig.daddr in vips and (e.tuple_reply.saddr, e.tuple_reply.sport) in gone]
for e in doomed:
    ct.entry("del", tuple_orig=e.tuple_orig)
ct.close()
print(json.dumps({"s": time.perf_counter() - start, "deleted": len(doomed)}))
"""


def bench_conntrack(ctx: Any, out: dict) -> None:
    import json

    from podnet.kernel import conntrack

    res = out["conntrack"] = {"services": CT_SERVICES, "endpoints": CT_ENDPOINTS, "gone": CT_GONE}
    ns = f"{PREFIX}ct"
    nsutil.run(["ip", "netns", "add", ns])
    vips, endpoints = ct_vips(), ct_endpoints()
    gone, kept = endpoints[:CT_GONE], CT_SERVICES * (CT_ENDPOINTS - CT_GONE)
    total = CT_SERVICES * CT_ENDPOINTS
    ctx.log.print(
        f"services: conntrack clean-up, {CT_SERVICES} UDP services losing {CT_GONE} of {CT_ENDPOINTS} endpoints"
    )

    def run(label: str, fn: Callable[[], float]) -> float:
        """Fill the table, clean it up with ``fn`` (which returns the seconds it took), check it."""
        if ct_populate(ns) != total:
            raise BenchError(f"conntrack clean-up: the table of {ns} does not hold the {total} entries written")
        elapsed = fn()
        if (left := ct_count(ns)) != kept:
            raise BenchError(f"conntrack clean-up ({label}): {left} entries left, expected {kept}")
        return elapsed

    def pyroute2_way() -> float:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", PYROUTE2_FORGET]
        answer = json.loads(nsutil.run([*argv, json.dumps(vips), json.dumps(gone)]))
        return float(answer["s"])

    netlink = [
        run("netlink", lambda: _timed(lambda: conntrack.forget(ns, set(vips), set(gone)))) for _ in range(CT_RUNS)
    ]
    res["netlink_runs_ms"] = [round(v * 1000, 1) for v in netlink]
    res["netlink_s"] = statistics.median(netlink)
    pyroute2 = [run("pyroute2", pyroute2_way) for _ in range(3)]
    res["pyroute2_runs_ms"] = [round(v * 1000, 1) for v in pyroute2]
    res["pyroute2_s"] = statistics.median(pyroute2)
    res["old_processes"] = CT_GONE * CT_SERVICES
    res["old_s"] = run("nsenter conntrack -D", lambda: _timed(lambda: ct_old_way(ns, vips, gone)))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- the suite -----------------------------------------------------------------------------------


def summarize(out: dict) -> None:
    nft, ipt, con = out.get("nft", {}), out.get("iptables", {}), out.get("connect", {})
    ratios: dict[str, float] = {}

    def ratio(name: str, a: float | None, b: float | None) -> None:
        if a is not None and b:
            ratios[name] = a / b

    ratio("full_sync_podnet_vs_iptables", nft.get("full_sync_s"), ipt.get("full_s"))
    ratio("change_podnet_vs_iptables", nft.get("change_s"), ipt.get("change_s"))
    ratio("change_podnet_vs_kube_partial", nft.get("change_s"), ipt.get("partial_sync_s"))
    mean = {k: v["mean_us"] for k, v in con.items() if isinstance(v, dict) and "mean_us" in v}
    ratio("connect_podnet_10k_vs_10", mean.get(f"nft_{SERVICES}"), mean.get(f"nft_{SMALL}"))
    ratio("connect_iptables_10k_vs_10", mean.get(f"ipt_{SERVICES}"), mean.get(f"ipt_{SMALL}"))
    ratio("connect_podnet_vs_iptables_10k", mean.get(f"nft_{SERVICES}"), mean.get(f"ipt_{SERVICES}"))
    ct = out.get("conntrack", {})
    ratio("conntrack_old_vs_netlink", ct.get("old_s"), ct.get("netlink_s"))  # how many times faster
    ratio("conntrack_pyroute2_vs_netlink", ct.get("pyroute2_s"), ct.get("netlink_s"))
    out["ratios"] = ratios
    targets = []

    def target(name: str, value: float | None, limit: float, unit: str, error: str | None = None) -> None:
        if value is not None or error:
            met = value is not None and value <= limit
            targets.append({"name": name, "value": value, "limit": limit, "unit": unit, "met": met, "error": error})

    target(
        f"podnet full sync of {SERVICES:,} services <= {FULL_SYNC_TARGET_S:g} s",
        nft.get("full_sync_s"),
        FULL_SYNC_TARGET_S,
        "s",
        nft.get("full_sync_error"),
    )
    change = nft.get("change_s")
    target(
        f"podnet one-service change <= {CHANGE_TARGET_S * 1000:g} ms",
        None if change is None else change * 1000,
        CHANGE_TARGET_S * 1000,
        "ms",
    )
    target(
        f"podnet connect at {SERVICES:,} services <= {CONNECT_TARGET_RATIO:g} x at {SMALL}",
        ratios.get("connect_podnet_10k_vs_10"),
        CONNECT_TARGET_RATIO,
        "x",
    )
    out["targets"] = targets


def run(ctx: Any, out: dict) -> None:
    """Fill ``out`` phase by phase (a failure leaves what was measured so far)."""
    for tool in ("nft", "iptables-restore", "nsenter", "ip"):
        if not shutil.which(tool):
            raise BenchError(f"services benchmark: {tool} is missing")
    out.update(
        services=SERVICES,
        small=SMALL,
        endpoints=ENDPOINTS,
        noflush_sample=NOFLUSH_SAMPLE,
        prefix=PREFIX,
        service_cidr=SERVICE_CIDR,
        pod_cidr=POD_CIDR,
    )
    try:
        start = time.perf_counter()
        services = make_services(SERVICES)
        out["generate_s"] = time.perf_counter() - start
        target = services[-1]
        out["target"] = {
            "service": target.key,
            "vip": target.cluster_ip,
            "position_in_kube_services": f"{SERVICES} of {SERVICES} (last)",
        }
        ctx.log.print(f"services: namespaces {PREFIX}*: {len(CASES)} client/router pairs and a server")
        path = ctx.tmp / "services-topology.sh"
        path.write_text(topology_script([e.ip for e in target.ports[0].endpoints]))
        nsutil.run(["bash", str(path)])
        start_server()
        ready = out["ready"] = {}
        bench_nft(ctx, out, services)
        nft = out["nft"]
        ready[CASES[0].key] = "small_load_s" in nft
        ready[CASES[1].key] = "full_sync_s" in nft
        bench_iptables(ctx, out, services)
        ipt = out["iptables"]
        ready[CASES[2].key] = "small_load_s" in ipt
        ready[CASES[3].key] = "full_s" in ipt
        nsutil.settle()
        bench_connect(ctx, out, target.cluster_ip)
        bench_conntrack(ctx, out)
    finally:
        summarize(out)


def cleanup(ctx: Any) -> list[str]:
    """Remove everything of this suite; returns what could not be removed."""
    problems: list[str] = []
    stop_server()
    strays = nsutil.find_processes([PREFIX])
    if strays:
        nsutil.kill_processes(strays)
    for _ in range(3):
        left = nsutil.list_prefixed(PREFIX)
        if not left:
            break
        nsutil.delete_netns(left)
        time.sleep(0.1)
    if left := nsutil.list_prefixed(PREFIX):
        problems.append(f"namespaces left behind: {', '.join(left)}")
    if strays := nsutil.find_processes([PREFIX]):
        problems.append(f"processes of the services benchmark still running: {strays}")
    return problems


# --- output ----------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def render(out: dict, console: Console) -> None:
    from rich.markup import escape

    from bench.report import measure_table

    nft, ipt, con, ratios = (out.get(k, {}) for k in ("nft", "iptables", "connect", "ratios"))
    table = measure_table(
        f"services benchmark: {out.get('services', SERVICES):,} ClusterIP services x {out.get('endpoints')} "
        f"endpoints (TCP), podnet's nftables table vs kube-proxy's iptables mode"
    )
    row = table.add_row
    n = f"{out.get('services', SERVICES):,}"

    if nft:
        if nft.get("full_sync_error"):
            row(f"podnet full sync, {n} services", "[bold red]failed[/]", escape(nft["full_sync_error"]))
        row(
            f"podnet full sync, {n} services",
            _s(nft.get("full_sync_s")),
            f"fresh node netns; plan (node_table) {_ms(nft.get('full_sync_plan_s'))}, "
            f"diff and encoding {_ms(nft.get('full_sync_script_s'))}, kernel (nft -f of "
            f"{nft.get('nft_lines', 0):,} declarations, then one netlink batch of "
            f"{nft.get('batch_messages', 0):,} messages, {nft.get('batch_mb', 0):.1f} MB) "
            f"{_s(nft.get('full_sync_nft_s'))}; {nft.get('chains', 0):,} chains, {nft.get('rules', 0):,} rules, "
            f"{nft.get('elements', 0):,} map/set elements",
        )
        if len(nft.get("full_sync_runs_s", [])) > 1:
            row("  runs", "", "median of " + ", ".join(f"{v:.3f}" for v in nft["full_sync_runs_s"]) + " (s)")
        change, script = nft.get("change_s"), nft.get("change_script_s")
        row(
            "podnet one-service change",
            _ms(change),
            f"diff {_ms(script)} + kernel {_ms(None if change is None else change - script)}: "
            f"one endpoint replaced, {nft.get('change_lines', '?')} nft lines, netlink batch: "
            f"{'; '.join(nft.get('change_batch', [])) or 'none'}; median of "
            f"{', '.join(str(v) for v in nft.get('change_runs_ms', []))} (ms); rebuilding the desired table "
            f"first (node_table) adds {_ms(nft.get('change_plan_s'))}",
        )
        row(
            "podnet sync with nothing changed",
            _ms(nft.get("noop_s")),
            "diff of the rebuilt table against the old one: nothing to send, nothing sent",
        )
        if "observe_s" in nft:
            row(
                "podnet observing its table",
                _ms(nft.get("observe_s")),
                "what podnet up does: the record of what it wrote, valid while nf_tables' generation in "
                "the namespace is the one it recorded (kernel.nftcache)",
            )
        if "read_s" in nft:
            row(
                "podnet re-reading its table",
                _s(nft.get("read_s")),
                f"nft -j list + parse + writing the record (kernel.nft.read), when anything else was committed "
                f"there; "
                f"equal to what was written: {nft.get('observe_equal')}, difference {nft.get('observe_diff_lines')} "
                "commands",
            )
        row(f"podnet load, {out.get('small')} services", _ms(nft.get("small_load_s")), "fresh node netns")
        table.add_section()
    if ipt:
        version = escape(ipt.get("version", "?"))
        if ipt.get("full_error"):
            row(f"iptables-restore full, {n} services", "[bold red]failed[/]", escape(ipt["full_error"]))
        row(
            f"iptables-restore full, {n} services",
            _s(ipt.get("full_s")),
            f"{version}, fresh netns, the nat table replaced; {ipt.get('chains', 0):,} chains, "
            f"{ipt.get('rules', 0):,} rules (rendering them {_ms(ipt.get('render_s'))})",
        )
        row(
            "iptables-restore full re-sync",
            _s(ipt.get("resync_s")) if not ipt.get("resync_error") else escape(ipt["resync_error"]),
            "the same over the rules already there: kube-proxy iptables mode's full sync",
        )
        row(
            f"  the same with --noflush, {out.get('noflush_sample', NOFLUSH_SAMPLE):,} services",
            _s(ipt.get("noflush_sample_s"))
            if not ipt.get("noflush_sample_error")
            else escape(ipt["noflush_sample_error"]),
            "every chain declared, as kube-proxy calls it; grows super-linearly in this iptables, "
            f"so the {n} rows above replace the table instead",
        )
        row(
            "iptables one-service change",
            _ms(ipt.get("change_s")),
            f"--noflush of the service's chains ({ipt.get('change_rules', '?')} rules, old KUBE-SEP deleted); "
            f"median of {', '.join(str(v) for v in ipt.get('change_runs_ms', []))} (ms)",
        )
        row(
            "iptables kube-proxy partial sync",
            _ms(ipt.get("partial_sync_s")),
            f"the same + its top-level chains, KUBE-SERVICES with every service ({ipt.get('partial_sync_rules', '?')}"
            " rules), as kube-proxy writes them on every sync",
        )
        row(f"iptables load, {out.get('small')} services", _ms(ipt.get("small_load_s")), "fresh netns")
        table.add_section()
    row("ratio podnet/iptables full", _x(ratios.get("full_sync_podnet_vs_iptables")), "full sync vs full restore")
    row("ratio podnet/iptables change", _x(ratios.get("change_podnet_vs_iptables")), "vs the service's chains alone")
    row(
        "ratio podnet/kube-proxy partial",
        _x(ratios.get("change_podnet_vs_kube_partial")),
        "vs kube-proxy's partial sync",
    )
    table.add_section()
    if con:
        row(
            "connect() to one VIP",
            "",
            f"{con.get('vip')}: the last of KUBE-SERVICES; {con.get('rounds')} interleaved rounds of "
            f"{con.get('connects')} sequential connects per case, client -> router (rules) -> server; "
            f"client pinned to CPU {con.get('client_cpu')}",
        )
        for key in (f"nft_{SMALL}", f"nft_{SERVICES}", f"ipt_{SMALL}", f"ipt_{SERVICES}"):
            c = con.get(key)
            if not c:
                continue
            extra = f", [red]{c['failures']} failed[/]" if c.get("failures") else ""
            extra += ", [yellow]cut short by the time limit[/]" if c.get("cut_short") else ""
            row(
                f"  {c['label']}",
                _us(c["mean_us"]),
                f"median of {len(c['round_means_us'])} round means ({min(c['round_means_us'])}-"
                f"{max(c['round_means_us'])}); "
                f"p50 {_us(c['p50_us'])}, p99 {_us(c['p99_us'])}; {c['samples']} connects{extra}",
            )
        p50 = {k: v["p50_us"] for k, v in con.items() if isinstance(v, dict) and "p50_us" in v}
        nft_p50 = p50.get(f"nft_{SERVICES}"), p50.get(f"nft_{SMALL}")
        row(
            "ratio podnet 10k/10",
            _x(ratios.get("connect_podnet_10k_vs_10")),
            "mean connect time"
            + (f" (p50: {nft_p50[0] / nft_p50[1]:.2f}x)" if nft_p50[0] is not None and nft_p50[1] else ""),
        )
        row("ratio iptables 10k/10", _x(ratios.get("connect_iptables_10k_vs_10")), "mean connect time")
        row("ratio podnet/iptables at 10k", _x(ratios.get("connect_podnet_vs_iptables_10k")), "mean connect time")
    if ct := out.get("conntrack"):
        table.add_section()
        what = f"{ct['services']} UDP services losing {ct['gone']} of {ct['endpoints']} endpoints"
        row(
            "conntrack clean-up, podnet (netlink)",
            _ms(ct.get("netlink_s")),
            f"{what}: one dump, every delete in one send; median of "
            f"{', '.join(str(v) for v in ct.get('netlink_runs_ms', []))} (ms)",
        )
        row(
            "  pyroute2's conntrack",
            _ms(ct.get("pyroute2_s")),
            f"the same through pyroute2 (a request per delete); median of "
            f"{', '.join(str(v) for v in ct.get('pyroute2_runs_ms', []))} (ms)",
        )
        row(
            "  podnet before: nsenter conntrack -D",
            _s(ct.get("old_s")),
            f"{ct.get('old_processes', '?'):,} processes, one per service address x removed endpoint",
        )
        row("ratio before/netlink", _x(ratios.get("conntrack_old_vs_netlink")), "how many times faster netlink is")
        row(
            "ratio pyroute2/netlink",
            _x(ratios.get("conntrack_pyroute2_vs_netlink")),
            "how many times faster netlink is",
        )
    console.print(table)
    for t in out.get("targets", []):
        verdict = "[bold green]OK[/]" if t["met"] else "[bold red]MISSED[/]"
        fmt = {"s": "{:.3f} s", "ms": "{:.2f} ms", "x": "{:.3f}x"}[t["unit"]]
        value = fmt.format(t["value"]) if t["value"] is not None else escape(t.get("error") or "-")
        console.print(f"target: {t['name']}: {value} (limit {fmt.format(t['limit'])}) {verdict}")

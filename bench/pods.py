"""The pods benchmark: N pods on two host-gw nodes, built three ways and timed.

1. podnet: ``podnet.cluster.up(file)`` in-process (and once through the CLI, to include
   interpreter start), then ``down``.
2. A plain shell script of ``ip`` commands building the same topology: one ``ip netns add``
   per pod, a veth pair into the node's ``cni0`` bridge, address, default route; a switch
   namespace joining the nodes' underlay veths; host-gw routes between the nodes.
3. The reference CNI ``bridge`` plugin with ``host-local`` IPAM, exec'd once per pod inside
   the node's namespace (the plugin creates ``cni0`` in the namespace it runs in). Only the
   ADD execs are timed per pod; the pods' namespaces are created (and timed) beforehand.

All addresses (10.244.0.0/16 pods, 172.31.0.0/24 underlay) exist only inside namespaces
named with this run's prefix; after each build one pod pings a pod on the other node and
one on its own node, so every variant is known to have built a working network.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import nsutil
from bench.nsutil import BenchError

CNI_DIR = "/usr/lib/cni"
NODE_MASK = 24
HOSTS_PER_NODE = 2 ** (32 - NODE_MASK) - 3  # minus network, broadcast and the cni0 gateway
IP_EXECS_PER_POD = 7
UP_TARGET_RATIO = 0.5  # podnet up per pod <= 0.5 x CNI ADD per pod
DOWN_TARGET_S = 2.0  # down of 200 pods
DOWN_TARGET_PODS = 200
# Functions podnet.cluster.up calls by module-global name, timed as stages of one up.
UP_STAGES = ("load_file", "plan", "observe_cluster", "diff", "apply")


@dataclass
class Context:
    """What one benchmark run shares: its names, its temp dir, where to report progress."""

    pods: int
    tmp: Path
    prefix: str  # every baseline namespace starts with it: pbench<pid>_
    cluster: str  # podnet's cluster: its namespaces start with podnet_<cluster>_
    log: Console
    profile: bool = False
    repeat: int = 3  # podnet's in-process up/down cycles; the median is reported
    nodes: int = 2

    @property
    def podnet_prefix(self) -> str:
        return f"podnet_{self.cluster}_"

    @property
    def markers(self) -> list[str]:
        """Strings found only in the command line or environment of this run's processes."""
        return [self.prefix, self.podnet_prefix, f"{self.cluster}\0", str(self.tmp)]


# --- the topology, shared by all three builds ---------------------------------------------


def node_name(k: int) -> str:
    return f"node-{k + 1}"


def pod_name(i: int) -> str:
    return f"p{i:04d}"


def node_of(ctx: Context, i: int) -> int:
    return i % ctx.nodes


def pod_ip(ctx: Context, i: int) -> str:
    return f"10.244.{node_of(ctx, i)}.{2 + i // ctx.nodes}"


def gateway(k: int) -> str:
    return f"10.244.{k}.1"


def block(k: int) -> str:
    return f"10.244.{k}.0/{NODE_MASK}"


def underlay_ip(k: int) -> str:
    return f"172.31.0.{2 + k}"


def mac_for_ip(ip: str) -> str:
    return "0a:58:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def check_size(ctx: Context) -> None:
    per_node = -(-ctx.pods // ctx.nodes)
    if ctx.pods < 1 or per_node > HOSTS_PER_NODE:
        raise BenchError(f"--pods must be 1..{HOSTS_PER_NODE * ctx.nodes} (a /{NODE_MASK} per node), not {ctx.pods}")


def cluster_yaml(ctx: Context) -> str:
    """A Cluster like examples/quickstart.yaml plus N pods without ports (so no server runs)."""
    nodes = ", ".join(f"{{name: {node_name(k)}}}" for k in range(ctx.nodes))
    docs = [
        f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {ctx.cluster}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: {NODE_MASK}
  serviceCIDR: 10.96.0.0/12
  backend: host-gw
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{nodes}]
"""
    ]
    for i in range(ctx.pods):
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: {pod_name(i)}, labels: {{app: bench}}}}
spec:
  nodeName: {node_name(node_of(ctx, i))}
  containers: [{{name: c}}]
"""
        )
    return "---\n".join(docs)


@dataclass(frozen=True)
class Names:
    """Namespace names of one baseline build: <prefix><tag>_sw, _n1, _p0000..."""

    prefix: str
    tag: str

    @property
    def switch(self) -> str:
        return f"{self.prefix}{self.tag}_sw"

    def node(self, k: int) -> str:
        return f"{self.prefix}{self.tag}_n{k + 1}"

    def pod(self, i: int) -> str:
        return f"{self.prefix}{self.tag}_{pod_name(i)}"

    def all(self, ctx: Context) -> list[str]:
        return [self.switch, *(self.node(k) for k in range(ctx.nodes)), *(self.pod(i) for i in range(ctx.pods))]


def infra_script(ctx: Context, n: Names, with_cni0: bool) -> str:
    """Switch and node namespaces: underlay veths on a switch bridge, host-gw routes, cni0."""
    lines = [
        "set -e",
        f"ip netns add {n.switch}",
        f"ip -n {n.switch} link set lo up",
        f"ip -n {n.switch} link add br0 type bridge stp_state 0",
        f"ip -n {n.switch} link set br0 up",
    ]
    for k in range(ctx.nodes):
        node, port = n.node(k), f"sw{k + 1}"
        lines += [
            f"ip netns add {node}",
            f"ip -n {node} link set lo up",
            f"ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1",
            f"ip -n {n.switch} link add {port} type veth peer name eth0 netns {node}",
            f"ip -n {n.switch} link set {port} master br0 up",
            f"ip -n {node} addr add {underlay_ip(k)}/24 dev eth0",
            f"ip -n {node} link set eth0 up",
        ]
        if with_cni0:
            lines += [
                f"ip -n {node} link add cni0 type bridge stp_state 0",
                f"ip -n {node} addr add {gateway(k)}/{NODE_MASK} dev cni0",
                f"ip -n {node} link set cni0 up",
            ]
        for other in range(ctx.nodes):
            if other != k:
                lines.append(f"ip -n {node} route add {block(other)} via {underlay_ip(other)} dev eth0")
    return "\n".join(lines) + "\n"


def pods_script(ctx: Context, n: Names) -> str:
    """Per pod what podnet does per pod, one ``ip`` exec per step (IP_EXECS_PER_POD of them)."""
    lines = ["set -e"]
    for i in range(ctx.pods):
        k = node_of(ctx, i)
        node, pod, ip, veth = n.node(k), n.pod(i), pod_ip(ctx, i), f"veth{i:05d}"
        lines += [
            f"ip netns add {pod}",
            f"ip -n {node} link add {veth} type veth peer name eth0 address {mac_for_ip(ip)} netns {pod}",
            f"ip -n {node} link set {veth} master cni0 up",
            f"ip -n {pod} link set lo up",
            f"ip -n {pod} addr add {ip}/{NODE_MASK} dev eth0",
            f"ip -n {pod} link set eth0 up",
            f"ip -n {pod} route add default via {gateway(k)} dev eth0",
        ]
    return "\n".join(lines) + "\n"


def netns_add_script(names: list[str]) -> str:
    return "set -e\n" + "".join(f"ip netns add {name}\n" for name in names)


def netns_del_script(names: list[str]) -> str:
    return "set -e\n" + "".join(f"ip netns del {name}\n" for name in names)


def run_script(ctx: Context, name: str, text: str) -> float:
    """Run a bash script (kept in the temp dir for inspection); returns its wall time."""
    path = ctx.tmp / name
    path.write_text(text)
    start = time.perf_counter()
    nsutil.run(["bash", str(path)])
    return time.perf_counter() - start


# --- checks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRef:
    netns: str
    node: int
    ip: str


def reach(pods: list[PodRef]) -> dict[str, bool]:
    """Ping from the first pod to a pod on another node and to one on its own node."""
    if not pods:
        return {}
    first = pods[0]
    out: dict[str, bool] = {}
    other = next((p for p in pods if p.node != first.node), None)
    same = next((p for p in pods[1:] if p.node == first.node), None)
    if other is not None:
        out["other_node"] = nsutil.icmp_echo(first.netns, other.ip)
    if same is not None:
        out["same_node"] = nsutil.icmp_echo(first.netns, same.ip)
    return out


def _count(ctx: Context, prefix: str, what: str, exact: bool = True) -> int:
    """Check the namespaces built: a switch, the nodes, the pods (podnet may add its own)."""
    want = ctx.pods + ctx.nodes + 1
    have = len(nsutil.list_prefixed(prefix))
    if have < want or (exact and have != want):
        raise BenchError(f"{what}: {have} namespaces with prefix {prefix}, expected {want}")
    return have


# --- 1. podnet ----------------------------------------------------------------------------


@contextmanager
def stage_timers(module: Any, names: tuple[str, ...]) -> Iterator[dict[str, float]]:
    """Time the functions ``module`` calls by global name; put the originals back after."""
    times: dict[str, float] = {}
    saved: dict[str, Callable] = {}
    for name in names:
        fn = getattr(module, name, None)
        if not callable(fn):
            continue
        saved[name] = fn

        def timed(*args: Any, _fn: Callable = fn, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                times[_name] = times.get(_name, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)
    try:
        yield times
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


def _podnet_reach(podnet_cluster: Any, cluster: str) -> dict[str, bool]:
    """Ping between podnet's pods, found through ``podnet.cluster.status``."""
    try:
        status = podnet_cluster.status(cluster)
        node_index = {n["name"]: k for k, n in enumerate(status["nodes"])}
        pods = [PodRef(p["netns"], node_index[p["node"]], p["ip"]) for p in status["pods"]]
    except (KeyError, TypeError) as exc:  # status() changed shape: the figures still count
        return {f"not checked (status(): {exc!r})": False}
    return reach(sorted(pods, key=lambda p: p.netns))


def _podnet_cli(*args: str) -> float:
    start = time.perf_counter()
    nsutil.run([sys.executable, "-m", "podnet", *args])
    return time.perf_counter() - start


def bench_podnet(ctx: Context, out: dict) -> None:
    from podnet import cluster as podnet_cluster

    spec = ctx.tmp / "cluster.yaml"
    spec.write_text(cluster_yaml(ctx))
    res = out["podnet"] = {"spec": "cluster.yaml (in the run's temp dir)"}

    ups: list[float] = []
    downs: list[float] = []
    up_stages: list[dict[str, float]] = []
    for r in range(ctx.repeat):
        ctx.log.print(f"podnet: up {ctx.pods} pods in-process ({r + 1}/{ctx.repeat})")
        nsutil.settle()
        with stage_timers(podnet_cluster, UP_STAGES) as stages:
            start = time.perf_counter()
            result = podnet_cluster.up(str(spec))
            up_s = time.perf_counter() - start
        ups.append(up_s)
        up_stages.append({**stages, "other": up_s - sum(stages.values())})
        res["changes"] = len(result.changes)
        res["namespaces"] = _count(ctx, ctx.podnet_prefix, "podnet up", exact=False)
        if r == 0:
            res["reachable"] = _podnet_reach(podnet_cluster, ctx.cluster)

            ctx.log.print("podnet: up again (converged: expect no changes)")
            with stage_timers(podnet_cluster, UP_STAGES) as stages:
                start = time.perf_counter()
                again = podnet_cluster.up(str(spec))
                up_again_s = time.perf_counter() - start
            res.update(up_again_s=up_again_s, up_again_changes=len(again.changes))
            res["up_again_stages_s"] = {**stages, "other": up_again_s - sum(stages.values())}
            if again.changes:
                res["up_again_sample"] = [c.describe() for c in again.changes[:10]]

        ctx.log.print("podnet: down in-process")
        start = time.perf_counter()
        podnet_cluster.down(ctx.cluster)
        downs.append(time.perf_counter() - start)
        if nsutil.list_prefixed(ctx.podnet_prefix):
            raise BenchError(f"podnet down left namespaces {ctx.podnet_prefix}*")
        res["down_kernel_cpu_s"] = nsutil.settle()
    # The median of the runs: the machine may be shared, and one slow run says little.
    median_run = sorted(range(len(ups)), key=ups.__getitem__)[(len(ups) - 1) // 2]
    res.update(
        up_s=ups[median_run],
        up_stages_s=up_stages[median_run],
        up_ms_per_pod=ups[median_run] / ctx.pods * 1000,
        up_runs_s=ups,
        down_s=statistics.median(downs),
        down_runs_s=downs,
    )

    ctx.log.print("podnet: up and down through the CLI (python -m podnet)")
    start = time.perf_counter()
    nsutil.run([sys.executable, "-c", "import podnet.cli"])
    res["cli_import_s"] = time.perf_counter() - start
    nsutil.settle()
    res["cli_up_s"] = _podnet_cli("up", str(spec))
    res["cli_up_ms_per_pod"] = res["cli_up_s"] / ctx.pods * 1000
    _count(ctx, ctx.podnet_prefix, "podnet CLI up", exact=False)
    res["cli_down_s"] = _podnet_cli("down", "-c", ctx.cluster)
    if nsutil.list_prefixed(ctx.podnet_prefix):
        raise BenchError(f"podnet CLI down left namespaces {ctx.podnet_prefix}*")

    if ctx.profile:
        ctx.log.print("podnet: profiling one more in-process up (not part of the figures)")
        nsutil.settle()
        profiler = cProfile.Profile()
        profiler.enable()
        podnet_cluster.up(str(spec))
        profiler.disable()
        podnet_cluster.down(ctx.cluster)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)
    nsutil.settle()


# --- 2. a shell script of ip commands -------------------------------------------------------


def bench_ip_script(ctx: Context, out: dict) -> None:
    n = Names(ctx.prefix, "ip")
    res = out["ip_script"] = {"ip_execs_per_pod": IP_EXECS_PER_POD}
    ctx.log.print(f"ip script: {ctx.pods} pods, {IP_EXECS_PER_POD} ip commands each")
    res["infra_s"] = run_script(ctx, "ip-infra.sh", infra_script(ctx, n, with_cni0=True))
    nsutil.settle()
    up_s = run_script(ctx, "ip-pods.sh", pods_script(ctx, n))
    res.update(up_s=up_s, up_ms_per_pod=up_s / ctx.pods * 1000)
    _count(ctx, f"{ctx.prefix}ip_", "ip script")
    res["reachable"] = reach([PodRef(n.pod(i), node_of(ctx, i), pod_ip(ctx, i)) for i in range(ctx.pods)])
    res["down_s"] = run_script(ctx, "ip-down.sh", netns_del_script(n.all(ctx)))
    res["down_kernel_cpu_s"] = nsutil.settle()


# --- 3. the reference CNI bridge plugin -----------------------------------------------------


def cni_config(ctx: Context, k: int, ipam_dir: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": f"{ctx.prefix}{node_name(k)}",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": block(k), "gateway": gateway(k)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(ipam_dir),
            },
        }
    )


def bench_cni(ctx: Context, out: dict, mode: str) -> None:
    """``mode`` "ip-netns-exec": ``ip netns exec <node> bridge``, the plugin behind ``ip``'s
    own exec; "direct": exec'd straight from a thread that entered the node's namespace,
    as a container runtime execs it (no extra process, no mount namespace)."""
    tag = "cni" if mode == "ip-netns-exec" else "cnid"
    key = "cni" if mode == "ip-netns-exec" else "cni_direct"
    n = Names(ctx.prefix, tag)
    res = out[key] = {"exec": mode}
    ctx.log.print(f"CNI bridge plugin ({mode}): {ctx.pods} pods")
    ipam_dir = ctx.tmp / f"ipam-{tag}"
    ipam_dir.mkdir()
    configs = [cni_config(ctx, k, ipam_dir) for k in range(ctx.nodes)]
    res["infra_s"] = run_script(ctx, f"{tag}-infra.sh", infra_script(ctx, n, with_cni0=False))
    nsutil.settle()
    create_s = run_script(ctx, f"{tag}-netns.sh", netns_add_script([n.pod(i) for i in range(ctx.pods)]))
    res.update(netns_create_s=create_s, netns_create_ms_per_pod=create_s / ctx.pods * 1000)
    nsutil.settle()

    def call(command: str, i: int) -> tuple[float, str]:
        k = node_of(ctx, i)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"{ctx.prefix}{tag}-{i}",
            "CNI_NETNS": f"{nsutil.RUN_NETNS}/{n.pod(i)}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
        }
        argv = [f"{CNI_DIR}/bridge"]
        if mode == "ip-netns-exec":
            argv = ["ip", "netns", "exec", n.node(k), *argv]
        start = time.perf_counter()
        proc = subprocess.run(argv, input=configs[k], env=env, capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(
                f"CNI {command} of pod {i} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()}"
            )
        return took, proc.stdout

    def each(command: str) -> list[tuple[int, float, str]]:
        """``command`` for every pod, node by node; (pod, seconds, stdout) each."""
        done: list[tuple[int, float, str]] = []
        for k in range(ctx.nodes):
            members = [i for i in range(ctx.pods) if node_of(ctx, i) == k]

            def loop(members: list[int] = members) -> None:
                for i in members:
                    if nsutil.STOP.is_set():
                        raise KeyboardInterrupt
                    done.append((i, *call(command, i)))

            if mode == "ip-netns-exec":
                loop()
            else:
                nsutil.in_netns(n.node(k), loop)
        return done

    start = time.perf_counter()
    added = each("ADD")
    res["add_total_s"] = time.perf_counter() - start
    add_ms = [took * 1000 for _, took, _ in added]
    res.update(
        add_ms_per_pod=statistics.fmean(add_ms),
        add_p50_ms=statistics.median(add_ms),
        add_p95_ms=sorted(add_ms)[int(0.95 * (len(add_ms) - 1))],
    )
    _count(ctx, f"{ctx.prefix}{tag}_", f"CNI ({mode})")
    ips = {i: json.loads(stdout)["ips"][0]["address"].split("/")[0] for i, _, stdout in added}
    res["reachable"] = reach([PodRef(n.pod(i), node_of(ctx, i), ips[i]) for i in range(ctx.pods)])

    start = time.perf_counter()
    each("DEL")
    res["del_s"] = time.perf_counter() - start
    res["del_ms_per_pod"] = res["del_s"] / ctx.pods * 1000
    res["down_s"] = run_script(ctx, f"{tag}-down.sh", netns_del_script(n.all(ctx)))
    res["down_kernel_cpu_s"] = nsutil.settle()


# --- the suite ----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: float
    limit: float
    unit: str
    met: bool = field(init=False)

    def __post_init__(self) -> None:
        self.met = self.value <= self.limit


def summarize(ctx: Context, out: dict) -> None:
    """Ratios and targets from whatever phases completed."""
    podnet, ip, cni, direct = (out.get(k, {}) for k in ("podnet", "ip_script", "cni", "cni_direct"))
    up = podnet.get("up_ms_per_pod")
    ratios: dict[str, float] = {}
    if up is not None:
        for name, base in (
            ("podnet_vs_cni", cni.get("add_ms_per_pod")),
            ("podnet_vs_cni_direct", direct.get("add_ms_per_pod")),
            ("podnet_vs_ip_script", ip.get("up_ms_per_pod")),
        ):
            if base:
                ratios[name] = up / base
    if podnet.get("cli_up_ms_per_pod") and cni.get("add_ms_per_pod"):
        ratios["podnet_cli_vs_cni"] = podnet["cli_up_ms_per_pod"] / cni["add_ms_per_pod"]
    out["ratios"] = ratios
    targets: list[Target] = []
    if up is not None and cni.get("add_ms_per_pod"):
        targets.append(
            Target("podnet up per pod <= 0.5 x CNI ADD per pod", up, UP_TARGET_RATIO * cni["add_ms_per_pod"], "ms")
        )
    if up is not None and direct.get("add_ms_per_pod"):
        targets.append(
            Target(
                "  same, CNI exec'd directly (no ip netns exec)",
                up,
                UP_TARGET_RATIO * direct["add_ms_per_pod"],
                "ms",
            )
        )
    if podnet.get("down_s") is not None:
        scale = ctx.pods / DOWN_TARGET_PODS
        label = f"podnet down of {DOWN_TARGET_PODS} pods < {DOWN_TARGET_S:g} s"
        if ctx.pods != DOWN_TARGET_PODS:
            label += f" (scaled to {ctx.pods} pods)"
        targets.append(Target(label, podnet["down_s"], DOWN_TARGET_S * scale, "s"))
    out["targets"] = [
        {"name": t.name.strip(), "value": t.value, "limit": t.limit, "unit": t.unit, "met": t.met} for t in targets
    ]


def run(ctx: Context, out: dict) -> None:
    """Fill ``out`` phase by phase (a failure leaves what was measured so far)."""
    check_size(ctx)
    out.update(pods=ctx.pods, nodes=ctx.nodes, cluster=ctx.cluster, prefix=ctx.prefix)
    try:
        bench_podnet(ctx, out)
        bench_ip_script(ctx, out)
        bench_cni(ctx, out, "ip-netns-exec")
        bench_cni(ctx, out, "direct")
    finally:
        summarize(ctx, out)


def cleanup(ctx: Context) -> list[str]:
    """Remove everything this run may have created; returns what could not be removed."""
    problems: list[str] = []
    strays = nsutil.find_processes(ctx.markers)
    if strays:  # an ip or plugin cut short by an interrupt: end it before removing its work
        nsutil.kill_processes(strays)
    if "podnet" in sys.modules and (nsutil.list_prefixed(ctx.podnet_prefix) or _podnet_state(ctx)):
        try:
            from podnet import cluster as podnet_cluster

            podnet_cluster.down(ctx.cluster)
        except Exception as exc:
            problems.append(f"podnet down -c {ctx.cluster} failed: {exc}")
    for _ in range(3):
        left = nsutil.list_prefixed(ctx.podnet_prefix) + nsutil.list_prefixed(ctx.prefix)
        if not left:
            break
        nsutil.delete_netns(left)
        time.sleep(0.1)
    left = nsutil.list_prefixed(ctx.podnet_prefix) + nsutil.list_prefixed(ctx.prefix)
    if left:
        problems.append(f"namespaces left behind: {', '.join(left)}")
    strays = nsutil.find_processes(ctx.markers)
    if strays:
        problems.append(f"processes of this run still running: {strays}")
    return problems


def _podnet_state(ctx: Context) -> bool:
    from podnet.store import cluster_dir

    return cluster_dir(ctx.cluster).exists()


# --- output -------------------------------------------------------------------------------


def _ms(value: float | None, per_pod: bool = False) -> str:
    return "-" if value is None else f"{value:.2f} ms" + ("/pod" if per_pod else "")


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.0f}" for k, v in stages.items()) + " (ms)"


def _deferred(res: dict) -> str:
    cpu = res.get("down_kernel_cpu_s")
    return "" if cpu is None else f"then kernel threads freeing namespaces: {cpu:.2f} s CPU"


def _reach(res: dict) -> str:
    r = res.get("reachable")
    if not r:
        return "-"
    return ", ".join(f"{k.replace('_', ' ')} {'ok' if v else '[bold red]FAILED[/]'}" for k, v in r.items())


def render(out: dict, console: Console) -> None:
    from rich.markup import escape

    from bench.report import measure_table

    podnet, ip, cni, direct = (out.get(k, {}) for k in ("podnet", "ip_script", "cni", "cni_direct"))
    ratios = out.get("ratios", {})
    table = measure_table(f"pods benchmark: {out.get('pods')} pods on {out.get('nodes')} nodes (host-gw)")
    row = table.add_row

    if podnet:
        row(
            "podnet up (in-process)",
            _ms(podnet.get("up_ms_per_pod"), per_pod=True),
            f"total {_s(podnet.get('up_s'))}, {podnet.get('changes', '?')} changes; includes creating the namespaces",
        )
        if podnet.get("up_runs_s"):
            runs = ", ".join(f"{v:.3f}" for v in podnet["up_runs_s"])
            row("  runs", "", f"median of {len(podnet['up_runs_s'])}: {runs} (s)")
        if podnet.get("up_stages_s"):
            row("  stages", "", _stages(podnet["up_stages_s"]))
        if "up_again_s" in podnet:
            changes = podnet["up_again_changes"]
            row(
                "podnet up again (converged)",
                _s(podnet["up_again_s"]),
                f"{changes} changes" + ("" if changes == 0 else " [bold red](expected 0)[/]"),
            )
            row("  stages", "", _stages(podnet.get("up_again_stages_s", {})))
            for line in podnet.get("up_again_sample", []):
                row("", "", f"[red]{escape(line)}[/]")
        row(
            "podnet down total (in-process)",
            _s(podnet.get("down_s")),
            f"median of {', '.join(f'{v:.3f}' for v in podnet.get('down_runs_s', []))}; {_deferred(podnet)}",
        )
        if "cli_up_s" in podnet:
            row(
                "podnet up (CLI)",
                _ms(podnet["cli_up_ms_per_pod"], per_pod=True),
                f"total {_s(podnet['cli_up_s'])}, includes interpreter start + imports "
                f"({_s(podnet.get('cli_import_s'))} alone)",
            )
        if "cli_down_s" in podnet:
            row("podnet down total (CLI)", _s(podnet["cli_down_s"]), "")
        row("  ping from a pod", "", _reach(podnet))
        table.add_section()
    if ip:
        row(
            "ip script up",
            _ms(ip.get("up_ms_per_pod"), per_pod=True),
            f"total {_s(ip.get('up_s'))}, {ip.get('ip_execs_per_pod')} ip execs per pod",
        )
        row("ip script down total", _s(ip.get("down_s")), "ip netns del per namespace; " + _deferred(ip))
        row("  ping from a pod", "", _reach(ip))
        table.add_section()
    for label, res in (("ip netns exec", cni), ("direct exec", direct)):
        if not res:
            continue
        row(
            f"CNI ADD ({label})",
            _ms(res.get("add_ms_per_pod"), per_pod=True),
            f"p50 {_ms(res.get('add_p50_ms'))}, p95 {_ms(res.get('add_p95_ms'))}; "
            f"netns created before: {_ms(res.get('netns_create_ms_per_pod'), per_pod=True)}",
        )
        row(
            f"CNI DEL total ({label})",
            _s(res.get("del_s")),
            f"then ip netns del: {_s(res.get('down_s'))}; {_deferred(res)}" if res.get("down_s") is not None else "",
        )
        row("  ping from a pod", "", _reach(res))
        table.add_section()
    row("ratio podnet/CNI", _x(ratios.get("podnet_vs_cni")), "per pod: in-process up vs ADD (ip netns exec)")
    row("ratio podnet/CNI direct", _x(ratios.get("podnet_vs_cni_direct")), "per pod: in-process up vs ADD (direct)")
    row("ratio podnet/ip-script", _x(ratios.get("podnet_vs_ip_script")), "per pod: in-process up vs ip script")
    row("ratio podnet CLI/CNI", _x(ratios.get("podnet_cli_vs_cni")), "per pod: CLI up vs ADD (ip netns exec)")
    console.print(table)
    for t in out.get("targets", []):
        verdict = "[bold green]OK[/]" if t["met"] else "[bold red]MISSED[/]"
        fmt = "{:.2f} {}" if t["unit"] == "ms" else "{:.3f} {}"
        value, limit = fmt.format(t["value"], t["unit"]), fmt.format(t["limit"], t["unit"])
        console.print(f"target: {t['name']}: {value} (limit {limit}) {verdict}")

"""The throughput benchmark: one full-size TCP stream (iperf3) over podnet's data paths.

Four paths, measured in the same run:

1. ``veth``: a raw veth pair between two bare namespaces ``pbtp<pid>_a`` / ``_b``
   (10.199.0.1/30 and .2/30, only inside them): the baseline.
2. ``same_node``: pod to pod on one node of a 2-node host-gw cluster (veth, cni0, veth).
3. ``host_gw``: pod to pod across the two nodes of that cluster (one underlay segment).
4. ``vxlan``: pod to pod across two racks joined by two spine routers (the form of
   ``examples/racks.yaml``, without the edge), VXLAN overlay.
5. ``vxlan_unhashed``: the same, in a cluster whose nodes run without podnet's flow-hash
   program on ``vxlan0`` (detached after ``up``): the VXLAN device's own behaviour, one
   cached route per remote node. Beside ``vxlan``, what spreading flows per flow costs (the
   program marks every packet, so each one's route is looked up: no dst cache).

The clusters are brought up with ``podnet.cluster.up`` from files generated in the run's
temp dir, under the names ``bt<pid>a`` and ``bt<pid>b`` (state in ``PODNET_STATE_DIR``, a
temp dir), and always taken down with ``podnet.cluster.down`` by :func:`cleanup`. iperf3 runs
inside the namespaces (``ip netns exec``): ``iperf3 -s -1`` in the server's, the client with
``-J``. Traffic never leaves namespaces this run or podnet created.

A single stream through veths is bound by the CPU of the sending process (the whole path,
every namespace, runs in its softirq), so on a shared machine other load moves the figures
by tens of percent from one second to the next. Hence: ROUNDS rounds, each measuring every
path once, back to back, in an order rotated from round to round; a ratio is the median over
the rounds of the ratio within a round (both figures taken under the same load). Each stream
also reports Gbit per CPU-second of the two iperf3 processes, which load changes far less
(without IRQ time accounting the softirq work of the path is charged to them).

Targets (issue 3): same-node pod-to-pod >= 0.9 x the raw veth pair; vxlan >= 0.85 x host-gw.
Beside the figures the run records what decides them: MTU and MSS, the offloads of every
interface on the paths against the baseline veth's, the bridge netfilter sysctl and the
nftables tables of the nodes (conntrack), the VXLAN device's options.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from bench import nsutil
from bench.nsutil import BenchError

PID = os.getpid()
PREFIX = f"pbtp{PID}_"
RAW_A, RAW_B = f"{PREFIX}a", f"{PREFIX}b"
RAW_A_IP, RAW_B_IP = "10.199.0.1", "10.199.0.2"
HOSTGW, VXLAN, VXLAN1, UNHASHED = f"bt{PID}a", f"bt{PID}b", f"bt{PID}c", f"bt{PID}d"
DURATION_S = 2
ROUNDS = 5
PORT = 5201
LISTEN_TIMEOUT_S = 5.0
SAME_NODE_TARGET = 0.9  # same-node pod-to-pod / raw veth pair
VXLAN_TARGET = 0.85  # vxlan across racks / host-gw across nodes
# Offloads that decide the cost of a TCP stream through veths, bridges and VXLAN.
FEATURES = (
    "rx-checksumming",
    "tx-checksumming",
    "scatter-gather",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
    "rx-udp-gro-forwarding",
)

_servers: list[subprocess.Popen] = []
_brought_up: list[str] = []


@dataclass(frozen=True)
class Path:
    key: str
    label: str
    client_ns: str
    server_ns: str
    server_ip: str


# --- building ----------------------------------------------------------------------------------


def hostgw_yaml() -> str:
    """Two nodes on one segment (examples/quickstart.yaml's cluster), pods a, b on node-1, c on node-2."""
    return f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {HOSTGW}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  backend: host-gw
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{{name: node-1}}, {{name: node-2}}]
{_pods(("a", "node-1"), ("b", "node-1"), ("c", "node-2"))}"""


def vxlan_segment_yaml() -> str:
    """The host-gw cluster's single segment, with the VXLAN backend: the overlay's own cost."""
    return hostgw_yaml().replace(f"name: {HOSTGW}}}", f"name: {VXLAN1}}}").replace("backend: host-gw", "backend: vxlan")


def vxlan_yaml() -> str:
    """examples/racks.yaml's underlay (two racks, two spines) without the edge; x on node-1, y on node-2."""
    return f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {VXLAN}}}
spec:
  podCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/12
  backend: vxlan
  vxlan: {{vni: 1, port: 4789}}
  underlay:
    mtu: 1500
    subnets:
    - {{name: rack-a, cidr: 172.31.1.0/24}}
    - {{name: rack-b, cidr: 172.31.2.0/24}}
    routers:
    - {{name: spine-1, subnets: [rack-a, rack-b]}}
    - {{name: spine-2, subnets: [rack-a, rack-b]}}
  nodes:
  - {{name: node-1, subnet: rack-a}}
  - {{name: node-2, subnet: rack-b}}
{_pods(("x", "node-1"), ("y", "node-2"))}"""


def unhashed_yaml() -> str:
    return vxlan_yaml().replace(f"name: {VXLAN}}}", f"name: {UNHASHED}}}")


def detach_flow_hash(status: dict) -> None:
    """Take podnet's flow-hash program off every node's vxlan0 (what the VXLAN device does alone)."""
    from pyroute2 import IPRoute

    from podnet.kernel import netns, tcbpf

    for node in status["nodes"]:
        with netns.entered(node["netns"]):
            ipr = IPRoute()
        try:
            tcbpf.detach_egress(ipr, ipr.link_lookup(ifname="vxlan0")[0])
        finally:
            ipr.close()


def _pods(*pods: tuple[str, str]) -> str:
    return "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
        f"spec: {{nodeName: {node}, containers: [{{name: c}}]}}\n"
        for name, node in pods
    )


def build_raw() -> None:
    """The baseline: a veth pair between two bare namespaces."""
    script = f"""set -e
ip netns add {RAW_A}
ip netns add {RAW_B}
ip -n {RAW_A} link add eth0 type veth peer name eth0 netns {RAW_B}
ip -n {RAW_A} addr add {RAW_A_IP}/30 dev eth0
ip -n {RAW_B} addr add {RAW_B_IP}/30 dev eth0
for ns in {RAW_A} {RAW_B}; do ip -n $ns link set lo up; ip -n $ns link set eth0 up; done
"""
    nsutil.run(["bash", "-c", script])


def bring_up(ctx: Any, name: str, text: str) -> tuple[dict, float]:
    """``podnet.cluster.up`` on a generated file; its status and the seconds it took."""
    from podnet import cluster as podnet_cluster

    path = ctx.tmp / f"throughput-{name}.yaml"
    path.write_text(text)
    _brought_up.append(name)
    start = time.perf_counter()
    podnet_cluster.up(str(path))
    took = time.perf_counter() - start
    return podnet_cluster.status(name), took


def _pod(status: dict, name: str) -> dict:
    for pod in status["pods"]:
        if pod["namespace"] == "default" and pod["name"] == name:
            return pod
    raise BenchError(f"throughput: pod {name} missing from podnet status of {status['cluster']}")


def _node_ns(status: dict, node: str) -> str:
    return next(n["netns"] for n in status["nodes"] if n["name"] == node)


# --- measuring -----------------------------------------------------------------------------------


def _listening(netns: str, port: int) -> bool:
    def probe() -> bool:
        # /proc/thread-self/net: the namespace of this thread, not of the process.
        with open("/proc/thread-self/net/tcp") as f:
            rows = f.read().splitlines()[1:]
        return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)

    return nsutil.in_netns(netns, probe)


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ValueError):
        _servers.remove(proc)


def iperf(path: Path, seconds: int = DURATION_S) -> dict:
    """One TCP stream from the client to the server namespace; iperf3's figures."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", path.server_ns, "iperf3", "-s", "-1", "-B", path.server_ip, "-p", str(PORT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _servers.append(server)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not _listening(path.server_ns, PORT):
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().strip() if server.stderr else ""
                raise BenchError(f"throughput: iperf3 -s in {path.server_ns} did not listen: {err or 'timeout'}")
            time.sleep(0.02)
        argv = ["ip", "netns", "exec", path.client_ns, "iperf3", "-c", path.server_ip, "-p", str(PORT)]
        argv += ["-t", str(seconds), "-P", "1", "-J", "--connect-timeout", "3000"]
        try:
            report = json.loads(nsutil.run(argv))
        except BenchError as exc:
            # iperf3 -J prints its error as JSON on stdout: keep only the message.
            text = str(exc)
            with contextlib.suppress(ValueError):
                text = json.loads(text[text.index("{") :]).get("error", text)
            raise BenchError(f"throughput: iperf3 {path.label}: {text}") from None
    finally:
        _stop(server)
    end = report["end"]
    cpu = end.get("cpu_utilization_percent", {})
    gbit = end["sum_received"]["bits_per_second"] / 1e9
    busy = (cpu.get("host_total") or 0) + (cpu.get("remote_total") or 0)
    return {
        "gbit_s": gbit,
        "gbit_per_cpu_s": gbit / (busy / 100) if busy else None,
        "retransmits": end["sum_sent"].get("retransmits"),
        "mss": report["start"].get("tcp_mss_default"),
        "cpu_client_pct": cpu.get("host_total"),
        "cpu_server_pct": cpu.get("remote_total"),
    }


# --- what decides the figures ------------------------------------------------------------------


def _features(netns: str, ifname: str) -> dict[str, str]:
    if not shutil.which("ethtool"):
        return {}
    found = {}
    for line in nsutil.run(["ip", "netns", "exec", netns, "ethtool", "-k", ifname]).splitlines():
        name, _, value = line.strip().partition(": ")
        if name in FEATURES:
            found[name] = value
    return found


def _sysctl(netns: str, key: str) -> str | None:
    try:
        return nsutil.run(["ip", "netns", "exec", netns, "sysctl", "-n", key]).strip()
    except BenchError:
        return None  # br_netfilter not loaded: the key does not exist


def inspect_ns(netns: str) -> dict:
    """MTU, offloads (and VXLAN options) of each interface; bridge netfilter; nftables."""
    links = {}
    for link in json.loads(nsutil.run(["ip", "-n", netns, "-d", "-j", "link", "show"])):
        if link.get("ifname") == "lo":
            continue
        info = link.get("linkinfo", {})
        entry: dict[str, Any] = {
            "kind": info.get("info_kind"),
            "mtu": link.get("mtu"),
            "features": _features(netns, link["ifname"]),
        }
        if info.get("info_kind") == "vxlan":
            data = info.get("info_data", {})
            entry["vxlan"] = {k: data.get(k) for k in ("id", "port", "learning", "udp_csum") if k in data}
        links[link["ifname"]] = entry
    ruleset = nsutil.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"]) if shutil.which("nft") else ""
    return {
        "links": links,
        "bridge_nf_call_iptables": _sysctl(netns, "net.bridge.bridge-nf-call-iptables"),
        "nft_tables": [
            line.split(" {")[0][len("table ") :] for line in ruleset.splitlines() if line.startswith("table ")
        ],
        "nft_notrack": "notrack" in ruleset,
    }


TX_OFFLOADS = ("tx-checksumming", "scatter-gather", "tcp-segmentation-offload", "generic-segmentation-offload")


def offload_differences(config: dict) -> list[str]:
    """veths whose offloads differ from the baseline veth's; other devices with a TX offload off."""
    base = config.get(RAW_A, {}).get("links", {}).get("eth0", {}).get("features", {})
    found = []
    for netns, info in config.items():
        for ifname, link in info["links"].items():
            for name, value in link["features"].items():
                state = value.split()[0]
                if "[fixed]" in value:
                    continue  # not settable: nothing a configuration could change
                if link["kind"] == "veth":
                    want = base.get(name, "").split(" ")[0]
                    if want and state != want:
                        found.append(f"{netns}/{ifname}: {name} {value} (baseline veth: {base[name]})")
                elif (name in TX_OFFLOADS or name.startswith("tx-udp_tnl")) and state == "off":
                    found.append(f"{netns}/{ifname} ({link['kind']}): {name} {value}")
    return found


def facts(out: dict) -> list[str]:
    """What the recorded configuration says about the podnet paths (no judgement on the figures)."""
    config, nodes, lines = out.get("config", {}), out.get("node_netns", {}), []
    hg = config.get(nodes.get(HOSTGW, ""), {})
    if hg.get("bridge_nf_call_iptables") == "1" and hg.get("nft_tables"):
        lines.append(
            f"same node: bridged pod-to-pod frames on cni0 pass conntrack and the IPv4 nftables hooks "
            f"(net.bridge.bridge-nf-call-iptables=1 in {nodes[HOSTGW]}; tables: {', '.join(hg['nft_tables'])})"
        )
    vx = config.get(nodes.get(VXLAN, ""), {})
    if dev := vx.get("links", {}).get("vxlan0"):
        tracked = "not tracked" if vx.get("nft_notrack") else "tracked too (no notrack rule)"
        lines.append(
            f"vxlan: vxlan0 mtu {dev['mtu']} {dev.get('vxlan')}; in {nodes[VXLAN]} the inner packet passes conntrack "
            f"and the outer UDP is {tracked}"
        )
    lines += [f"offload differs: {line}" for line in out.get("offload_differences", [])]
    if not out.get("offload_differences") and shutil.which("ethtool"):
        lines.append("offloads: every veth on the paths has the baseline veth's; no TX offload off on bridge or vxlan")
    return lines


# --- the run -----------------------------------------------------------------------------------


def _summary(samples: list[dict]) -> dict:
    ok = [s for s in samples if "gbit_s" in s]
    out: dict[str, Any] = {"errors": [s["error"] for s in samples if "error" in s]}
    if ok:
        rates = [s["gbit_s"] for s in ok]
        per_cpu = [s["gbit_per_cpu_s"] for s in ok if s.get("gbit_per_cpu_s")]
        out.update(
            gbit_s=max(rates),
            median_gbit_s=statistics.median(rates),
            gbit_per_cpu_s=statistics.median(per_cpu) if per_cpu else None,
            runs_gbit_s=rates,
            mss=ok[0]["mss"],
            retransmits=[s["retransmits"] for s in ok],
            cpu_pct=[(s["cpu_client_pct"], s["cpu_server_pct"]) for s in ok],
        )
    return out


def _paired(samples: dict[str, list[dict]], num: str, den: str, key: str = "gbit_s") -> float | None:
    """Median over the rounds of num/den measured in the same round."""
    ratios = [a[key] / b[key] for a, b in zip(samples[num], samples[den], strict=True) if a.get(key) and b.get(key)]
    return statistics.median(ratios) if ratios else None


def _best(out: dict, num: str, den: str) -> float | None:
    a, b = out["paths"][num].get("gbit_s"), out["paths"][den].get("gbit_s")
    return a / b if a and b else None


def run(ctx: Any, out: dict) -> None:
    """Fill ``out``: per path its streams, the paired ratios, the targets, the configuration."""
    for tool in ("iperf3", "ip"):
        if not shutil.which(tool):
            raise BenchError(f"throughput benchmark: {tool} is missing (make deps installs it)")
    # podnet keeps its state in a temp dir (bench/__main__ sets this for the whole run).
    os.environ.setdefault("PODNET_STATE_DIR", str(ctx.tmp / "state"))
    out.update(duration_s=DURATION_S, rounds=ROUNDS, prefix=PREFIX, clusters=[HOSTGW, VXLAN, VXLAN1, UNHASHED])
    ctx.log.print(f"throughput: namespaces {PREFIX}*, clusters {HOSTGW} (host-gw) and {VXLAN} (vxlan, racks)")

    build_raw()
    hg, out["up_hostgw_s"] = bring_up(ctx, HOSTGW, hostgw_yaml())
    vx, out["up_vxlan_s"] = bring_up(ctx, VXLAN, vxlan_yaml())
    v1, out["up_vxlan_segment_s"] = bring_up(ctx, VXLAN1, vxlan_segment_yaml())
    vu, out["up_vxlan_unhashed_s"] = bring_up(ctx, UNHASHED, unhashed_yaml())
    detach_flow_hash(vu)
    a, b, c = (_pod(hg, n) for n in "abc")
    va, vc = _pod(v1, "a"), _pod(v1, "c")
    x, y = _pod(vx, "x"), _pod(vx, "y")
    ux, uy = _pod(vu, "x"), _pod(vu, "y")
    paths = [
        Path("veth", "raw veth pair", RAW_A, RAW_B, RAW_B_IP),
        Path("same_node", "pod to pod, same node", a["netns"], b["netns"], b["ip"]),
        Path("host_gw", "pod to pod, host-gw across nodes", a["netns"], c["netns"], c["ip"]),
        Path("vxlan", "pod to pod, vxlan across racks", x["netns"], y["netns"], y["ip"]),
        Path("vxlan_segment", "pod to pod, vxlan across nodes, one segment", va["netns"], vc["netns"], vc["ip"]),
        Path("vxlan_unhashed", "pod to pod, vxlan across racks, no flow hash", ux["netns"], uy["netns"], uy["ip"]),
    ]
    out["pod_mtu"] = {"host_gw": hg["mtu"], "vxlan": vx["mtu"]}
    for p in paths:
        if not nsutil.icmp_echo(p.client_ns, p.server_ip):
            raise BenchError(f"throughput: {p.label}: {p.server_ip} does not answer a ping from {p.client_ns}")

    out["node_netns"] = {HOSTGW: _node_ns(hg, "node-1"), VXLAN: _node_ns(vx, "node-1")}
    inspected = [RAW_A, a["netns"], x["netns"], *(_node_ns(s, n) for s in (hg, vx) for n in ("node-1", "node-2"))]
    out["config"] = {ns: inspect_ns(ns) for ns in inspected}
    out["offload_differences"] = offload_differences(out["config"])

    samples: dict[str, list[dict]] = {p.key: [] for p in paths}
    out["load_average_before"] = os.getloadavg()[0]
    for r in range(ROUNDS):
        for p in paths[r % len(paths) :] + paths[: r % len(paths)]:
            if nsutil.STOP.is_set():
                raise KeyboardInterrupt
            try:
                samples[p.key].append(iperf(p))
            except BenchError as exc:
                samples[p.key].append({"error": str(exc)})
                ctx.log.print(f"[red]throughput:[/] {exc}", soft_wrap=True)
        done = ", ".join(f"{k} {s[-1]['gbit_s']:.2f}" for k, s in samples.items() if "gbit_s" in s[-1])
        ctx.log.print(f"throughput: round {r + 1}/{ROUNDS}: {done} (Gbit/s)")
    out["load_average_after"] = os.getloadavg()[0]
    out["paths"] = {p.key: {"label": p.label, **_summary(samples[p.key])} for p in paths}

    pairs = {
        "same_node_vs_veth": ("same_node", "veth"),
        "vxlan_vs_host_gw": ("vxlan", "host_gw"),
        # The overlay's own cost, on the same underlay as host-gw (how the kernel figures compare).
        "vxlan_segment_vs_host_gw": ("vxlan_segment", "host_gw"),
        # What the flow-hash program (per-flow ECMP, no dst cache) costs a stream.
        "vxlan_vs_unhashed": ("vxlan", "vxlan_unhashed"),
    }
    out["ratios"] = {name: _paired(samples, *pair) for name, pair in pairs.items()}
    out["ratios_per_cpu"] = {name: _paired(samples, *pair, key="gbit_per_cpu_s") for name, pair in pairs.items()}
    out["ratios_best"] = {name: _best(out, *pair) for name, pair in pairs.items()}
    out["targets"] = [
        {"name": name, "value": out["ratios"][key], "limit": limit, "met": out["ratios"][key] >= limit}
        for key, name, limit in (
            ("same_node_vs_veth", "same-node pod-to-pod / raw veth pair", SAME_NODE_TARGET),
            ("vxlan_vs_host_gw", "vxlan across racks / host-gw across nodes", VXLAN_TARGET),
        )
        if out["ratios"][key] is not None
    ]
    out["facts"] = facts(out)


def cleanup(ctx: Any) -> list[str]:
    """Stop the iperf3 servers, take the clusters down, remove the baseline namespaces."""
    from podnet import names

    problems: list[str] = []
    for proc in list(_servers):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _stop(proc)
    prefixes = [PREFIX, *(names.cluster_prefix(c) for c in (HOSTGW, VXLAN, VXLAN1, UNHASHED))]
    if strays := nsutil.find_processes(prefixes):
        nsutil.kill_processes(strays)
    for cluster in dict.fromkeys(_brought_up):
        try:
            from podnet import cluster as podnet_cluster

            podnet_cluster.down(cluster)
        except Exception as exc:
            problems.append(f"podnet down -c {cluster} failed: {exc!r}")
    _brought_up.clear()
    for _ in range(3):
        left = [n for p in prefixes for n in nsutil.list_prefixed(p)]
        if not left:
            break
        nsutil.delete_netns(left)
        time.sleep(0.1)
    if left := [n for p in prefixes for n in nsutil.list_prefixed(p)]:
        problems.append(f"namespaces left behind: {', '.join(left)}")
    if strays := nsutil.find_processes(prefixes):
        problems.append(f"processes of the throughput benchmark still running: {strays}")
    return problems


# --- output ------------------------------------------------------------------------------------


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(out: dict, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"throughput benchmark: one TCP stream (iperf3, {out.get('duration_s')} s) per path, "
        f"{out.get('rounds')} rounds",
        header_style="bold",
        title_justify="left",
    )
    table.add_column("path")
    for name in ("best Gbit/s", "median Gbit/s", "Gbit/CPU-s", "MSS"):
        table.add_column(name, justify="right")
    table.add_column("notes")
    for key, res in out.get("paths", {}).items():
        runs = ", ".join(f"{v:.2f}" for v in res.get("runs_gbit_s", []))
        notes = f"runs {runs}; retransmits {res.get('retransmits')}"
        if res.get("errors"):
            notes += f"; [red]{escape('; '.join(res['errors']))}[/]"
        table.add_row(
            res.get("label", key),
            _g(res.get("gbit_s")),
            _g(res.get("median_gbit_s")),
            _g(res.get("gbit_per_cpu_s")),
            str(res.get("mss", "-")),
            notes,
        )
    console.print(table)
    r, per_cpu, best = (out.get(k, {}) for k in ("ratios", "ratios_per_cpu", "ratios_best"))
    mtu = out.get("pod_mtu", {})
    console.print(
        f"ratios, median of per-round pairs: same-node/veth {_g(r.get('same_node_vs_veth'))}, "
        f"vxlan/host-gw {_g(r.get('vxlan_vs_host_gw'))}; per CPU-second: {_g(per_cpu.get('same_node_vs_veth'))}, "
        f"{_g(per_cpu.get('vxlan_vs_host_gw'))}; best over best: {_g(best.get('same_node_vs_veth'))}, "
        f"{_g(best.get('vxlan_vs_host_gw'))}; vxlan on host-gw's one segment / host-gw "
        f"{_g(r.get('vxlan_segment_vs_host_gw'))} (the overlay's own cost, not a target); vxlan with podnet's "
        f"flow hash / without {_g(r.get('vxlan_vs_unhashed'))} (per CPU-second {_g(per_cpu.get('vxlan_vs_unhashed'))})"
    )
    console.print(
        f"pod MTU host-gw {mtu.get('host_gw')}, vxlan {mtu.get('vxlan')}; load average "
        f"{out.get('load_average_before', 0):.2f} -> {out.get('load_average_after', 0):.2f}"
    )
    for t in out.get("targets", []):
        verdict = "[bold green]OK[/]" if t["met"] else "[bold red]MISSED[/]"
        console.print(f"target: {t['name']}: {t['value']:.2f} (at least {t['limit']:.2f}) {verdict}")
    for line in out.get("facts", []):
        console.print(f"  {escape(line)}", soft_wrap=True)

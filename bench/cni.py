"""``python -m bench.cni [--containers N] [--parallel P] [--json]``: podnet-cni against the reference.

For each plugin (podnet's ``podnet-cni`` + ``podnet agent``, and Debian's reference
``bridge`` + ``host-local``), in a "host" namespace created for the run:

- ADD, then DEL, for N containers one after the other (each container a namespace created
  beforehand and not timed): latency p50 and p95 of every exec, as a runtime sees it;
- ADD for N containers from P threads at once: containers per second.

Both plugins are exec'd the same way, straight from a thread that entered the host
namespace, as a container runtime execs them. Targets: podnet's ADD p50 no slower than the
reference's; its DEL p50 at most half the reference's. A missed target is reported, not
fatal. Everything runs in namespaces named ``podnet_cnibench<hex>_*``; they, the agent and
the temporary directory are removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from podnet.cni import install
from podnet.kernel import netns

CNI_DIR = "/usr/lib/cni"
NETWORK = "benchnet"
CLUSTER_CIDR = "10.244.0.0/16"
BLOCK = "10.244.0.0/23"  # node-1's block with nodeCIDRMaskSize 23: 509 addresses
GATEWAY = "10.244.0.1"
UNDERLAY_IP = "172.31.0.2"  # node-1's underlay address in the plan of the cluster below
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
ORIGIN_INODE = os.stat("/proc/self/ns/net").st_ino  # the main thread never leaves it


class BenchError(Exception):
    pass


def cluster_yaml(name: str) -> str:
    return f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  podCIDR: {CLUSTER_CIDR}
  nodeCIDRMaskSize: 23
  backend: host-gw
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{{name: node-1}}, {{name: node-2}}]
"""


def enter(name: str) -> None:
    """Move this (worker) thread into namespace ``name``, checking it left the root one."""
    fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino == ORIGIN_INODE:
        raise BenchError(f"{name}: still in the root namespace")


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread (which may enter namespaces: the main thread never does)."""
    out: list = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class Plugin:
    """One plugin under test: how to call it, where its containers live."""

    def __init__(self, label: str, argv: list[str], config: dict, host: str, prefix: str, tag: str) -> None:
        self.label = label
        self.argv = argv
        self.config = json.dumps(config)
        self.host = host
        self.prefix = prefix
        self.tag = tag

    def container(self, i: int) -> str:
        return f"{self.prefix}{self.tag}{i}"

    def call(self, command: str, i: int) -> tuple[float, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"bench-{self.tag}-{i}",
            "CNI_NETNS": netns.path(self.container(i)),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
        }
        start = time.perf_counter()
        proc = subprocess.run(self.argv, input=self.config, env=env, capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"{self.label} {command} of container {i}: exit {proc.returncode}: {proc.stdout.strip()}")
        return took, proc.stdout


def sequential(plugins: list[Plugin], command: str, n: int) -> dict[str, list[tuple[float, str]]]:
    """``command`` for containers 0..n-1, the plugins taking turns container by container, so
    that both see the same machine (other work on it comes and goes)."""

    def body() -> dict[str, list[tuple[float, str]]]:
        out: dict[str, list[tuple[float, str]]] = {p.label: [] for p in plugins}
        for i in range(n):
            for p in plugins if i % 2 == 0 else plugins[::-1]:
                enter(p.host)
                out[p.label].append(p.call(command, i))
        return out

    return in_thread(body)


def parallel_add(plugin: Plugin, n: int, parallel: int) -> tuple[float, float]:
    """ADD for n containers from ``parallel`` threads: (containers per second, p50 ms)."""
    work: queue.Queue[int] = queue.Queue()
    for i in range(n):
        work.put(i)
    lat: list[float] = []

    def loop() -> None:
        enter(plugin.host)
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            lat.append(plugin.call("ADD", i)[0] * 1000)

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            in_thread(loop)
        except BaseException as exc:
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return n / wall, statistics.median(lat)


def measure(plugins: list[Plugin], n: int, parallel: int, settle: Callable[[Plugin], None]) -> dict:
    added = sequential(plugins, "ADD", n)
    res: dict = {}
    for p in plugins:
        ms = [took * 1000 for took, _ in added[p.label]]
        last_ip = json.loads(added[p.label][-1][1])["ips"][0]["address"].split("/")[0]
        res[p.label] = {
            "add_p50_ms": statistics.median(ms),
            "add_p95_ms": percentile(ms, 0.95),
            # One container reaches another through the bridge.
            "reachable": _ping(p.container(0), last_ip),
        }
    deleted = sequential(plugins, "DEL", n)
    for p in plugins:
        ms = [took * 1000 for took, _ in deleted[p.label]]
        res[p.label].update(del_p50_ms=statistics.median(ms), del_p95_ms=percentile(ms, 0.95))
        settle(p)
    # Throughput: A B B A, each plugin's two runs averaged, for the same reason.
    runs: dict[str, list[tuple[float, float]]] = {p.label: [] for p in plugins}
    for p in [*plugins, *plugins[::-1]]:
        runs[p.label].append(parallel_add(p, n, parallel))
        sequential([p], "DEL", n)
        settle(p)
    for p in plugins:
        res[p.label]["parallel_add_per_s"] = statistics.fmean(r[0] for r in runs[p.label])
        res[p.label]["parallel_add_p50_ms"] = statistics.fmean(r[1] for r in runs[p.label])
    return res


def _ping(ns: str, ip: str) -> bool:
    """One ping from inside ``ns`` (a namespace of the run) to ``ip`` (an address in it)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip], capture_output=True, check=False)
    return proc.returncode == 0


def _veths(host: str) -> int:
    out = subprocess.run(["ip", "-n", host, "-o", "link", "show", "type", "veth"], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if "master cni0" in line)


def _wait(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run(containers: int = 200, parallel: int = 8, log: Callable[[str], None] | None = None) -> dict:
    """Measure both plugins; everything created is removed before returning."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if os.geteuid() != 0:
        raise BenchError("the CNI benchmark creates network namespaces: run it as root")
    for tool in (f"{CNI_DIR}/bridge", f"{CNI_DIR}/host-local"):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"missing {tool} (Debian package containernetworking-plugins)")
    prefix = f"podnet_cnibench{uuid.uuid4().hex[:6]}_"
    tmp = Path(tempfile.mkdtemp(prefix="podnet-cnibench-"))
    agent: subprocess.Popen | None = None
    try:
        hp, hr, ul = f"{prefix}hp", f"{prefix}hr", f"{prefix}ul"
        for name in (hp, hr, ul):
            netns.create(name)
        # The podnet host's uplink holds node-1's underlay address, as on a real node.
        _ip("link", "add", "eth0", "netns", hp, "type", "veth", "peer", "name", "eth0", "netns", ul)
        _ip("-n", hp, "addr", "add", f"{UNDERLAY_IP}/24", "dev", "eth0")
        _ip("-n", hp, "link", "set", "eth0", "up")
        _ip("-n", ul, "link", "set", "eth0", "up")
        for tag in ("p", "r"):
            for i in range(containers):
                netns.create(f"{prefix}{tag}{i}")

        (tmp / "cluster.yaml").write_text(cluster_yaml("cnibench"))
        sock = str(tmp / "run" / "agent.sock")
        done = install.install(NETWORK, str(tmp / "bin"), str(tmp / "conf"), sock)
        with open(tmp / "agent.log", "w") as agent_log:
            agent = subprocess.Popen(
                ["ip", "netns", "exec", hp, sys.executable, "-m", "podnet", "agent", "--node", "node-1",
                 "--config", str(tmp / "cluster.yaml"), "--socket", sock, "--state-dir", str(tmp / "state")],
                stdout=subprocess.DEVNULL, stderr=agent_log, start_new_session=True,
            )  # fmt: skip
        _wait("the agent's socket", lambda: _connects(sock) or agent.poll() is not None, 60)
        if agent.poll() is not None:
            raise BenchError(f"podnet agent exited {agent.returncode}: {(tmp / 'agent.log').read_text()[-2000:]}")

        podnet = Plugin(
            "podnet-cni",
            [done["plugin"]],
            {"cniVersion": "1.0.0", "name": NETWORK, "type": "podnet-cni", "agentSocket": sock},
            hp,
            prefix,
            "p",
        )
        reference = Plugin(
            "bridge+host-local",
            [f"{CNI_DIR}/bridge"],
            {
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": BLOCK, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(tmp / "host-local"),
                },
            },
            hr,
            prefix,
            "r",
        )
        out: dict = {"containers": containers, "parallel": parallel, "cpus": os.cpu_count()}
        out["loadavg_at_start"] = os.getloadavg()[0]
        log(
            f"podnet-cni and bridge+host-local, taking turns: ADD and DEL of {containers} containers, "
            f"then {containers} ADDs {parallel} at a time"
        )
        measured = measure(
            [podnet, reference], containers, parallel, lambda p: _wait("the last DELs", lambda: _veths(p.host) == 0)
        )
        out["podnet"], out["reference"] = measured[podnet.label], measured[reference.label]
        out["ratios"] = {
            "add_p50": out["podnet"]["add_p50_ms"] / out["reference"]["add_p50_ms"],
            "del_p50": out["podnet"]["del_p50_ms"] / out["reference"]["del_p50_ms"],
            "parallel_add": out["podnet"]["parallel_add_per_s"] / out["reference"]["parallel_add_per_s"],
        }
        out["targets"] = [
            {"target": "ADD p50 no slower than the reference", "ratio": out["ratios"]["add_p50"], "limit": 1.0,
             "held": out["ratios"]["add_p50"] <= 1.0},
            {"target": "DEL p50 at most half the reference's", "ratio": out["ratios"]["del_p50"], "limit": 0.5,
             "held": out["ratios"]["del_p50"] <= 0.5},
        ]  # fmt: skip
        return out
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
        problems = cleanup(prefix)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
        if problems:
            log("cleanup: " + "; ".join(problems))


def cleanup(prefix: str = "podnet_cnibench") -> list[str]:
    """Remove every namespace of the run; returns what could not be removed."""
    for name in netns.list_prefixed(prefix):
        with contextlib.suppress(OSError):
            netns.delete(name)
    return [f"namespace {n} remains" for n in netns.list_prefixed(prefix)]


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _connects(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def render(res: dict, console=None) -> None:
    write = console.print if console is not None else print
    p, r = res["podnet"], res["reference"]
    rows = [
        ("ADD p50 (ms)", p["add_p50_ms"], r["add_p50_ms"]),
        ("ADD p95 (ms)", p["add_p95_ms"], r["add_p95_ms"]),
        ("DEL p50 (ms)", p["del_p50_ms"], r["del_p50_ms"]),
        ("DEL p95 (ms)", p["del_p95_ms"], r["del_p95_ms"]),
        (f"ADD, {res['parallel']} in parallel (containers/s)", p["parallel_add_per_s"], r["parallel_add_per_s"]),
        (f"ADD p50, {res['parallel']} in parallel (ms)", p["parallel_add_p50_ms"], r["parallel_add_p50_ms"]),
    ]
    lines = [
        f"CNI: {res['containers']} containers, {res['cpus']} CPUs, load {res['loadavg_at_start']:.2f} at start",
        f"{'':44} {'podnet-cni':>12} {'bridge+host-local':>18} {'ratio':>7}",
    ]
    for label, a, b in rows:
        lines.append(f"{label:44} {a:12.2f} {b:18.2f} {a / b:7.2f}")
    lines.append(f"{'reachable after ADD':44} {_yes(p['reachable']):>12} {_yes(r['reachable']):>18}")
    for t in res["targets"]:
        verdict = "held" if t["held"] else "MISSED"
        lines.append(f"target: {t['target']}: ratio {t['ratio']:.2f} (limit {t['limit']:.2f}) {verdict}")
    write("\n".join(lines))


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cni", description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        res = run(args.containers, args.parallel)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        render(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The etcd benchmark: podnet's store (aetcd's bindings over gRPC) beside etcd3gw and etcdctl.

One 3-member etcd cluster as the distributed mode runs it (members in namespaces of their
own on an underlay, TLS with client certificates, heartbeat 50 ms / election 500 ms), and a
host namespace on the same underlay where every client runs, as an agent would: each client
is a child process started there (``ip netns exec``), so all of them reach the members over
the same veth and TCP. Measured, in alternating rounds:

- put -> watch event: a put, and the time until the client's own watch on that prefix
  delivers it (p50, p99). The floor is etcd's own Go client watching (``etcdctl watch``),
  fed by the same puts.
- puts/s with 16 concurrent writers (asyncio tasks on one store; 16 threads for etcd3gw).
- the cost of importing each client (what a command that talks to etcd pays at start-up).

``python -m bench --only etcd`` (root) prints the table; :func:`run` returns the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench import nsutil
from bench.nsutil import BenchError
from bench.report import measure_table

LATENCY_PUTS = 300
THROUGHPUT_PUTS = 3000
CONCURRENCY = 16
ROUNDS = 3
IMPORT_RUNS = 5
TARGET_LATENCY_RATIO = 2.0  # podnet's p50 within twice the floor's
CLIENT_TIMEOUT = 300.0
EVENT_TIMEOUT = 10.0  # a watch that delivers no event this long after its put has failed
PREFIX = "pbetcd"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- clients (run inside the host namespace, one process each) -----------------------------


def _tls_args(args: argparse.Namespace):
    from podnet.kv.config import Tls

    return Tls(Path(args.ca), Path(args.cert), Path(args.key))


async def _podnet_latency(args: argparse.Namespace, watcher: str) -> list[float]:
    """Each put timed until the event reaches the watcher (podnet's own watch, or etcdctl's)."""
    from podnet.kv.config import parse_endpoints
    from podnet.kv.etcd import EtcdStore

    prefix = f"/{PREFIX}/{uuid.uuid4().hex}/"
    async with EtcdStore(parse_endpoints(args.urls), _tls_args(args)) as store:
        arrived: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        start = (await store.list(prefix)).revision + 1
        if watcher == "podnet":
            reader = asyncio.create_task(_podnet_watch(store, prefix, start, arrived))
        else:
            reader = asyncio.create_task(_etcdctl_watch(args, prefix, start, arrived))
            await store.put(prefix + "ready", b"-1")  # the first event: etcdctl's watch is up
            while (await asyncio.wait_for(arrived.get(), EVENT_TIMEOUT))[0] != -1:
                pass
        out = []
        for i in range(args.count):
            t0 = time.perf_counter()
            await store.put(prefix + f"k{i % 16}", str(i).encode())
            while True:
                n, t1 = await asyncio.wait_for(arrived.get(), EVENT_TIMEOUT)
                if n == i:
                    break
            out.append(t1 - t0)
        reader.cancel()
        return out


async def _podnet_watch(store, prefix: str, start: int, arrived: asyncio.Queue) -> None:
    async for batch in store.watch(prefix, start):
        now = time.perf_counter()
        for e in batch:
            arrived.put_nowait((int(e.kv.value), now))


async def _etcdctl_watch(args: argparse.Namespace, prefix: str, start: int, arrived: asyncio.Queue) -> None:
    cmd = ["etcdctl", f"--endpoints={args.urls}", f"--cacert={args.ca}", f"--cert={args.cert}", f"--key={args.key}"]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        "watch",
        f"--rev={start}",
        "--prefix",
        prefix,
        stdout=subprocess.PIPE,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        # etcdctl prints each event as three lines: PUT, the key, the value
        while True:
            kind = await proc.stdout.readline()
            if not kind:
                return
            await proc.stdout.readline()
            value = await proc.stdout.readline()
            arrived.put_nowait((int(value), time.perf_counter()))
    finally:
        proc.kill()
        await proc.wait()


async def _podnet_throughput(args: argparse.Namespace) -> float:
    from podnet.kv.config import parse_endpoints
    from podnet.kv.etcd import EtcdStore

    prefix = f"/{PREFIX}/{uuid.uuid4().hex}/"
    async with EtcdStore(parse_endpoints(args.urls), _tls_args(args)) as store:
        await store.put(prefix + "warm", b"x")
        per_writer = args.count // CONCURRENCY

        async def writer(w: int) -> None:
            for i in range(per_writer):
                await store.put(f"{prefix}w{w}/{i % 64}", b"v" * 64)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(CONCURRENCY)))
        return per_writer * CONCURRENCY / (time.perf_counter() - t0)


def _gateway(args: argparse.Namespace):
    from etcd3gw.client import Etcd3Client

    host = args.urls.split(",")[0].removeprefix("https://")
    ip, port = host.rsplit(":", 1)
    client = Etcd3Client(
        host=ip, port=int(port), protocol="https", ca_cert=args.ca, cert_key=args.key, cert_cert=args.cert, timeout=10
    )
    client.session.trust_env = False  # else requests lets REQUESTS_CA_BUNDLE override the cluster's CA
    return client


def _etcd3gw_latency(args: argparse.Namespace) -> list[float]:
    client = _gateway(args)
    prefix = f"/{PREFIX}/{uuid.uuid4().hex}/"
    client.put(prefix + "ready", "-1")
    start = int(client.get(prefix + "ready", metadata=True)[0][1]["mod_revision"]) + 1
    events, cancel = client.watch_prefix(prefix, start_revision=start)
    arrived: list[tuple[int, float]] = []
    cond = threading.Condition()

    def read() -> None:
        for ev in events:
            with cond:
                arrived.append((int(ev["kv"]["value"]), time.perf_counter()))
                cond.notify_all()

    threading.Thread(target=read, daemon=True).start()
    out = []
    for i in range(args.count):
        t0 = time.perf_counter()
        client.put(prefix + f"k{i % 16}", str(i))
        with cond:
            cond.wait_for(lambda i=i: any(n == i for n, _ in arrived), timeout=EVENT_TIMEOUT)
            t1 = next((t for n, t in arrived if n == i), None)
            arrived.clear()
        if t1 is None:
            raise BenchError(f"etcd3gw: the watch never delivered put {i}")
        out.append(t1 - t0)
    cancel()
    return out


def _etcd3gw_throughput(args: argparse.Namespace) -> float:
    prefix = f"/{PREFIX}/{uuid.uuid4().hex}/"
    clients = [_gateway(args) for _ in range(CONCURRENCY)]
    clients[0].put(prefix + "warm", "x")
    per_writer = args.count // CONCURRENCY

    def writer(w: int) -> None:
        for i in range(per_writer):
            clients[w].put(f"{prefix}w{w}/{i % 64}", "v" * 64)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(CONCURRENCY)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_writer * CONCURRENCY / (time.perf_counter() - t0)


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "measure", choices=["latency-podnet", "latency-floor", "latency-etcd3gw", "puts-podnet", "puts-etcd3gw"]
    )
    p.add_argument("--urls", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args(argv)
    if args.measure == "latency-podnet":
        result: object = asyncio.run(_podnet_latency(args, "podnet"))
    elif args.measure == "latency-floor":
        result = asyncio.run(_podnet_latency(args, "etcdctl"))
    elif args.measure == "latency-etcd3gw":
        result = _etcd3gw_latency(args)
    elif args.measure == "puts-podnet":
        result = asyncio.run(_podnet_throughput(args))
    else:
        result = _etcd3gw_throughput(args)
    sys.stdout.write(json.dumps(result) + "\n")


# --- the run (root namespace) -------------------------------------------------------------


def _client(host_ns: str, measure: str, urls: str, tls, count: int) -> object:
    argv = ["ip", "netns", "exec", host_ns, sys.executable, "-m", "bench.etcd", "--client", measure]
    argv += ["--urls", urls, "--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key), "--count", str(count)]
    # a session of its own, killed whole on a timeout: the client's etcdctl goes with it
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CLIENT_TIMEOUT)
    except BaseException as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"etcd client {measure} did not finish in {CLIENT_TIMEOUT:.0f}s") from exc
        raise
    if proc.returncode != 0:
        raise BenchError(f"etcd client {measure} failed: {stderr.strip()[-3000:]}")
    return json.loads(stdout)


def import_cost(module: str) -> float:
    """Median seconds ``import module`` adds to a fresh interpreter."""

    def once(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    base = statistics.median(once("pass") for _ in range(IMPORT_RUNS))
    return statistics.median(once(f"import {module}") for _ in range(IMPORT_RUNS)) - base


class Underlay:
    """A switch namespace, three member namespaces and a host namespace on one bridge."""

    def __init__(self, cluster: str) -> None:
        from podnet import names

        self.cluster = cluster
        self.switch = names.switch_netns(cluster, "underlay")
        self.hosts = [(f"etcd-{i + 1}", f"172.31.0.{11 + i}") for i in range(3)] + [("host-1", "172.31.0.100")]
        self.netns = [self.switch] + [names.node_netns(cluster, h) for h, _ in self.hosts]

    def build(self) -> None:
        from podnet.kernel import netns

        for ns in self.netns:
            netns.create(ns)
        commands = [[self.switch, "link", "add", "br0", "type", "bridge"], [self.switch, "link", "set", "br0", "up"]]
        for i, ((_, ip), ns) in enumerate(zip(self.hosts, self.netns[1:], strict=True)):
            commands += [
                [self.switch, "link", "add", f"sw{i}", "type", "veth", "peer", "name", "eth0", "netns", ns],
                [self.switch, "link", "set", f"sw{i}", "master", "br0", "up"],
                [ns, "addr", "add", f"{ip}/24", "dev", "eth0"],
                [ns, "link", "set", "eth0", "up"],
                [ns, "link", "set", "lo", "up"],
            ]
        for ns, *command in commands:
            nsutil.run(["ip", "-n", ns, *command])

    def members(self):
        from podnet.runtime import etcd as rt

        return tuple(rt.Member(h, ns, ip) for (h, ip), ns in zip(self.hosts[:3], self.netns[1:4], strict=True))

    def remove(self) -> None:
        nsutil.delete_netns(self.netns)


def _cluster_name() -> str:
    return f"pbetcd{os.getpid()}"


def run(ctx, results: dict) -> None:
    from podnet.runtime import etcd as rt

    out: dict = {}
    underlay = Underlay(_cluster_name())
    directory = Path(tempfile.mkdtemp(prefix="podnet-bench-etcd-")) / "etcd"
    # etcd 3.4's gateway refuses requests with a client certificate's CN once authentication is
    # on ("CommonName of client sending a request against gateway will be ignored"), so etcd3gw
    # cannot work with podnet's trust model at all; the cluster measured here has it off.
    c = rt.EtcdCluster(underlay.cluster, (), directory, ("host-1",), auth=False)
    try:
        underlay.build()
        c = rt.EtcdCluster(underlay.cluster, underlay.members(), directory, ("host-1",), auth=False)
        t0 = time.perf_counter()
        rt.start(c)
        out["cluster_start_s"] = time.perf_counter() - t0
        host = underlay.netns[-1]
        tls = rt.admin_tls(c)
        urls = rt.urls(c)
        latency: dict[str, list[float]] = {"podnet": [], "floor": [], "etcd3gw": []}
        puts: dict[str, list[float]] = {"podnet": [], "etcd3gw": []}
        for r in range(ROUNDS):
            ctx.log.print(f"etcd: round {r + 1}/{ROUNDS}")
            for name in latency:
                latency[name] += _client(host, f"latency-{name}", urls, tls, LATENCY_PUTS)
            for name in puts:
                puts[name].append(_client(host, f"puts-{name}", urls, tls, THROUGHPUT_PUTS))
        for name, values in latency.items():
            out[f"{name}_p50_ms"] = percentile(values, 0.5) * 1000
            out[f"{name}_p99_ms"] = percentile(values, 0.99) * 1000
        for name, values in puts.items():
            out[f"{name}_puts_per_s"] = statistics.median(values)
        out["import_podnet_ms"] = import_cost("podnet.kv.etcd") * 1000
        out["import_etcd3gw_ms"] = import_cost("etcd3gw") * 1000
        out["latency_ratio"] = out["podnet_p50_ms"] / out["floor_p50_ms"]
        results.update(out)  # only a complete set of figures is reported
    finally:
        rt.destroy(c)
        underlay.remove()
        shutil.rmtree(directory.parent, ignore_errors=True)


def cleanup(ctx) -> list[str]:
    """What a run left (only after an interrupt): its etcd members and namespaces."""
    from podnet.runtime import etcd as rt

    cluster = _cluster_name()
    problems = [f"etcd member {pid} ({m})" for pid, m in rt.find(cluster).items()]
    rt.stop(cluster)
    left = nsutil.list_prefixed(f"podnet_{cluster}_")
    nsutil.delete_netns(left)
    return problems + [f"netns {n}" for n in left]


def render(res: dict, console) -> None:
    table = measure_table(
        f"etcd: 3 members, TLS, auth off (etcd3gw cannot authenticate by certificate), clients on the underlay; cluster up in {res['cluster_start_s']:.1f}s"
    )
    floor = res["floor_p50_ms"]
    for name, note in (
        ("podnet", "podnet.kv (aetcd's bindings, gRPC): its own put and watch"),
        ("floor", "floor: the same puts, etcd's Go client watching (etcdctl watch)"),
        ("etcd3gw", "etcd3gw (JSON gateway): its own put and watch"),
    ):
        p50, p99 = res[f"{name}_p50_ms"], res[f"{name}_p99_ms"]
        table.add_row(
            f"put -> watch event, {name}", f"{p50:.2f} / {p99:.2f} ms", f"p50 / p99, {p50 / floor:.2f} x floor; {note}"
        )
    ratio = res["latency_ratio"]
    verdict = "ok" if ratio <= TARGET_LATENCY_RATIO else "MISSED"
    table.add_row("podnet p50 / floor p50", f"{ratio:.2f}", f"target <= {TARGET_LATENCY_RATIO} ({verdict})")
    gw = res["etcd3gw_puts_per_s"]
    table.add_row(
        "puts/s, 16 concurrent, podnet",
        f"{res['podnet_puts_per_s']:,.0f}",
        f"{res['podnet_puts_per_s'] / gw:.1f} x etcd3gw",
    )
    table.add_row("puts/s, 16 concurrent, etcd3gw", f"{gw:,.0f}", "16 threads, one HTTP session each")
    table.add_row("import podnet.kv.etcd", f"{res['import_podnet_ms']:.0f} ms", "aetcd, grpc, protobuf")
    table.add_row("import etcd3gw", f"{res['import_etcd3gw_ms']:.0f} ms", "requests, futurist")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        client_main(argv[1:])
        return 0
    from bench import __main__ as bench_main

    return bench_main.main(["--only", "etcd", *argv])


if __name__ == "__main__":
    sys.exit(main())

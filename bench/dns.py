"""The DNS benchmark: podnet's cluster DNS daemon beside dnsmasq, same records, same client.

Both servers answer the same cluster zone (ClusterIP services with a named port, pods):
A and SRV for every service, A for every pod, PTR for every ClusterIP and pod IP, and
NXDOMAIN for search-path expansions (``ndots:5`` makes pods ask those first). Each runs on
the loopback of a namespace of its own (``pbdns<pid>_podnet``, ``pbdns<pid>_dnsmasq``);
the client is one small Python UDP client inside that namespace keeping a fixed window of
queries in flight, bounded in count and in time. Rounds alternate between the servers and
the median round of each is reported. Before measuring, every name is asked once from both
servers and the answers compared, so both do the same work.

``python -m bench.dns [--queries N]`` (root) prints podnet's and dnsmasq's queries per second,
their ratio (target: podnet >= 0.5 x dnsmasq) and p99 latencies; :func:`run` returns them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnslib import QTYPE, DNSRecord

from bench import nsutil
from bench.nsutil import BenchError
from podnet.plan.dns import DnsPod, DnsPort, DnsService, digest, reverse_name, zone

TARGET_RATIO = 0.5
WINDOW = 32  # queries in flight
ROUNDS = 5  # per server, alternating; the median is reported
TIME_LIMIT = 60.0  # seconds per round, whatever the count
REPLY_TIMEOUT = 1.0  # a window with no reply for this long counts its queries as lost
READY_TIMEOUT = 30.0
SERVICES = 200
PODS = 1000
DOMAIN = "cluster.local"


def cluster_zone(services: int = SERVICES, pods: int = PODS) -> tuple[list[DnsService], list[DnsPod]]:
    svcs = [
        DnsService(f"ns{i % 10}", f"svc{i}", f"10.96.{i // 250}.{i % 250 + 11}", (DnsPort("http", "TCP", 80),), ())
        for i in range(services)
    ]
    pod_list = [DnsPod(f"ns{i % 10}", f"pod{i}", f"10.244.{i // 250}.{i % 250 + 2}") for i in range(pods)]
    return svcs, pod_list


def query_names(svcs: list[DnsService], pods: list[DnsPod]) -> list[tuple[str, str]]:
    """The query mix, interleaved: (name, type)."""
    names: list[tuple[str, str]] = []
    for i, s in enumerate(svcs):
        base = f"{s.name}.{s.namespace}.svc.{DOMAIN}."
        names += [(base, "A"), (f"_http._tcp.{base}", "SRV"), (reverse_name(s.cluster_ip or ""), "PTR")]
        names.append((f"api{i}.example.com.{s.namespace}.svc.{DOMAIN}.", "A"))  # NXDOMAIN
    for p in pods:
        dashed = p.ip.replace(".", "-")
        names += [(f"{dashed}.{p.namespace}.pod.{DOMAIN}.", "A"), (reverse_name(p.ip), "PTR")]
    return names


def dnsmasq_conf(svcs: list[DnsService], pods: list[DnsPod], tmp: Path) -> str:
    lines = [
        "no-resolv",
        "no-hosts",
        "no-poll",
        "port=53",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        f"local=/{DOMAIN}/",
        "local-ttl=5",
        f"pid-file={tmp / 'dnsmasq.pid'}",
        "user=root",
    ]
    for s in svcs:
        base = f"{s.name}.{s.namespace}.svc.{DOMAIN}"
        lines.append(f"host-record={base},{s.cluster_ip}")  # A and PTR
        lines.append(f"srv-host=_http._tcp.{base},{base},80,0,100")
    for p in pods:
        lines.append(f"host-record={p.ip.replace('.', '-')}.{p.namespace}.pod.{DOMAIN},{p.ip}")
    return "\n".join(lines) + "\n"


# --- the client -------------------------------------------------------------------------


def packets(names: list[tuple[str, str]]) -> list[bytes]:
    return [bytes(DNSRecord.question(n, t).pack()) for n, t in names]


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far (every thread of it), in nanoseconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def measure(
    ns: str, queries: list[bytes], count: int, window: int = WINDOW, limit: float = TIME_LIMIT, server: int = 0
) -> dict:
    """Send ``count`` queries (cycling through ``queries``) to 127.0.0.1:53 inside ``ns``.

    With ``server`` (its pid), also the server's CPU time per answered query: the client is
    Python too and may be the bottleneck, so queries per second alone can flatter the slower
    server; its CPU cost per query does not depend on the client.
    """

    def body() -> dict:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", 53))
        sock.settimeout(REPLY_TIMEOUT)
        clock = time.perf_counter
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        sent = lost = 0
        n = len(queries)

        def send() -> None:
            nonlocal sent
            qid = sent & 0xFFFF
            q = queries[sent % n]
            sent_at[qid] = clock()
            sock.send(qid.to_bytes(2, "big") + q[2:])
            sent += 1

        cpu0 = cpu_ns(server) if server else 0
        start = clock()
        deadline = start + limit
        while sent < min(window, count):
            send()
        try:
            while sent_at:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    lost += len(sent_at)
                    sent_at.clear()
                    while sent < count and len(sent_at) < window and clock() < deadline:
                        send()
                    continue
                t0 = sent_at.pop((data[0] << 8) | data[1], None)
                now = clock()
                if t0 is None:
                    continue  # a late answer to a query already counted as lost
                latencies.append(now - t0)
                if sent < count and now < deadline:
                    send()
            elapsed = clock() - start
            cpu = cpu_ns(server) - cpu0 if server else 0
        finally:
            sock.close()
        latencies.sort()
        answered = len(latencies)
        return {
            "sent": sent,
            "answered": answered,
            "lost": lost,
            "seconds": round(elapsed, 4),
            "qps": round(answered / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(latencies[answered // 2] * 1000, 4) if answered else None,
            "p99_ms": round(latencies[min(answered - 1, int(answered * 0.99))] * 1000, 4) if answered else None,
            "server_cpu_us_per_query": round(cpu / 1000 / answered, 3) if server and answered else None,
        }

    return nsutil.in_netns(ns, body)


def ask(ns: str, packet: bytes) -> DNSRecord | None:
    """One query, one answer (or None after a second)."""

    def body() -> DNSRecord | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.connect(("127.0.0.1", 53))
            s.send(packet)
            try:
                return DNSRecord.parse(s.recv(4096))
            except (TimeoutError, ConnectionRefusedError):
                return None

    return nsutil.in_netns(ns, body)


def signature(reply: DNSRecord | None) -> tuple:
    if reply is None:
        return ("no answer",)
    return (reply.header.rcode, sorted(f"{QTYPE[rr.rtype]} {rr.rdata}" for rr in reply.rr))


# --- the servers ------------------------------------------------------------------------


def _wait_answering(ns: str, packet: bytes, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if ask(ns, packet) is not None:
            return
    raise BenchError(f"{what} did not answer within {READY_TIMEOUT:.0f}s")


def start_podnet(ns: str, cluster: str, zone_data: dict, tmp: Path, probe: bytes) -> subprocess.Popen:
    state = tmp / "podnet"
    state.mkdir()
    (state / "dns.json").write_text(json.dumps({"digest": digest(zone_data), "netns": ns, "zone": zone_data}))
    log = state / "dns.log"
    argv = [sys.executable, "-m", "podnet", "dns-daemon", "--cluster", cluster, "--state-dir", str(state)]
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)
    _wait_answering(ns, probe, proc, "podnet dns-daemon", log)
    return proc


def start_dnsmasq(ns: str, conf: str, tmp: Path, probe: bytes, binary: str = "dnsmasq") -> subprocess.Popen:
    path = tmp / "dnsmasq.conf"
    path.write_text(conf)
    log = tmp / "dnsmasq.log"
    argv = ["ip", "netns", "exec", ns, binary, "--no-daemon", f"--conf-file={path}"]
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)
    _wait_answering(ns, probe, proc, "dnsmasq", log)
    return proc


def ensure_dnsmasq() -> str:
    """dnsmasq's path; installs the binary package (not ``dnsmasq``, which enables a system service)."""
    found = shutil.which("dnsmasq") or (os.access("/usr/sbin/dnsmasq", os.X_OK) and "/usr/sbin/dnsmasq")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    nsutil.run(["apt-get", "install", "-y", "-qq", "dnsmasq-base"], env=env)
    found = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(found, os.X_OK):
        raise BenchError("dnsmasq is not installed and could not be installed (apt-get install dnsmasq)")
    return found


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the run ----------------------------------------------------------------------------


def run(queries: int = 20000, *, window: int = WINDOW, rounds: int = ROUNDS, log=None) -> dict:
    """Measure both servers; returns qps, p99 and their ratio. Cleans up whatever happens."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if os.geteuid() != 0:
        raise BenchError("the DNS benchmark creates network namespaces: run it as root")
    dnsmasq = ensure_dnsmasq()
    pid = os.getpid()
    prefix = f"pbdns{pid}_"
    cluster = f"dnsbench{pid}"
    ns_podnet, ns_dnsmasq = prefix + "podnet", prefix + "dnsmasq"
    tmp = Path(tempfile.mkdtemp(prefix=f"podnet-bench-dns-{pid}-"))
    svcs, pods = cluster_zone()
    zone_data = zone(DOMAIN, svcs, pods, [])
    names = query_names(svcs, pods)
    batch = packets(names)
    podnet_proc = dnsmasq_proc = None
    try:
        for ns in (ns_podnet, ns_dnsmasq):
            nsutil.run(["ip", "netns", "add", ns])
            nsutil.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        podnet_proc = start_podnet(ns_podnet, cluster, zone_data, tmp, batch[0])
        dnsmasq_proc = start_dnsmasq(ns_dnsmasq, dnsmasq_conf(svcs, pods, tmp), tmp, batch[0], dnsmasq)

        differ = [
            n
            for n, p in zip(names, batch, strict=True)
            if signature(ask(ns_podnet, p)) != signature(ask(ns_dnsmasq, p))
        ]
        if differ:
            raise BenchError(f"the servers answer {len(differ)} of {len(names)} names differently, e.g. {differ[:3]}")
        say(f"dns: {len(zone_data['records'])} records, {len(names)} names, both servers answer them alike")

        servers = {"podnet": (ns_podnet, podnet_proc.pid), "dnsmasq": (ns_dnsmasq, dnsmasq_proc.pid)}
        for ns, _ in servers.values():  # warm up (caches, first-use costs)
            measure(ns, batch, min(2000, queries), window)
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for r in range(rounds):
            for name, (ns, server_pid) in servers.items():
                result = measure(ns, batch, queries, window, server=server_pid)
                runs[name].append(result)
                say(
                    f"dns round {r + 1}/{rounds}: {name:8} {result['qps']:>9.0f} q/s  p99 {result['p99_ms']} ms  "
                    f"server CPU {result['server_cpu_us_per_query']} us/query"
                )
        best = {name: sorted(rs, key=lambda x: x["qps"])[len(rs) // 2] for name, rs in runs.items()}
        ratio = best["podnet"]["qps"] / best["dnsmasq"]["qps"] if best["dnsmasq"]["qps"] else 0.0
        return {
            "queries": queries,
            "window": window,
            "rounds": rounds,
            "records": len(zone_data["records"]),
            "names": len(names),
            "podnet": best["podnet"],
            "dnsmasq": best["dnsmasq"],
            "ratio": round(ratio, 3),
            "cpu_ratio": round(
                best["podnet"]["server_cpu_us_per_query"] / best["dnsmasq"]["server_cpu_us_per_query"], 2
            ),
            "target_ratio": TARGET_RATIO,
            "met": ratio >= TARGET_RATIO,
            "all_rounds": runs,
        }
    finally:
        with nsutil.signals_deferred():
            _stop(podnet_proc)
            _stop(dnsmasq_proc)
            nsutil.delete_netns(nsutil.list_prefixed(prefix))
            shutil.rmtree(tmp, ignore_errors=True)
            left = nsutil.list_prefixed(prefix)
            procs = nsutil.find_processes([f"{cluster}\0", str(tmp)])
            if left or procs:
                nsutil.kill_processes(procs)
                with contextlib.suppress(Exception):
                    nsutil.delete_netns(left)
                say(f"dns cleanup: removed leftovers {left} {procs}")


def render(result: dict) -> str:
    p, d = result["podnet"], result["dnsmasq"]
    assert p["server_cpu_us_per_query"] is not None and d["server_cpu_us_per_query"] is not None
    verdict = "met" if result["met"] else "MISSED"
    return "\n".join(
        [
            f"DNS: {result['queries']} queries per round, {result['window']} in flight, "
            f"{result['records']} records, median of {result['rounds']} rounds",
            *(
                f"  {name:8} {r['qps']:>9.0f} q/s   p50 {r['p50_ms']:.3f} ms   p99 {r['p99_ms']:.3f} ms   "
                f"lost {r['lost']}   server CPU {r['server_cpu_us_per_query']:.1f} us/query"
                for name, r in (("podnet", p), ("dnsmasq", d))
            ),
            f"  ratio    {result['ratio']:.2f} x dnsmasq's queries per second (target >= {result['target_ratio']}: "
            f"{verdict}); podnet spends {result['cpu_ratio']:.1f} x dnsmasq's CPU per query",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dns", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000, help="queries per round and server (default 20000)")
    parser.add_argument("--window", type=int, default=WINDOW, help=f"queries in flight (default {WINDOW})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per server (default {ROUNDS})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        result = run(args.queries, window=args.window, rounds=args.rounds)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

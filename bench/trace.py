"""The trace benchmark: a trace of a plan, ``--verify`` on a running cluster, and the tracer's rate.

1. Planned: ``podnet.cluster.trace("shop/web-1", "shop/web-2", file=examples/racks.yaml)``
   in-process: load the file, plan it, walk a cross-rack connection (VXLAN, an ECMP pair of
   spines) and its reply. The median of PLANNED_REPEAT runs (after one warm-up run that pays
   the imports) against the target (<= 50 ms), split into load_file, plan and the walk; the
   walk alone on a prepared plan; and once through the CLI (``python -m podnet trace -f``, an
   interpreter start and the imports included) for reference. There is no baseline: nothing
   else explains a packet's path from a file (``ip route get`` needs the namespaces built).
2. Verify: examples/racks.yaml brought up under a cluster name of this run (state in the run's
   temp dir, ``podnet.cluster.up``), then ``podnet.cluster.trace(..., verify=True)`` for the
   same connection VERIFY_REPEAT times (median; target <= 2 s), split into load_applied,
   observe_cluster, diff and verify (opening a packet socket on every interface of the path,
   the probe, the capture, which listens CAPTURE_AFTER once the probe has finished). Baseline,
   as many times: the same TCP connection made by ``ip netns exec <web-1's netns> curl`` with no
   capture, so the ratio shows what observing and capturing cost. ``down`` runs in a finally.
3. Rate: a generated cluster of RATE_PODS pods on RATE_NODES vxlan nodes (one L2 underlay, a
   pod listening on port 80 in every pod), planned once; RATE_TRACES traces between random pod
   pairs (seeded: same-node and cross-node), each with its reply, on one Tracer: traces per
   second, by the wall clock and by the process's CPU time (the machine may be shared). With
   ``--profile``, a cProfile of RATE_PROFILE traces on a fresh Tracer goes to stderr.

Everything this suite creates is the cluster ``<run's cluster>-trace``: namespaces
``podnet_<it>_*`` and its daemons, removed by :func:`cleanup` also after an error or Ctrl-C.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import nsutil
from bench.nsutil import BenchError
from bench.pods import stage_timers

REPO = Path(__file__).resolve().parent.parent
RACKS = REPO / "examples" / "racks.yaml"
SRC, DST = "shop/web-1", "shop/web-2"

PLANNED_REPEAT = 21
VERIFY_REPEAT = 5
RATE_PODS = 1000
RATE_NODES = 10
RATE_BACKEND = "vxlan"
RATE_TRACES = 10_000
RATE_PROFILE = 2000
SEED = 5

PLANNED_TARGET_S = 0.050
VERIFY_TARGET_S = 2.0


def _cluster(ctx: Any) -> str:
    return f"{ctx.cluster}-trace"


def _median(values: list[float]) -> float:
    return statistics.median(values)


# --- 1. one trace of a plan -------------------------------------------------------------------


def bench_planned(ctx: Any, out: dict) -> None:
    from podnet import cluster as podnet_cluster
    from podnet.plan import plan
    from podnet.spec import load_file
    from podnet.trace import Tracer

    res = out["planned"] = {"trace": f"{SRC} -> {DST}, tcp port 80, examples/racks.yaml"}
    ctx.log.print(f"trace: planned state, {SRC} -> {DST} on examples/racks.yaml, {PLANNED_REPEAT} runs")
    podnet_cluster.trace(SRC, DST, file=str(RACKS))  # warm-up: imports, caches of the interpreter
    runs: list[float] = []
    stages: list[dict[str, float]] = []
    for _ in range(PLANNED_REPEAT):
        with stage_timers(podnet_cluster, ("load_file", "plan")) as times:
            start = time.perf_counter()
            result = podnet_cluster.trace(SRC, DST, file=str(RACKS))
            took = time.perf_counter() - start
        runs.append(took)
        stages.append({**times, "walk": took - sum(times.values())})
    median_run = sorted(range(len(runs)), key=runs.__getitem__)[(len(runs) - 1) // 2]
    res.update(
        median_s=runs[median_run],
        runs_s=runs,
        stages_s=stages[median_run],
        verdict=result.verdict,
        reply_verdict=result.reply_verdict,
        hops=len(result.hops),
        reply_hops=len(result.reply),
    )
    if result.verdict != "delivered":
        raise BenchError(f"planned trace {SRC} -> {DST}: {result.verdict} ({result.reason}), expected delivered")

    # The walk alone: a fresh plan each time (not timed) and a fresh Tracer, so nothing a
    # previous walk parsed or memoised is reused.
    spec = load_file(str(RACKS))
    walks = []
    for _ in range(PLANNED_REPEAT):
        p = plan(spec, {})
        start = time.perf_counter()
        Tracer(p.state, p.topology, p.state, p.dns_config).trace(SRC, DST)
        walks.append(time.perf_counter() - start)
    res["walk_only_s"] = _median(walks)

    ctx.log.print("trace: the same through the CLI (python -m podnet trace -f ... -o json)")
    start = time.perf_counter()
    text = nsutil.run([sys.executable, "-m", "podnet", "trace", "-f", str(RACKS), SRC, DST, "-o", "json"])
    res["cli_s"] = time.perf_counter() - start
    if json.loads(text)["verdict"] != "delivered":
        raise BenchError("podnet trace -f through the CLI did not deliver")
    start = time.perf_counter()
    nsutil.run([sys.executable, "-c", "import podnet.cli, podnet.cluster, podnet.trace"])
    res["cli_import_s"] = time.perf_counter() - start


# --- 2. --verify on a running cluster ---------------------------------------------------------


def _curl(netns: str, ip: str) -> float:
    """One TCP connection and HTTP request from inside ``netns``, with no capture; seconds."""
    argv = ["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    start = time.perf_counter()
    code = nsutil.run([*argv, f"http://{ip}:80/hostname"])
    took = time.perf_counter() - start
    if code.strip() != "200":
        raise BenchError(f"curl from {netns} to {ip}: HTTP {code.strip() or 'no answer'}")
    return took


def bench_verify(ctx: Any, out: dict) -> None:
    import podnet.trace.verify as verify_module
    from podnet import cluster as podnet_cluster

    name = _cluster(ctx)
    res = out["verify"] = {"cluster": name, "trace": f"{SRC} -> {DST}, tcp port 80, examples/racks.yaml"}
    text = RACKS.read_text()
    renamed = text.replace("metadata: {name: racks}", f"metadata: {{name: {name}}}", 1)
    if renamed == text:
        raise BenchError("examples/racks.yaml: no 'metadata: {name: racks}' to rename")
    spec = ctx.tmp / "trace-racks.yaml"
    spec.write_text(renamed)
    ctx.log.print(f"trace: podnet up examples/racks.yaml as cluster {name}")
    try:
        start = time.perf_counter()
        podnet_cluster.up(str(spec))
        res["up_s"] = time.perf_counter() - start
        nsutil.settle()
        _, p = podnet_cluster.load_applied(name)
        src_netns = p.topology.pods[SRC].netns
        dst_ip = p.topology.pods[DST].ip

        ctx.log.print(f"trace: --verify {SRC} -> {DST}, {VERIFY_REPEAT} runs (and one first run)")
        start = time.perf_counter()
        first = podnet_cluster.trace(SRC, DST, cluster=name, verify=True)
        res["first_s"] = time.perf_counter() - start
        runs: list[float] = []
        stages: list[dict[str, float]] = []
        results = []
        for _ in range(VERIFY_REPEAT):
            with (
                stage_timers(podnet_cluster, ("load_applied", "observe_cluster", "diff")) as times,
                stage_timers(verify_module, ("verify",)) as vtimes,
            ):
                start = time.perf_counter()
                result = podnet_cluster.trace(SRC, DST, cluster=name, verify=True)
                took = time.perf_counter() - start
            runs.append(took)
            stages.append({**times, **vtimes, "other": took - sum(times.values()) - sum(vtimes.values())})
            results.append(result)
        median_run = sorted(range(len(runs)), key=runs.__getitem__)[(len(runs) - 1) // 2]
        result = results[median_run]
        seen = sum(1 for h in (*result.hops, *result.reply) if h.observed)
        res.update(
            median_s=runs[median_run],
            runs_s=runs,
            stages_s=stages[median_run],
            verified=all(r.verified for r in (first, *results)),
            verified_runs=sum(1 for r in (first, *results) if r.verified),
            hops_seen=f"{seen}/{len(result.hops) + len(result.reply)}",
            drift=result.drift,
            capture_after_s=verify_module.CAPTURE_AFTER,
        )

        ctx.log.print(f"trace: baseline, ip netns exec ... curl http://{dst_ip}/hostname, {VERIFY_REPEAT} runs")
        _curl(src_netns, dst_ip)  # the same warm-up the first verify had
        curls = [_curl(src_netns, dst_ip) for _ in range(VERIFY_REPEAT)]
        res.update(curl_median_s=_median(curls), curl_runs_s=curls)
    finally:
        ctx.log.print(f"trace: podnet down -c {name}")
        start = time.perf_counter()
        podnet_cluster.down(name)
        res["down_s"] = time.perf_counter() - start


# --- 3. the tracer's rate ---------------------------------------------------------------------


def rate_yaml(pods: int = RATE_PODS, nodes: int = RATE_NODES, backend: str = RATE_BACKEND) -> str:
    """A cluster of ``pods`` pods spread over ``nodes`` nodes, each pod with a server on port 80."""
    node_list = ", ".join(f"{{name: node-{k + 1}}}" for k in range(nodes))
    docs = [
        f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: tracerate}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  backend: {backend}
  underlay: {{cidr: 172.31.0.0/24}}
  nodes: [{node_list}]
"""
    ]
    for i in range(pods):
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: p{i:04d}, labels: {{app: bench}}}}
spec:
  nodeName: node-{i % nodes + 1}
  containers: [{{name: c, ports: [{{containerPort: 80}}]}}]
"""
        )
    return "---\n".join(docs)


def bench_rate(ctx: Any, out: dict) -> None:
    from podnet.plan import plan
    from podnet.spec import load_text
    from podnet.trace import Tracer

    res = out["rate"] = {"pods": RATE_PODS, "nodes": RATE_NODES, "backend": RATE_BACKEND, "traces": RATE_TRACES}
    ctx.log.print(f"trace: {RATE_TRACES:,} random pod pairs on a plan of {RATE_PODS} pods, {RATE_NODES} nodes")
    start = time.perf_counter()
    p = plan(load_text(rate_yaml(), "<generated>"), {})
    res["plan_s"] = time.perf_counter() - start
    pods = sorted(k for k in p.topology.pods if k.startswith("default/"))
    if len(pods) != RATE_PODS:
        raise BenchError(f"the generated cluster has {len(pods)} pods, not {RATE_PODS}")
    rng = random.Random(SEED)
    pairs = [(rng.choice(pods), rng.choice(pods)) for _ in range(RATE_TRACES)]
    node_of = {k: v.node for k, v in p.topology.pods.items()}
    res["same_node_pairs"] = sum(1 for a, b in pairs if node_of[a] == node_of[b])
    tracer = Tracer(p.state, p.topology, p.state, p.dns_config)
    verdicts: Counter[str] = Counter()
    hops = 0
    cpu = time.process_time()
    start = time.perf_counter()
    for src, dst in pairs:
        if nsutil.STOP.is_set():
            raise KeyboardInterrupt
        r = tracer.trace(src, dst)
        verdicts[f"{r.verdict}/{r.reply_verdict}"] += 1
        hops += len(r.hops) + len(r.reply)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    res.update(
        wall_s=wall,
        cpu_s=cpu,
        traces_per_s=RATE_TRACES / wall,
        cpu_traces_per_s=RATE_TRACES / cpu,
        us_per_hop=wall / hops * 1e6,
        hops=hops,
        verdicts=dict(verdicts),
    )
    if verdicts.get("delivered/delivered") != RATE_TRACES:
        raise BenchError(f"not every pod pair was delivered both ways: {dict(verdicts)}")

    if ctx.profile:
        ctx.log.print(f"trace: profiling {RATE_PROFILE} traces on a fresh Tracer (not part of the figures)")
        tracer = Tracer(p.state, p.topology, p.state, p.dns_config)
        profiler = cProfile.Profile()
        profiler.enable()
        for src, dst in pairs[:RATE_PROFILE]:
            tracer.trace(src, dst)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(15)
        sys.stderr.write(text.getvalue())
        res["profile_top"] = [
            f"{Path(f).name}:{line}({fn}) {row[2]:.3f} s"
            for (f, line, fn), row in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
        ]


# --- the suite --------------------------------------------------------------------------------


def summarize(out: dict) -> None:
    planned, verify = out.get("planned", {}), out.get("verify", {})
    targets = []
    if planned.get("median_s") is not None:
        value = planned["median_s"]
        targets.append(("one trace of a plan (load, plan, walk) <= 50 ms", value, PLANNED_TARGET_S, True))
    if verify.get("median_s") is not None:
        # Fast but wrong does not count: every run must have been verified.
        targets.append(
            ("one --verify on a running cluster <= 2 s", verify["median_s"], VERIFY_TARGET_S, verify.get("verified"))
        )
    out["targets"] = [
        {"name": name, "value": value, "limit": limit, "unit": "s", "met": value <= limit and ok is True}
        for name, value, limit, ok in targets
    ]
    if verify.get("median_s") and verify.get("curl_median_s"):
        out["ratios"] = {"verify_vs_curl": verify["median_s"] / verify["curl_median_s"]}


def run(ctx: Any, out: dict) -> None:
    """Fill ``out`` phase by phase (a failure leaves what was measured so far)."""
    try:
        bench_planned(ctx, out)
        bench_verify(ctx, out)
        bench_rate(ctx, out)
    finally:
        summarize(out)


def cleanup(ctx: Any) -> list[str]:
    """Remove the suite's cluster if anything of it is left; returns what could not be removed."""
    name = _cluster(ctx)
    prefix = f"podnet_{name}_"
    problems: list[str] = []
    if "podnet" not in sys.modules:
        return problems
    from podnet import cluster as podnet_cluster
    from podnet.runtime import process
    from podnet.store import cluster_dir

    if nsutil.list_prefixed(prefix) or cluster_dir(name).exists() or process.find(name):
        try:
            podnet_cluster.down(name)
        except Exception as exc:
            problems.append(f"podnet down -c {name} failed: {exc}")
    if left := nsutil.list_prefixed(prefix):
        nsutil.delete_netns(left)
        if left := nsutil.list_prefixed(prefix):
            problems.append(f"namespaces left behind: {', '.join(left)}")
    if pids := process.find(name):
        problems.append(f"processes of cluster {name} still running: {pids}")
    return problems


# --- output -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.1f}" for k, v in stages.items()) + " (ms)"


def render(out: dict, console: Console) -> None:
    from bench.report import measure_table

    planned, verify, rate = (out.get(k, {}) for k in ("planned", "verify", "rate"))
    table = measure_table("trace benchmark")
    row = table.add_row
    if planned:
        row(
            "trace of a plan (in-process)",
            _ms(planned.get("median_s")),
            f"{planned['trace']}: load + plan + walk, {planned.get('hops')} hops + {planned.get('reply_hops')} "
            f"reply hops, {planned.get('verdict')}; median of {len(planned.get('runs_s', []))}",
        )
        if planned.get("stages_s"):
            row("  stages", "", _stages(planned["stages_s"]))
        row("  the walk alone", _ms(planned.get("walk_only_s")), "Tracer.trace on a fresh plan (planning not timed)")
        if "cli_s" in planned:
            row(
                "trace of a plan (CLI)",
                _s(planned["cli_s"]),
                f"python -m podnet trace -f ... -o json; interpreter start + imports alone {_s(planned.get('cli_import_s'))}",
            )
        table.add_section()
    if verify:
        ok = verify.get("verified")
        verdict = "[green]verified[/]" if ok else ("[bold red]NOT verified[/]" if ok is False else "-")
        row(
            "trace --verify (in-process)",
            _s(verify.get("median_s")),
            f"{verify['trace']}, cluster {verify['cluster']}: {verdict} "
            f"({verify.get('verified_runs', '?')}/{VERIFY_REPEAT + 1} runs), hops seen {verify.get('hops_seen', '-')}; "
            f"median of {len(verify.get('runs_s', []))}, first run {_s(verify.get('first_s'))}",
        )
        if verify.get("stages_s"):
            row(
                "  stages",
                "",
                _stages(verify["stages_s"])
                + f"; verify listens {verify.get('capture_after_s', 0):g} s after the probe",
            )
        row(
            "ip netns exec ... curl (baseline)",
            _s(verify.get("curl_median_s")),
            "the same TCP connection (and an HTTP request), no capture; median of "
            f"{len(verify.get('curl_runs_s', []))}",
        )
        row("ratio verify/curl", _x(out.get("ratios", {}).get("verify_vs_curl")), "what observing and capturing cost")
        row("  cluster up / down", f"{_s(verify.get('up_s'))} / {_s(verify.get('down_s'))}", "not part of the figures")
        table.add_section()
    if rate:
        row(
            f"random pod-pair traces, {rate.get('pods')} pods",
            f"{rate['traces_per_s']:,.0f}/s" if "traces_per_s" in rate else "-",
            f"{rate.get('traces', 0):,} traces with their replies on {rate.get('nodes')} {rate.get('backend')} nodes "
            f"({rate.get('same_node_pairs', '?')} same-node pairs) in {_s(rate.get('wall_s'))}; "
            f"{rate.get('us_per_hop', 0):.0f} us per hop; plan {_s(rate.get('plan_s'))}",
        )
        if "cpu_traces_per_s" in rate:
            row("  by CPU time", f"{rate['cpu_traces_per_s']:,.0f}/s", f"process CPU {_s(rate.get('cpu_s'))}")
        for line in rate.get("profile_top", []):
            row("", "", f"[dim]{line}[/]")
    console.print(table)
    for t in out.get("targets", []):
        verdict = "[bold green]OK[/]" if t["met"] else "[bold red]MISSED[/]"
        console.print(f"target: {t['name']}: {_ms(t['value'])} (limit {_ms(t['limit'])}) {verdict}")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"

"""``python -m bench [--pods N] [--only pods] [--json]``: run the benchmarks, print a table.

A missed target is reported (MISSED) but does not fail the run: the exit status is 0 unless
a benchmark could not run (1), the run was interrupted (130), or something it created could
not be removed (1). Whatever happens, everything the run created is removed before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import bgp, cni, dns, etcd, nsutil, pods, policy, services, throughput
from bench import trace as trace_suite
from bench.nsutil import BenchError

# suite name -> (run, cleanup, render)
SUITES: dict[str, tuple[Callable, Callable, Callable]] = {
    "pods": (pods.run, pods.cleanup, pods.render),
    "services": (services.run, services.cleanup, services.render),
    "dns": (
        lambda ctx, out: out.update(dns.run()),
        lambda ctx: [],  # dns.run removes its namespaces and daemons itself, even on errors
        lambda res, console: console.print(dns.render(res)),
    ),
    "cni": (
        lambda ctx, out: out.update(cni.run(containers=ctx.pods)),
        lambda ctx: cni.cleanup(),
        cni.render,
    ),
    "policy": (lambda ctx, out: out.update(policy.run(log=ctx.log.print)), lambda ctx: policy.cleanup(), policy.render),
    "throughput": (throughput.run, throughput.cleanup, throughput.render),
    "bgp": (bgp.run, bgp.cleanup, bgp.render),
    "trace": (trace_suite.run, trace_suite.cleanup, trace_suite.render),
    "etcd": (etcd.run, etcd.cleanup, etcd.render),
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = ("ip", "bash", "sysctl", f"{pods.CNI_DIR}/bridge", f"{pods.CNI_DIR}/host-local")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time podnet up/down against an ip script and the reference CNI bridge plugin.",
    )
    p.add_argument("--pods", type=_positive, default=200, help="pods, spread over 2 nodes (default 200)")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SUITES),
        help="run only this suite (may be repeated; default: all)",
    )
    p.add_argument(
        "--repeat", type=_positive, default=3, help="podnet up/down cycles; the median is reported (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument("--profile", action="store_true", help="also profile one podnet up (cProfile, on stderr)")
    p.add_argument("--no-save", action="store_true", help=f"do not write the figures to {RESULTS_DIR}/")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _missing_tools() -> list[str]:
    return [t for t in REQUIRED if not (os.access(t, os.X_OK) if t.startswith("/") else shutil.which(t))]


def _cleanup(ctx: pods.Context, selected: list[str]) -> list[str]:
    """Every suite's cleanup, each one even when another failed; the problems found."""
    problems: list[str] = []
    nsutil.stop_workers()
    for name in selected:
        try:
            problems += SUITES[name][1](ctx)
        except Exception as exc:
            problems.append(f"{name}: cleanup failed: {exc!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Console(stderr=True, highlight=False)
    if os.geteuid() != 0:
        log.print("[red]error:[/] the benchmarks create network namespaces: run them as root")
        return 2
    if missing := _missing_tools():
        log.print(f"[red]error:[/] missing {', '.join(missing)} (make deps installs them)")
        return 2

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f"podnet-bench-{pid}-"))
    # podnet keeps its state (SQLite, lock files) here, not in /var/lib/podnet.
    os.environ["PODNET_STATE_DIR"] = str(tmp / "state")
    ctx = pods.Context(
        pods=args.pods,
        tmp=tmp,
        prefix=f"pbench{pid}_",
        cluster=f"bench-{pid}",
        log=log,
        profile=args.profile,
        repeat=args.repeat,
    )
    selected = args.only or list(SUITES)
    results: dict[str, dict] = {}
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    log.print(
        f"bench: {ctx.pods} pods; namespaces {ctx.prefix}* and {ctx.podnet_prefix}*; "
        f"load average {meta['loadavg_at_start']:.2f} on {meta['cpus']} CPUs"
    )
    code = 0
    try:
        for name in selected:
            results[name] = {}
            SUITES[name][0](ctx, results[name])
    except KeyboardInterrupt:
        log.print("[yellow]interrupted: cleaning up[/]")
        code = 130
    except BenchError as exc:
        log.print(f"[red]error:[/] {exc}", soft_wrap=True)
        code = 1
    except Exception:
        log.print(traceback.format_exc(), markup=False)
        code = 1
    finally:
        with nsutil.signals_deferred():
            problems = _cleanup(ctx, selected)
            shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_at_end"] = os.getloadavg()[0]
    for problem in problems:
        log.print(f"[red]cleanup:[/] {problem}", soft_wrap=True)
    if problems:
        code = code or 1

    if args.json:
        sys.stdout.write(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    else:
        out = Console(highlight=False)
        if not out.is_terminal:
            out = Console(highlight=False, width=150)  # a file or pipe: no wrapping at 80
        for name in selected:
            if results.get(name):
                SUITES[name][2](results[name], out)
    if results and not args.no_save and code == 0:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{'-'.join(selected)}-{ctx.pods}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
        log.print(f"figures saved to {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())

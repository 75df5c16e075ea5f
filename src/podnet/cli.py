"""The command line: thin. Parses arguments, calls a use case, prints a table or JSON."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from podnet import __version__, fdlimit
from podnet import cluster as usecases
from podnet.cli_bgp import add_commands as add_bgp_commands
from podnet.errors import PodnetError, UsageError, describe_os_error, open_files_advice, out_of_files
from podnet.store import known_clusters, state_root

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 200  # piped output (docs, logs): never truncate addresses to fit 80 columns
err = Console(stderr=True, highlight=False)


def _json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _waiting(cluster_hint: str) -> Callable[[], None]:
    return lambda: err.print(f"[yellow]waiting for another podnet command on {cluster_hint} to finish...[/]")


def _progress_factory(enabled: bool):
    if not enabled:
        return None
    state: dict = {}

    def start(total: int) -> Callable[[int], None]:
        bar = Progress(
            TextColumn("applying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
        )
        bar.start()
        task = bar.add_task("apply", total=total)
        state["bar"] = bar

        def tick(n: int) -> None:
            bar.advance(task, n)
            if bar.tasks[0].completed >= total:
                bar.stop()

        return tick

    return start


def cmd_up(args: argparse.Namespace) -> int:
    files = [*([args.file] if args.file else []), *args.filename]
    if not files:
        raise UsageError("give the cluster's spec: podnet up -f FILE (a file, a directory, or - for stdin)")
    result = usecases.up(
        files,
        dry_run=args.dry_run,
        on_wait=_waiting(" ".join(files)),
        progress=_progress_factory(err.is_terminal and args.output != "json"),
        warn=_warn,
        quiet=args.quiet,
    )
    data = result.to_json()
    if args.output == "json":
        _json(data)
        return 0
    verb = "would make" if result.dry_run else "made"
    summary = ", ".join(f"{op} {n}" for op, n in data["summary"].items())
    out.print(
        f"cluster [bold]{result.cluster}[/]: {verb} {data['changes']} changes" + (f" ({summary})" if summary else "")
    )
    if args.verbose or result.dry_run:
        for line in data["details"]:
            out.print(f"  {line}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if args.all and args.cluster:
        raise UsageError("give either -c NAME or --all, not both")
    if args.all:
        results = usecases.down_all(on_wait=_waiting("a cluster"))
    else:
        name = args.cluster or usecases.resolve_cluster(None)
        results = [usecases.down(name, on_wait=_waiting(name))]
    if args.output == "json":
        _json([r.to_json() for r in results] if args.all else results[0].to_json())
    elif not results:
        out.print(f"no cluster in {state_root()} to remove")
    else:
        for r in results:
            line = f"cluster [bold]{r.cluster}[/]: removed {r.namespaces} namespaces, stopped {r.processes} processes"
            out.print(line + (", removed its state" if r.state_removed else ""))
    for r in results:
        if r.error:  # what could not be done, said once, whatever the output format
            err.print(f"[red]error:[/] cluster {r.cluster}: {escape(r.error)}", soft_wrap=True)
    return 1 if any(r.error for r in results) else 0


def cmd_status(args: argparse.Namespace) -> int:
    name = args.cluster
    if name is None:
        here = known_clusters()
        if len(here) != 1:
            return _list_clusters(args)
        name = here[0]
    data = usecases.status(name)
    if args.output == "json":
        _json(data)
        return 0
    out.print(f"cluster [bold]{name}[/] (backend {data['backend']}, pod MTU {data['mtu']})")
    nodes = Table("NODE", "NETNS", "SUBNET", "UNDERLAY IP", "POD CIDR", "READY", box=None, header_style="bold")
    for n in data["nodes"]:
        nodes.add_row(n["name"], n["netns"], n["subnet"], n["underlay_ip"], n["pod_cidr"], _yes(n["ready"]))
    out.print(nodes)
    out.print()
    if data["routers"]:
        routers = Table("ROUTER", "NETNS", "INTERFACES", "READY", box=None, header_style="bold")
        for r in data["routers"]:
            ifaces = "  ".join(f"{i['ifname']} {i['ip']} ({i['subnet']})" for i in r["interfaces"])
            routers.add_row(r["name"] + (" (edge)" if r["edge"] else ""), r["netns"], ifaces, _yes(r["ready"]))
        out.print(routers)
        out.print()
    if data["external_hosts"]:
        hosts = Table("EXTERNAL HOST", "NETNS", "IP", "PORTS", "READY", box=None, header_style="bold")
        for h in data["external_hosts"]:
            hosts.add_row(h["name"], h["netns"], h["ip"], ",".join(h["ports"]) or "-", _yes(h["ready"]))
        out.print(hosts)
        out.print()
    pods = Table("NAMESPACE", "POD", "NODE", "IP", "MAC", "PORTS", "READY", box=None, header_style="bold")
    for p in data["pods"]:
        pods.add_row(
            p["namespace"], p["name"], p["node"], p["ip"], p["mac"], ",".join(p["ports"]) or "-", _yes(p["ready"])
        )
    out.print(pods)
    for note in data.get("notes", []):
        out.print(f"[yellow]{note}[/]")
    if data["services"]:
        out.print()
        services = Table(
            "NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "PORTS", "ENDPOINTS", box=None, header_style="bold"
        )
        for svc in data["services"]:
            ports = ",".join(
                f"{p['port']}" + (f":{p['node_port']}" if p["node_port"] else "") + f"/{p['protocol']}"
                for p in svc["ports"]
            )
            endpoints = sorted({e for p in svc["ports"] for e in p["endpoints"]})
            services.add_row(
                svc["namespace"],
                svc["name"],
                svc["type"]
                + (" (Local)" if svc["external_traffic_policy"] == "Local" and svc["type"] == "NodePort" else ""),
                svc["cluster_ip"] or "None",
                ports,
                ",".join(endpoints) or "[red]<none>[/]",
            )
        out.print(services)
    return 0


def _list_clusters(args: argparse.Namespace) -> int:
    """``status`` with no cluster named, and none or several here: every cluster of the machine."""
    listed = usecases.clusters()
    if args.output == "json":
        _json({"state_dir": str(state_root()), "clusters": listed})
        return 0
    if not listed:
        out.print("no clusters on this machine; bring one up with 'podnet up FILE'")
        return 0
    table = Table("CLUSTER", "STATE", "NAMESPACES", "NODES", "PODS", "STATE DIR", box=None, header_style="bold")
    for c in listed:
        state = {"up": "[green]up[/]", "state lost": "[red]state lost[/]"}.get(c["state"], c["state"])
        sizes = ["-" if c[k] is None else str(c[k]) for k in ("nodes", "pods")]
        table.add_row(c["name"], state, str(c["namespaces"]), *sizes, c["state_dir"] or "-")
    out.print(table)
    if any(c["state"] == "state lost" for c in listed):
        out.print(
            "a cluster whose state is lost: 'podnet up FILE' recovers it from the kernel, 'podnet down -c NAME' removes it"
        )
    return 0


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def cmd_exec(args: argparse.Namespace) -> int:
    name = usecases.resolve_cluster(args.cluster)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("nothing to run: give a command after --, e.g. podnet exec web-1 -- ip addr")
    ns = usecases.exec_target(name, args.target)
    sys.stdout.flush()
    fdlimit.restore(args.open_files)  # the command runs with the limits it was given
    # `ip netns exec` also bind-mounts /etc/netns/<name>/* (a pod's resolv.conf) for the command.
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])
    return 127  # not reached


def cmd_trace(args: argparse.Namespace) -> int:
    from podnet.trace.render import render

    if args.file and args.cluster:
        raise UsageError("give either -c NAME (a running cluster) or -f FILE (a plan), not both")
    result = usecases.trace(
        args.src,
        args.dst,
        args.proto,
        args.port,
        cluster=None if args.file else args.cluster,
        file=args.file,
        verify=args.verify,
        cold=args.cold,
        warn=_warn,
    )
    if args.output == "json":
        _json(result.to_json())
    else:
        render(result, out, verbose=args.verbose)
    return 1 if result.verified is False else 0


def cmd_diagram(args: argparse.Namespace) -> int:
    from podnet import diagram

    if args.file and args.cluster:
        raise UsageError("give either -c NAME (a running cluster) or -f FILE (a plan), not both")
    if args.output:
        diagram.output_format(args.output)  # a bad extension is refused before any work
    text = usecases.diagram(args.cluster, args.file, args.trace, args.proto, args.port, warn=_warn)
    if not args.output:
        sys.stdout.write(text)
        return 0
    diagram.write(text, args.output)
    err.print(f"wrote {args.output}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from podnet import probe

    name = usecases.resolve_cluster(args.cluster)
    m = probe.probe(name, args.port, args.proto.upper(), args.sources, args.targets, args.model, args.timeout)
    if args.output == "json":
        _json(m.to_json())
    else:
        probe.render(m, out)
    return 1 if m.disagreements else 0


def cmd_netexec_daemon(args: argparse.Namespace) -> int:
    from podnet.runtime import netexec

    netexec.main(Path(args.state_dir))
    return 0


def cmd_dns_daemon(args: argparse.Namespace) -> int:
    from podnet.runtime import dns

    dns.main(Path(args.state_dir))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from podnet.cni import agent

    return agent.run(args.node, args.config, args.socket, args.state_dir, args.workers)


def cmd_cni_install(args: argparse.Namespace) -> int:
    from podnet.cni import install

    done = install.install(args.network, args.bin_dir, args.conf_dir, args.socket, args.portmap)
    if args.output == "json":
        _json(done)
    else:
        out.print(f"plugin  {done['plugin']}\nconfig  {done['conflist']}")
    return 0


def _add_cni_commands(sub) -> None:
    from podnet.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
    from podnet.cni.shim import DEFAULT_SOCKET

    p = sub.add_parser("agent", help="the node daemon behind the CNI plugin: programs this namespace as a node")
    p.add_argument("--node", required=True, help="this node's name in the cluster file")
    p.add_argument("--config", required=True, help="the cluster file (podCIDR, backend, nodes)")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"where podnet-cni reaches it (default {DEFAULT_SOCKET})")
    p.add_argument("--state-dir", help="allocations (default $PODNET_STATE_DIR/agent/CLUSTER_NODE)")
    p.add_argument("--workers", type=int, default=8, help="requests served at once (default 8)")
    p.set_defaults(func=cmd_agent, daemon=True)

    p = sub.add_parser("cni", help="the CNI plugin: install it for a container runtime")
    cni = p.add_subparsers(dest="cni_command", required=True, metavar="COMMAND")
    p = cni.add_parser("install", help="copy podnet-cni into a CNI bin directory and write a conflist")
    p.add_argument("--network", required=True, help="the network name runtimes use")
    p.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help=f"default {DEFAULT_BIN_DIR}")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR, help=f"default {DEFAULT_CONF_DIR}")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="the agent's socket, written into the conflist")
    p.add_argument("--portmap", action="store_true", help="chain the reference portmap plugin (hostPort)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    p.set_defaults(func=cmd_cni_install)


def port_number(text: str) -> int:
    """A TCP/UDP port on the command line: refused while parsing when out of range (exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (expected 1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (expected a port 1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podnet", description="Kubernetes networking on the real Linux kernel.")
    parser.add_argument("--version", action="version", version=f"podnet {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, cluster: bool = True) -> None:
        if cluster:
            p.add_argument("-c", "--cluster", help="cluster name (may be left out when only one exists)")
        p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")

    p = sub.add_parser("up", help="create or converge a cluster from a file")
    p.add_argument("file", nargs="?", help="the spec (as -f FILE)")
    p.add_argument("-f", "--filename", action="append", default=[], help="a file, a directory or -; repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="no warnings about Kubernetes fields podnet ignores")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="list every change")
    common(p, cluster=False)
    p.set_defaults(func=cmd_up, root=True)

    p = sub.add_parser("down", help="remove everything of a cluster")
    common(p)
    p.add_argument("--all", action="store_true", help="every cluster of this state directory")
    p.set_defaults(func=cmd_down, root=True)

    p = sub.add_parser("status", help="nodes and pods of a cluster; every cluster when none is named")
    common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command in a pod's or node's network namespace")
    p.add_argument("-c", "--cluster")
    p.add_argument("target", help="NS/POD, POD (namespace default), NODE, ROUTER or external HOST")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec, root=True)

    p = sub.add_parser("trace", help="the life of a packet: every hop, every decision; --verify proves it")
    p.add_argument("src", help="NS/POD, POD, NODE, ROUTER or external HOST")
    p.add_argument("dst", help="any of those, an IP address, or a DNS name (web.shop)")
    p.add_argument("-c", "--cluster", help="trace the observed state of this running cluster")
    p.add_argument("-f", "--file", help="trace the planned state of this file (no root needed)")
    p.add_argument("--port", type=port_number, help="destination port (default 80 for tcp, 53 for udp)")
    p.add_argument("--proto", choices=["tcp", "udp", "sctp", "icmp"], default="tcp")
    p.add_argument("--verify", action="store_true", help="send the packet for real and capture it at every hop")
    p.add_argument("--cold", action="store_true", help="with --verify: flush neighbour caches first, so ARP is seen")
    p.add_argument("-v", "--verbose", action="store_true", help="every route candidate and note")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_trace, root=lambda a: not a.file)  # the observed state is read in the namespaces

    p = sub.add_parser("diagram", help="the cluster as a picture (Graphviz), a trace's path drawn over it")
    p.add_argument("-c", "--cluster", help="draw this running cluster")
    p.add_argument("-f", "--file", help="draw the plan of this file (no root needed)")
    p.add_argument("--trace", nargs=2, metavar=("SRC", "DST"), help="draw the path of this trace over it")
    p.add_argument("--port", type=port_number, help="with --trace: destination port (default 80 for tcp, 53 for udp)")
    p.add_argument("--proto", choices=["tcp", "udp", "sctp", "icmp"], default="tcp", help="with --trace (default tcp)")
    p.add_argument("-o", "--output", metavar="FILE", help="out.svg, out.png or out.dot (default: dot on stdout)")
    p.set_defaults(func=cmd_diagram, root=lambda a: bool(a.trace) and not a.file)

    p = sub.add_parser("probe", help="probe every pod pair for real and print the reachability matrix")
    common(p)
    p.add_argument("--port", type=port_number, default=80, help="destination port (default 80)")
    p.add_argument("--proto", choices=["tcp", "udp"], default="tcp", help="protocol (default tcp)")
    p.add_argument("--from", dest="sources", metavar="SELECTOR", help="source pods: NS/POD (wildcards), key=value, ...")
    p.add_argument("--to", dest="targets", metavar="SELECTOR", help="destination pods, as --from")
    p.add_argument("--model", action="store_true", help="compare with the policies; exit 1 when a cell disagrees")
    p.add_argument("--timeout", type=float, default=1.5, help="seconds a denied probe is waited for (default 1.5)")
    p.set_defaults(func=cmd_probe, root=True)

    # The daemons podnet starts: commands, but not a user's (no help given: argparse lists them not).
    p = sub.add_parser("netexec-daemon")
    p.add_argument("--cluster", required=True)
    p.add_argument("--state-dir", required=True)
    p.set_defaults(func=cmd_netexec_daemon, daemon=True)

    p = sub.add_parser("dns-daemon")
    p.add_argument("--cluster", required=True)
    p.add_argument("--state-dir", required=True)
    p.set_defaults(func=cmd_dns_daemon, daemon=True)
    _add_cni_commands(sub)
    add_bgp_commands(sub)  # routes, fault
    return parser


def _needs_root(args: argparse.Namespace) -> None:
    """Refuse, in one line, a command that reads or changes network namespaces when not root."""
    needed = getattr(args, "root", False)
    if (needed(args) if callable(needed) else needed) and os.geteuid() != 0:
        raise PodnetError(f"podnet {args.verb} needs root: it works inside network namespaces (run it with sudo)")


class _Interrupt:
    """Ctrl-C while a command runs: a KeyboardInterrupt (``finally`` blocks run, the next
    ``up`` repairs whatever was half done), remembered, so that the command exits 130 even when
    some library swallowed the exception (pyroute2 imports its plugins under a bare ``except``)."""

    seen = False

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    daemon = getattr(args, "daemon", False)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # an ignored Ctrl-C (nohup, `&`) stays ignored
        signal.signal(signal.SIGINT, signal.default_int_handler if daemon else _Interrupt.handle)
    args.open_files = fdlimit.raise_to_hard()
    if not daemon:
        # A command runs for seconds over objects that form no cycles (a plan of 5,000 Services
        # holds ~100,000); the cycle collector walking them again and again was 40% of a
        # no-change `up`. The daemons keep it.
        gc.disable()
        # A destructor failing on the way out (an asyncio loop half built when the descriptors
        # ran out) has nothing to tell a user: the command's own error has been said.
        sys.unraisablehook = _quiet_unless_debugging
    code = _run(args)
    if _Interrupt.seen:
        code = 130
    sys.exit(code)


def _quiet_unless_debugging(unraisable: sys.UnraisableHookArgs) -> None:
    if os.environ.get("PODNET_DEBUG"):
        sys.__unraisablehook__(unraisable)


def _run(args: argparse.Namespace) -> int:
    """Run one command; every failure is one line on stderr and an exit code, never a traceback
    (``PODNET_DEBUG=1`` shows the traceback of one podnet did not expect)."""
    try:
        _needs_root(args)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except PodnetError as exc:
        message = f"{exc}; {open_files_advice()}" if out_of_files(exc) else str(exc)
        return _fail(message, exc.exit_code)
    except BrokenPipeError:
        # The reader went away (`podnet status | head`): nothing more to say, to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        return _fail(describe_os_error(exc), 1)
    except Exception as exc:
        if os.environ.get("PODNET_DEBUG"):
            raise
        return _fail(f"internal error, a bug in podnet: {type(exc).__name__}: {exc} (PODNET_DEBUG=1 shows where)", 1)


def _fail(message: str, code: int) -> int:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return code

"""The command line: thin. Parses arguments, calls a use case, prints a table or JSON."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from podnet import cluster as usecases
from podnet.cli_bgp import add_commands as add_bgp_commands
from podnet.errors import PodnetError, UsageError

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 200  # piped output (docs, logs): never truncate addresses to fit 80 columns
err = Console(stderr=True, highlight=False)


def _json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


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
    result = usecases.up(
        args.file,
        dry_run=args.dry_run,
        on_wait=_waiting(args.file),
        progress=_progress_factory(err.is_terminal and args.output != "json"),
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
    name = args.cluster or usecases.resolve_cluster(None)
    result = usecases.down(name, on_wait=_waiting(name))
    if args.output == "json":
        _json(result.to_json())
    else:
        out.print(
            f"cluster [bold]{name}[/]: removed {result.namespaces} namespaces, stopped {result.processes} processes"
            + (", removed its state" if result.state_removed else "")
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    name = usecases.resolve_cluster(args.cluster)
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


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def cmd_exec(args: argparse.Namespace) -> int:
    name = usecases.resolve_cluster(args.cluster)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise PodnetError("nothing to run: give a command after --, e.g. podnet exec web-1 -- ip addr")
    ns = usecases.exec_target(name, args.target)
    sys.stdout.flush()
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
    text = usecases.diagram(args.cluster, args.file, args.trace, args.proto, args.port)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podnet", description="Kubernetes networking on the real Linux kernel.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, cluster: bool = True) -> None:
        if cluster:
            p.add_argument("-c", "--cluster", help="cluster name (may be left out when only one exists)")
        p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")

    p = sub.add_parser("up", help="create or converge a cluster from a file")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="list every change")
    common(p, cluster=False)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="remove everything of a cluster")
    common(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="nodes and pods of a cluster")
    common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command in a pod's or node's network namespace")
    p.add_argument("-c", "--cluster")
    p.add_argument("target", help="NS/POD, POD (namespace default), NODE, ROUTER or external HOST")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("trace", help="the life of a packet: every hop, every decision; --verify proves it")
    p.add_argument("src", help="NS/POD, POD, NODE, ROUTER or external HOST")
    p.add_argument("dst", help="any of those, an IP address, or a DNS name (web.shop)")
    p.add_argument("-c", "--cluster", help="trace the observed state of this running cluster")
    p.add_argument("-f", "--file", help="trace the planned state of this file (no root needed)")
    p.add_argument("--port", type=int, help="destination port (default 80 for tcp, 53 for udp)")
    p.add_argument("--proto", choices=["tcp", "udp", "sctp", "icmp"], default="tcp")
    p.add_argument("--verify", action="store_true", help="send the packet for real and capture it at every hop")
    p.add_argument("--cold", action="store_true", help="with --verify: flush neighbour caches first, so ARP is seen")
    p.add_argument("-v", "--verbose", action="store_true", help="every route candidate and note")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("diagram", help="the cluster as a picture (Graphviz), a trace's path drawn over it")
    p.add_argument("-c", "--cluster", help="draw this running cluster")
    p.add_argument("-f", "--file", help="draw the plan of this file (no root needed)")
    p.add_argument("--trace", nargs=2, metavar=("SRC", "DST"), help="draw the path of this trace over it")
    p.add_argument("--port", type=int, help="with --trace: destination port (default 80 for tcp, 53 for udp)")
    p.add_argument("--proto", choices=["tcp", "udp", "sctp", "icmp"], default="tcp", help="with --trace (default tcp)")
    p.add_argument("-o", "--output", metavar="FILE", help="out.svg, out.png or out.dot (default: dot on stdout)")
    p.set_defaults(func=cmd_diagram)

    p = sub.add_parser("probe", help="probe every pod pair for real and print the reachability matrix")
    common(p)
    p.add_argument("--port", type=int, default=80, help="destination port (default 80)")
    p.add_argument("--proto", choices=["tcp", "udp"], default="tcp", help="protocol (default tcp)")
    p.add_argument("--from", dest="sources", metavar="SELECTOR", help="source pods: NS/POD (wildcards), key=value, ...")
    p.add_argument("--to", dest="targets", metavar="SELECTOR", help="destination pods, as --from")
    p.add_argument("--model", action="store_true", help="compare with the policies; exit 1 when a cell disagrees")
    p.add_argument("--timeout", type=float, default=1.5, help="seconds a denied probe is waited for (default 1.5)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("netexec-daemon", help=argparse.SUPPRESS)
    p.add_argument("--cluster", required=True)
    p.add_argument("--state-dir", required=True)
    p.set_defaults(func=cmd_netexec_daemon, daemon=True)

    p = sub.add_parser("dns-daemon", help=argparse.SUPPRESS)
    p.add_argument("--cluster", required=True)
    p.add_argument("--state-dir", required=True)
    p.set_defaults(func=cmd_dns_daemon, daemon=True)
    _add_cni_commands(sub)
    add_bgp_commands(sub)  # routes, fault
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not getattr(args, "daemon", False):
        # A command runs for seconds over objects that form no cycles (a plan of 5,000 Services
        # holds ~100,000); the cycle collector walking them again and again was 40% of a
        # no-change `up`. The daemons keep it.
        gc.disable()
    try:
        code = args.func(args)
    except PodnetError as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

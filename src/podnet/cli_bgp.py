"""The BGP commands of the CLI: ``podnet routes`` and ``podnet fault``. Thin, like cli.py."""

from __future__ import annotations

import argparse

from rich.table import Table

from podnet import cluster as usecases


def add_commands(sub) -> None:
    p = sub.add_parser("routes", help="BGP sessions and RIB (AS path, next hop, why best) beside the kernel FIB")
    p.add_argument("-c", "--cluster", help="cluster name (may be left out when only one exists)")
    p.add_argument("where", help="a NODE or ROUTER")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    p.set_defaults(func=cmd_routes, root=True)

    p = sub.add_parser(
        "fault",
        help="inject faults: link down|up A B, router stop|start R; --heal undoes them all",
        description="Break a running cluster on purpose. Without arguments: list the active faults.",
    )
    p.add_argument("-c", "--cluster", help="cluster name (may be left out when only one exists)")
    p.add_argument(
        "words", nargs="*", metavar="FAULT", help="link down A B | link up A B | router stop R | router start R"
    )
    p.add_argument("--heal", action="store_true", help="undo every fault still recorded")
    p.add_argument(
        "--keep-carrier",
        action="store_true",
        help="link down: drop frames but keep the link up (a gray failure, found by BFD rather than by carrier loss)",
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    p.set_defaults(func=cmd_fault, root=True)


def cmd_fault(args: argparse.Namespace) -> int:
    from podnet import faults
    from podnet.cli import _json, out
    from podnet.errors import UsageError

    name = usecases.resolve_cluster(args.cluster)
    if args.heal and args.words:
        raise UsageError("give a fault or --heal, not both")
    if args.heal:
        data = faults.heal(name)
    elif args.words:
        data = faults.inject(name, list(args.words), keep_carrier=args.keep_carrier)
    else:
        data = faults.listing(name)
    if args.output == "json":
        _json(data)
        return 0
    for line in data["done"]:
        out.print(f"cluster [bold]{name}[/]: {line}")
    if data["active"]:
        out.print("active faults: " + "; ".join(data["active"]))
    elif not data["done"] or args.heal:
        out.print(f"cluster [bold]{name}[/]: no active faults")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from podnet.cli import _json, out
    from podnet.routes import routes

    name = usecases.resolve_cluster(args.cluster)
    data = routes(name, args.where)
    if args.output == "json":
        _json(data)
        return 0
    head = f"{data['role']} [bold]{data['where']}[/] ({data['netns']})"
    if data["asn"] is not None:
        head += f": AS {data['asn']}, router id {data['router_id']}, BIRD {data['bird']}"
    else:
        head += f": backend {data['backend']}, no BGP"
    out.print(head)
    if data["sessions"]:
        out.print()
        t = Table(
            "SESSION", "PEER", "TYPE", "PEER ADDRESS", "PEER AS", "STATE", "SINCE", "BFD", box=None, header_style="bold"
        )
        for s in data["sessions"]:
            state = s["state"] + (
                f" ({s['last_error']})" if s.get("last_error") and s["state"] != "Established" else ""
            )
            colour = "green" if s["state"] == "Established" else "red"
            t.add_row(
                s["protocol"],
                s["peer"],
                s["type"],
                s["peer_address"],
                str(s["peer_as"]),
                f"[{colour}]{state}[/]",
                s["since"],
                s["bfd"],
            )
        out.print(t)
    if data["rib"]:
        out.print()
        t = Table("PREFIX", "", "FROM", "AS PATH", "NEXT HOP", "FIB", "WHY", box=None, header_style="bold")
        for entry in data["rib"]:
            for i, path in enumerate(entry["paths"]):
                hop = path["next_hop"] or path["dev"] or "-"
                if path["next_hop"] and path["dev"]:
                    hop += f" ({path['dev']})"
                t.add_row(
                    entry["prefix"] if i == 0 else "",
                    "*" if path["best"] else "",
                    path["from"] or path["protocol"],
                    " ".join(str(a) for a in path["as_path"]) or "-",
                    hop,
                    "yes" if path["in_fib"] else "",
                    path["why"],
                )
        out.print(t)
    out.print()
    t = Table("KERNEL FIB", "PROTO", "METRIC", "NEXT HOPS", box=None, header_style="bold")
    for r in data["fib"]:
        hops = ", ".join(
            (f"via {h['gateway']} dev {h['dev']}" if h["gateway"] else f"dev {h['dev']}") for h in r["nexthops"]
        )
        if len(r["nexthops"]) > 1:
            hops = "ECMP: " + hops
        t.add_row(r["dst"], r["proto"], str(r["metric"]), hops)
    out.print(t)
    return 0

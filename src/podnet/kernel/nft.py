"""podnet's nftables tables: one ``nft -f`` transaction per namespace, touching only what changed.

Like kube-proxy's nftables proxier, a sync writes the difference between the table it wants
and the table it has: new chains and their rules, flushed-and-refilled chains whose rules
changed, added and deleted map elements, deleted chains and sets. Unchanged services cost
nothing, one changed service costs its own chain and elements, and the whole script is one
transaction, so no packet ever sees half a ruleset.

Reading back (``observe``) parses ``nft -j``: chains with their hooks, rules by the id each
carries in its comment, and set/map elements rendered back to nft source.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable

from podnet.errors import KernelError
from podnet.kernel import netns
from podnet.state import NftChain, NftSet, NftTable

CHUNK = 2000  # elements per "add element" line


def _nft(ns: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "nft", *args], input=stdin, capture_output=True, text=True
    )


def _hook(chain: NftChain) -> str:
    assert chain.hook is not None
    kind, hook, prio, policy = chain.hook
    return f"{{ type {kind} hook {hook} priority {prio}; policy {policy}; }}"


def script(want: NftTable, have: NftTable | None) -> str:
    """The nft commands that turn ``have`` (None: no table) into ``want``."""
    t = f"{want.family} {want.name}"
    have = have or NftTable(want.family, want.name)
    lines = [f"add table {t}"]
    flushes: list[str] = []
    removals: list[str] = []

    for name, s in want.sets.items():
        if name not in have.sets:
            lines.append(f"add {s.kind} {t} {_q(name)} {{ {s.decl}; }}")
    recreated = {n for n, c in want.chains.items() if n in have.chains and have.chains[n].hook != c.hook}
    for name in recreated:
        removals.append(f"delete chain {t} {_q(name)}")
    for name, chain in want.chains.items():
        if name not in have.chains or name in recreated:
            lines.append(f"add chain {t} {_q(name)}" + (f" {_hook(chain)}" if chain.hook else ""))
    for name, s in have.sets.items():
        if name in want.sets and not s.dynamic:
            stale = s.elements - want.sets[name].elements
            lines += _element_lines("delete", t, name, stale)

    body: list[str] = []
    for name, chain in want.chains.items():
        old = have.chains.get(name)
        if old is not None and name not in recreated:
            if old.ids == chain.ids:
                continue
            body.append(f"flush chain {t} {_q(name)}")
        body += [f"add rule {t} {_q(name)} {rule.render()}" for rule in chain.rules]
    for name, s in want.sets.items():
        old_elements = have.sets[name].elements if name in have.sets else frozenset()
        if not s.dynamic:
            body += _element_lines("add", t, name, s.elements - old_elements)

    for name in have.chains:
        if name not in want.chains or name in recreated:
            flushes.append(f"flush chain {t} {_q(name)}")
            if name not in recreated:
                removals.append(f"delete chain {t} {_q(name)}")
    for name, s in have.sets.items():
        if name not in want.sets:
            removals.append(f"delete {s.kind} {t} {_q(name)}")
    # Recreated base chains are deleted before they are added again.
    early = [r for r in removals if r.startswith("delete chain") and r.split()[-1] in recreated]
    # Sets and maps go before chains: a verdict map's elements hold the chains they jump to.
    late = sorted((r for r in removals if r not in early), key=lambda r: r.startswith("delete chain"))
    return "\n".join([*flushes, *early, *lines, *body, *late]) + "\n"


def _q(name: str) -> str:
    return name


def _element_lines(verb: str, table: str, name: str, elements: Iterable[str]) -> list[str]:
    items = sorted(elements)
    return [
        f"{verb} element {table} {_q(name)} {{ {', '.join(items[i : i + CHUNK])} }}"
        for i in range(0, len(items), CHUNK)
    ]


def load(ns: str, want: NftTable, have: NftTable | None) -> None:
    text = script(want, have)
    proc = _nft(ns, ["-f", "-"], text)
    if proc.returncode != 0:
        raise KernelError(f"{ns}: nft refused the update of table {want.family} {want.name}: {proc.stderr.strip()}")


def delete(ns: str, table: NftTable) -> None:
    proc = _nft(ns, ["delete", "table", table.family, table.name])
    if proc.returncode != 0 and "No such file" not in proc.stderr:
        raise KernelError(f"{ns}: nft could not delete table {table.family} {table.name}: {proc.stderr.strip()}")


def observe(ns: str, family: str = "ip", name: str = "podnet") -> NftTable | None:
    proc = _nft(ns, ["-j", "list", "table", family, name])
    if proc.returncode != 0:
        return None
    return parse(json.loads(proc.stdout), family, name)


def parse(data: dict, family: str = "ip", name: str = "podnet") -> NftTable:
    """An NftTable from ``nft -j list table`` output."""
    table = NftTable(family, name)
    hooks: dict[str, tuple | None] = {}
    rules: dict[str, list[str]] = {}
    for item in data.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            hooks[c["name"]] = (c["type"], c["hook"], c["prio"], c["policy"]) if "hook" in c else None
            rules.setdefault(c["name"], [])
        elif "rule" in item:
            r = item["rule"]
            comment = r.get("comment", "")
            rules.setdefault(r["chain"], []).append(comment.rsplit("#", 1)[1] if "#" in comment else "?")
        elif "set" in item or "map" in item:
            kind = "set" if "set" in item else "map"
            s = item[kind]
            flags = set(s.get("flags", []))
            elements = frozenset(_element(e, kind) for e in s.get("elem", []))
            dynamic = "timeout" in flags or "dynamic" in flags
            table.sets[s["name"]] = NftSet(s["name"], "", kind, frozenset() if dynamic else elements, dynamic)
    for chain, hook in hooks.items():
        table.chains[chain] = NftChain(chain, hook, (), tuple(rules.get(chain, [])))
    return table


def _value(v: object) -> str:
    if isinstance(v, dict):
        if "concat" in v:
            return " . ".join(_value(x) for x in v["concat"])
        if "elem" in v:
            return _value(v["elem"]["val"])
        for verdict in ("goto", "jump"):
            if verdict in v:
                return f"{verdict} {v[verdict]['target']}"
        if len(v) == 1:
            return next(iter(v))  # {"drop": null}, {"accept": null}
    return str(v)


def _element(e: object, kind: str) -> str:
    if kind == "map" and isinstance(e, list):
        return f"{_value(e[0])} : {_value(e[1])}"
    return _value(e)

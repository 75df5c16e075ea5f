"""podnet's nftables tables: the difference between the table wanted and the table there.

Like kube-proxy's nftables proxier, a sync writes only what changed: new chains and their
rules, flushed-and-refilled chains whose rules changed, added and deleted map elements,
deleted chains and sets. Unchanged services cost nothing, one changed service costs its own
chain and elements. A sync is at most two transactions (``plan_sync``): an ``nft -f`` script
for declarations and the rules that are not Service rules, then one netlink batch
(``nftnl``) for everything Services consist of, so a Services change is never half applied.

Reading back (``read``) parses ``nft -j``: chains with their hooks, rules by the id each
carries in its comment, and set/map elements rendered back to nft source; ``observe`` uses
podnet's own record instead while the kernel says nothing was committed since (``nftcache``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from podnet import gcpause
from podnet.errors import KernelError
from podnet.kernel import netns, nftcache, nftnl
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


@dataclass
class Sync:
    """One table's update: an nft script, then a netlink batch, each one transaction.

    ``before`` (nft source) adds the table and new sets (empty, so nothing uses them yet) and
    writes what nft writes: base chains, and every rule that is not a Service rule. ``batch``
    (netlink) holds everything a Services change is made of: the service chains (added,
    refilled, removed), the elements of the service maps, and the removal of whatever else
    nothing refers to any more; so adding, changing or removing Services is one transaction.
    Without netlink (``script``), ``after`` holds those removals and the whole sync is one
    nft script.

    Service chains are only ever referred to by Service rules and service-map elements, so
    the nft step never needs a chain the batch has yet to add.
    """

    before: list[str]
    batch: nftnl.Batch | None
    after: list[str]
    # What the sync changes, for the record of the table (nftcache): sets added, changed or
    # removed, and whether any chain is.
    sets_changed: frozenset[str] = frozenset()
    chains_changed: bool = False


def _via_netlink(chain: NftChain) -> bool:
    return chain.hook is None and bool(chain.rules) and all(rule.code for rule in chain.rules)


def plan_sync(want: NftTable, have: NftTable | None, netlink: bool = True) -> Sync:
    """The steps that turn ``have`` (None: no table) into ``want``."""
    with gcpause.paused():
        return _plan_sync(want, have, netlink)


def _plan_sync(want: NftTable, have: NftTable | None, netlink: bool) -> Sync:
    t = f"{want.family} {want.name}"
    table_exists = have is not None
    have = have or NftTable(want.family, want.name)
    batch = nftnl.Batch(want.family, want.name) if netlink else None
    before = [f"add table {t}"]
    after: list[str] = []

    for name, s in want.sets.items():
        if name not in have.sets:
            before.append(f"add {s.kind} {t} {name} {{ {s.decl}; }}")
    # One pass over the chains: new ones, ones whose hook changed (deleted and added again),
    # and ones whose rules changed (flushed and refilled).
    fresh: list[str] = []
    recreated: list[str] = []
    refill: list[str] = []
    for name, chain in want.chains.items():
        old = have.chains.get(name)
        if old is None:
            fresh.append(name)
        elif old.hook != chain.hook:
            recreated.append(name)
            fresh.append(name)
        elif old.ids != chain.ids:
            refill.append(name)
    before += [f"delete chain {t} {name}" for name in recreated]
    for name in fresh:
        chain = want.chains[name]
        if batch is not None and _via_netlink(chain):
            batch.add_chain(name)
        else:
            before.append(f"add chain {t} {name}" + (f" {_hook(chain)}" if chain.hook else ""))

    codecs = {
        name: codec
        for name, s in want.sets.items()
        if batch is not None and s.netlink and not s.dynamic and (codec := nftnl.ElementCodec.of(s.decl))
    }
    changed: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # set -> (stale, added)
    for name, s in want.sets.items():
        old = have.sets.get(name)
        if s.dynamic or (old is not None and old.elements == s.elements):
            continue  # one pass over an unchanged set, not two differences
        changed[name] = (old.elements - s.elements, s.elements - old.elements) if old else (frozenset(), s.elements)

    for name, (stale, _) in changed.items():
        if name in codecs and batch is not None:
            batch.elements("delete", name, codecs[name], stale)
        else:
            before += _element_lines("delete", t, name, stale)
    for name, refilled in [*((n, False) for n in fresh), *((n, True) for n in refill)]:
        chain = want.chains[name]
        if batch is not None and _via_netlink(chain):
            if refilled:
                batch.flush_chain(name)
            for rule in chain.rules:
                batch.add_rule(name, rule.code, rule.note)
        else:
            if refilled:
                before.append(f"flush chain {t} {name}")
            before += [f"add rule {t} {name} {rule.render()}" for rule in chain.rules]
    for name, (_, added) in changed.items():
        if name in codecs and batch is not None:
            batch.elements("add", name, codecs[name], added)
        else:
            before += _element_lines("add", t, name, added)

    # Chains of ``have`` not wanted: only looked for when the counts say there are some.
    kept = len(want.chains) - len(fresh) + len(recreated)
    removed = [name for name in have.chains if name not in want.chains] if kept != len(have.chains) else []
    removed_sets = [(name, s.kind) for name, s in have.sets.items() if name not in want.sets]
    # Rules go first, then sets and maps (a verdict map's elements hold the chains they jump
    # to), then the chains.
    if batch is not None:
        for name in removed:
            batch.flush_chain(name)
        for name, _ in removed_sets:
            batch.delete_set(name)
        for name in removed:
            batch.delete_chain(name)
    else:
        after += [f"flush chain {t} {name}" for name in removed]
        after += [f"delete {kind} {t} {name}" for name, kind in removed_sets]
        after += [f"delete chain {t} {name}" for name in removed]
    if table_exists and before == [f"add table {t}"]:
        before = []
    sets_changed = frozenset([*changed, *(n for n in want.sets if n not in have.sets), *(n for n, _ in removed_sets)])
    chains_changed = bool(fresh or refill or removed)
    return Sync(before, batch if batch else None, after, sets_changed, chains_changed)


def script(want: NftTable, have: NftTable | None) -> str:
    """The nft commands that turn ``have`` (None: no table) into ``want``, as one script."""
    sync = plan_sync(want, have, netlink=False)
    return "\n".join([*sync.before, *sync.after]) + "\n" if sync.before or sync.after else ""


def _element_lines(verb: str, table: str, name: str, elements: Iterable[str]) -> list[str]:
    items = sorted(elements)
    return [
        f"{verb} element {table} {name} {{ {', '.join(items[i : i + CHUNK])} }}" for i in range(0, len(items), CHUNK)
    ]


FRESH_GENERATION = 1  # nf_tables' generation in a namespace nothing was ever committed in

# What this process last knew of a table exactly, by (namespace, family, name): the table
# (None: there was none) and the generation it was read back (observe, read) or written at.
_known: dict[tuple[str, str, str], tuple[tuple[int, int], NftTable | None]] = {}


def load(ns: str, want: NftTable, have: NftTable | None) -> None:
    """Turn the kernel's table ``have`` into ``want``.

    The result is recorded (see nftcache) only if ``have`` is the very table this process
    read back or wrote, at the generation the write started from, and the generation then
    moved by exactly podnet's own commits: a commit of anyone else before or during the
    write, and the next observe lists.
    """
    key = (ns, want.family, want.name)
    known = _known.pop(key, None)
    sync = plan_sync(want, have)
    commits = int(bool(sync.before or sync.after)) + int(sync.batch is not None)
    if commits == 0:  # nothing to write: ``have`` is ``want``
        if known is not None:
            _known[key] = known
        return
    with nftnl.Netfilter(ns) as nf:
        start = nf.generation()
        if known is None and have is None and start is not None and start[1] == FRESH_GENERATION:
            known = (start, None)  # nothing was ever committed here: there is no table
        nftcache.invalidate(ns, want.family, want.name)  # until the write is known to be complete
        if sync.before or sync.after:
            _run_script(ns, want, [*sync.before, *sync.after])
        if sync.batch is not None:
            try:
                nf.send(sync.batch)
            except KernelError as exc:
                raise KernelError(f"{ns}: table {want.family} {want.name}: {exc}") from exc
        end = nf.generation()
    if known is None or known[1] is not have or start != known[0] or end != _advance(known[0], commits):
        return
    if have is not None and any(
        (old := have.sets.get(n)) is not None and (old.kind, old.dynamic) != (s.kind, s.dynamic)
        for n, s in want.sets.items()
    ):
        return  # a set changing kind keeps its old declaration in the kernel: list it next time
    # The record on disk is ``have`` as of ``start`` (or there is no table): only what changed
    # is written, over it.
    parts = None if have is None else (sync.sets_changed, sync.chains_changed)
    if nftcache.remember(ns, want, end, parts, since=start):
        _known[key] = (end, want)


def _advance(generation: tuple[int, int], commits: int) -> tuple[int, int]:
    """The generation after ``commits`` more commits (the kernel skips 0 when it wraps)."""
    cookie, number = generation
    for _ in range(commits):
        number = (number + 1) % 2**32 or 1
    return cookie, number


def _run_script(ns: str, want: NftTable, lines: list[str]) -> None:
    if not lines:
        return
    proc = _nft(ns, ["-f", "-"], "\n".join(lines) + "\n")
    if proc.returncode != 0:
        raise KernelError(f"{ns}: nft refused the update of table {want.family} {want.name}: {proc.stderr.strip()}")


def delete(ns: str, table: NftTable) -> None:
    nftcache.forget(ns, table.family, table.name)
    proc = _nft(ns, ["delete", "table", table.family, table.name])
    if proc.returncode != 0 and "No such file" not in proc.stderr:
        raise KernelError(f"{ns}: nft could not delete table {table.family} {table.name}: {proc.stderr.strip()}")


def observe(ns: str, family: str = "ip", name: str = "podnet") -> NftTable | None:
    """The table as the kernel holds it: what podnet last wrote if nothing was committed in
    the namespace since (see nftcache), otherwise read back with ``nft -j list``."""
    generation = nftnl.generation(ns)
    remembered = nftcache.recall(ns, family, name, generation)
    if remembered is None:
        return read(ns, family, name)
    assert generation is not None
    _known[(ns, family, name)] = (generation, remembered)
    return remembered


def read(ns: str, family: str = "ip", name: str = "podnet") -> NftTable | None:
    """The table read back from the kernel with ``nft -j list`` (None: there is none)."""
    # The generation before listing: a commit during the listing makes the record stale (the
    # next observe sees another generation and lists again), never wrong.
    generation = nftnl.generation(ns)
    proc = _nft(ns, ["-j", "list", "table", family, name])
    if proc.returncode != 0:
        if "No such file or directory" not in proc.stderr:
            raise KernelError(f"{ns}: nft could not list table {family} {name}: {proc.stderr.strip()}")
        table = None
    else:
        table = parse(json.loads(proc.stdout), family, name)
    if generation is not None:
        if table is None:
            nftcache.forget(ns, family, name)
            _known[(ns, family, name)] = (generation, None)
        elif nftcache.remember(ns, table, generation):
            _known[(ns, family, name)] = (generation, table)
    return table


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

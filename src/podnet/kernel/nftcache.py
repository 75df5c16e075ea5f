"""What podnet last wrote to a namespace's table, valid while nothing else was committed there.

Reading a table back with ``nft -j list`` costs about two seconds at 10,000 Services, on every
``podnet up``, though the table is almost always exactly what podnet wrote. The kernel numbers
its nf_tables transactions per namespace (the generation id), and a namespace has a cookie no
later namespace of the same name shares. So after writing a table podnet records (cookie,
generation, table); observing finds the same pair only if no transaction at all (by podnet,
nft, iptables-nft or anyone) was committed there since, and then the record is the table.
Anything else (another generation, another namespace, no record) falls back to listing.

A record is a directory: a ``base`` file with the whole table, files of their own for
chains and sets changed since, and a ``head`` naming the generation and the file of each
part, replaced last. A change writes only what it changed (one endpoint map for a moved
endpoint), after setting the head aside, so a crash in between leaves no head and the next
observe lists. Records live under /run (gone at reboot, with the
namespaces); ``down`` and podnet deleting a namespace remove them (a namespace deleted by
hand leaves its record until ``down``: no later namespace can match it, cookies are never
reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from podnet.state import NftChain, NftSet, NftTable

CACHE_DIR = Path(os.environ.get("PODNET_NFT_CACHE", "/run/podnet/nft"))
HEAD, STALE, BASE = "head", "head.stale", "base"


def _dir(ns: str, family: str, name: str) -> Path:
    return CACHE_DIR / f"{ns}@{family}@{name}"  # "@" is in no name podnet gives a namespace


def _own_file(name: str) -> str:
    return "set-" + hashlib.sha1(name.encode()).hexdigest()[:20]  # set names hold "/"


def _chains_section(table: NftTable) -> str:
    lines = [f"{n}\t{json.dumps(c.hook) if c.hook else '-'}\t{','.join(c.ids)}" for n, c in table.chains.items()]
    return "chains\n" + "\n".join(lines)


def _set_section(s: NftSet) -> str:
    return f"set\t{s.kind}\t{int(s.dynamic)}\t{s.name}\n" + ("" if s.dynamic else "\n".join(s.elements))


def remember(
    ns: str,
    table: NftTable,
    generation: tuple[int, int],
    parts: tuple[Iterable[str], bool] | None = None,
    since: tuple[int, int] | None = None,
) -> bool:
    """Record ``table`` as the kernel's at ``generation``. ``parts``: (sets changed, whether
    chains changed) since the record set aside at generation ``since``, which is then
    completed rather than rewritten (if the record set aside is not that one, it is
    rewritten). False (and no record) when it cannot be written: a record is a shortcut."""
    where = _dir(ns, table.family, table.name)
    try:
        with _locked(exclusive=True):
            previous = _head(where / STALE)
            if parts is None or previous is None or (previous.get("cookie"), previous.get("generation")) != since:
                _write_base(where, table, generation)
            else:
                _write_parts(where, table, generation, previous, parts)
    except (OSError, KeyError, TypeError, AttributeError, ValueError):
        forget(ns, table.family, table.name)
        return False
    return True


@contextlib.contextmanager
def _locked(exclusive: bool) -> Iterator[None]:
    """Writers of records exclude each other and readers: ``podnet trace`` and ``up --dry-run``
    observe (and record) without the cluster's lock, while an ``up`` writes."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(CACHE_DIR / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def _head(path: Path) -> dict | None:
    try:
        head = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return head if isinstance(head, dict) else None


def _write_base(where: Path, table: NftTable, generation: tuple[int, int]) -> None:
    """Everything in one file (one open: a file each cost more than their contents)."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, mode=0o700)
    sections = [_chains_section(table), *(_set_section(s) for s in table.sets.values())]
    (where / BASE).write_text("\n\0".join(sections))
    _write_head(where, generation, BASE, dict.fromkeys(table.sets, BASE))


def _write_parts(
    where: Path, table: NftTable, generation: tuple[int, int], previous: dict, parts: tuple[Iterable[str], bool]
) -> None:
    """Only what changed, each in a file of its own; the rest stays where the head says."""
    changed_sets, chains_changed = parts
    files: dict[str, str] = {n: f for n, f in previous["sets"].items() if n in table.sets}
    for name, file in previous["sets"].items():
        if name not in table.sets and file != BASE:
            (where / file).unlink(missing_ok=True)
    chains_file = previous["chains"]
    if chains_changed:
        chains_file = "chains"
        (where / chains_file).write_text(_chains_section(table))
    for name in changed_sets:
        if name in table.sets:
            files[name] = _own_file(name)
            (where / files[name]).write_text(_set_section(table.sets[name]))
    _write_head(where, generation, chains_file, files)
    (where / STALE).unlink(missing_ok=True)


def _write_head(where: Path, generation: tuple[int, int], chains: str, sets: dict[str, str]) -> None:
    head = {"cookie": generation[0], "generation": generation[1], "chains": chains, "sets": sets}
    tmp = where / (HEAD + ".tmp")
    tmp.write_text(json.dumps(head))
    os.replace(tmp, where / HEAD)


def recall(ns: str, family: str, name: str, generation: tuple[int, int] | None) -> NftTable | None:
    """The recorded table, if it was recorded at exactly this (cookie, generation)."""
    if generation is None:
        return None
    where = _dir(ns, family, name)
    try:
        with _locked(exclusive=False):
            head = _head(where / HEAD)
            if head is None or (head.get("cookie"), head.get("generation")) != generation:
                return None
            files: dict[str, list[str]] = {}  # file -> its sections
            for file in {head["chains"], *head["sets"].values()}:
                files[file] = (where / file).read_text().split("\n\0")
        table = NftTable(family, name)
        sets: dict[str, NftSet] = {}
        for file, sections in files.items():
            for section in sections:
                first, _, rest = section.partition("\n")
                if first == "chains" and file == head["chains"]:
                    table.chains = _parse_chains(rest)
                elif first.startswith("set\t"):
                    _, kind, dynamic, set_name = first.split("\t")
                    if head["sets"].get(set_name) == file:
                        sets[set_name] = NftSet(set_name, "", kind, frozenset(rest.splitlines()), dynamic == "1")
        if set(sets) != set(head["sets"]):
            return None
        table.sets = sets
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no record, or not one of ours: list the table
    return table


def _parse_chains(text: str) -> dict[str, NftChain]:
    chains = {}
    for line in text.splitlines():
        chain, hook, ids = line.split("\t")
        hook_value = None if hook == "-" else tuple(json.loads(hook))
        chains[chain] = NftChain(chain, hook_value, (), tuple(ids.split(",")) if ids else ())
    return chains


def invalidate(ns: str, family: str, name: str) -> None:
    """The record stops standing for the kernel; its files stay, to be completed."""
    where = _dir(ns, family, name)
    try:
        with _locked(exclusive=True):
            os.replace(where / HEAD, where / STALE)
    except OSError:
        if (where / HEAD).exists():
            shutil.rmtree(where, ignore_errors=True)  # it must not stand: no record at all


def forget(ns: str, family: str, name: str) -> None:
    with contextlib.suppress(OSError), _locked(exclusive=True):
        shutil.rmtree(_dir(ns, family, name), ignore_errors=True)


def forget_namespace(ns: str) -> None:
    forget_prefixed(f"{ns}@")


def forget_prefixed(prefix: str) -> None:
    with contextlib.suppress(OSError), _locked(exclusive=True):
        for path in _entries(prefix):
            shutil.rmtree(path, ignore_errors=True)


def list_prefixed(prefix: str) -> list[str]:
    """The records of namespaces whose names start with ``prefix``."""
    return sorted(p.name for p in _entries(prefix))


def _entries(prefix: str) -> list[Path]:
    try:
        return [CACHE_DIR / e for e in os.listdir(CACHE_DIR) if e.startswith(prefix)]
    except FileNotFoundError:
        return []

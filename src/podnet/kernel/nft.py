"""podnet's nftables tables: loaded as one ``nft -f`` transaction per namespace.

The transaction declares the table, deletes it and declares it again with its full
contents, so the kernel swaps the old table for the new one atomically: no packet ever sees
half a ruleset. Reading back takes the table's comment (which carries the digest of what
podnet wrote) and counts its rules.
"""

from __future__ import annotations

import re
import subprocess

from podnet.errors import KernelError
from podnet.kernel import netns
from podnet.state import NftTable


def _nft(ns: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "nft", *args], input=stdin, capture_output=True, text=True
    )


def load(ns: str, table: NftTable) -> None:
    assert table.text is not None, "only a planned table can be loaded"
    script = f"table {table.family} {table.name}\ndelete table {table.family} {table.name}\n{table.text}"
    proc = _nft(ns, ["-f", "-"], script)
    if proc.returncode != 0:
        raise KernelError(f"{ns}: nft refused table {table.family} {table.name}: {proc.stderr.strip()}")


def delete(ns: str, table: NftTable) -> None:
    proc = _nft(ns, ["delete", "table", table.family, table.name])
    if proc.returncode != 0 and "No such file" not in proc.stderr:
        raise KernelError(f"{ns}: nft could not delete table {table.family} {table.name}: {proc.stderr.strip()}")


def observe(ns: str, family: str = "ip", name: str = "podnet") -> NftTable | None:
    # nft 1.0.6's JSON leaves out table comments, so read the text listing with handles:
    # every rule line ends in "# handle N", as do the table and chain headers.
    proc = _nft(ns, ["-a", "list", "table", family, name])
    if proc.returncode != 0:
        return None
    found = _COMMENT.search(proc.stdout)
    rules = sum(
        1
        for line in proc.stdout.splitlines()
        if _HANDLE.search(line) and not line.lstrip().startswith(("table ", "chain "))
    )
    return NftTable(family, name, found.group(1) if found else "", rules)


_COMMENT = re.compile(r'^\s*comment "podnet ([0-9a-f]+)"', re.MULTILINE)
_HANDLE = re.compile(r"# handle \d+$")


def list_ruleset(ns: str) -> str:
    return _nft(ns, ["list", "ruleset"]).stdout

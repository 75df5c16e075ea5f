"""The agent's address allocations: one SQLite file per node, never one address for two attachments.

An attachment is the spec's primary key, ``(network, container ID, interface name)``; each
holds one address of the node's pod block. The database enforces both keys (a second ADD for
the same attachment gets the same address back, and an address can be held by one attachment
only), and every change is committed before the agent answers, so a restarted agent knows
every live address. Allocation goes round-robin from the last address handed out, as the
reference ``host-local`` plugin does, so a released address is not reused at once.

Addresses can also be *held*: a DEL releases the attachment at once, but its address stays
out of the pool until the agent has deleted the old interface, so that two interfaces never
answer for one address.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    network TEXT NOT NULL,
    container_id TEXT NOT NULL,
    ifname TEXT NOT NULL,
    ip TEXT NOT NULL UNIQUE,
    netns TEXT NOT NULL,
    host_if TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (network, container_id, ifname)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Exhausted(Exception):
    """No address of the pool is free."""


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str
    ip: str
    netns: str
    host_if: str
    created: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.network, self.container_id, self.ifname)


class Ipam:
    """Allocations of one node's pool; safe to use from many threads of one process."""

    def __init__(self, path: Path, pool: Iterable[str]) -> None:
        self.path = path
        self.pool = list(pool)
        self._order = {ip: i for i, ip in enumerate(self.pool)}
        self._lock = threading.Lock()
        self._held: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Durable against a crash of the agent (the WAL is written before commit returns);
        # the fsync waits for checkpoints, which keeps ADD at a fraction of a millisecond.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._records: dict[tuple[str, str, str], Attachment] = {}
        for row in self._db.execute("SELECT * FROM attachments"):
            att = Attachment(*row)
            self._records[att.key] = att
        self._by_ip = {a.ip: a for a in self._records.values()}
        last = self._db.execute("SELECT value FROM meta WHERE key = 'last_ip'").fetchone()
        self._last = last[0] if last else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reading -------------------------------------------------------------------------

    def get(self, key: tuple[str, str, str]) -> Attachment | None:
        with self._lock:
            return self._records.get(key)

    def all(self) -> list[Attachment]:
        with self._lock:
            return sorted(self._records.values(), key=lambda a: self._order.get(a.ip, len(self.pool)))

    def free(self) -> int:
        with self._lock:
            return sum(1 for ip in self.pool if ip not in self._by_ip and ip not in self._held)

    # --- changing ------------------------------------------------------------------------

    def allocate(
        self, network: str, container_id: str, ifname: str, netns: str, host_if: str
    ) -> tuple[Attachment, bool]:
        """The attachment's address: its existing one, else the next free. (attachment, new?)."""
        key = (network, container_id, ifname)
        with self._lock:
            have = self._records.get(key)
            if have is not None:
                if have.netns != netns:
                    have = Attachment(*key, have.ip, netns, host_if, have.created)
                    self._db.execute(
                        "UPDATE attachments SET netns = ?, host_if = ? WHERE network = ? AND container_id = ? "
                        "AND ifname = ?",
                        (netns, host_if, *key),
                    )
                    self._records[key] = self._by_ip[have.ip] = have
                return have, False
            ip = self._next_free()
            att = Attachment(network, container_id, ifname, ip, netns, host_if, time.time())
            with self._db:  # one transaction: the record and the round-robin position
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (att.network, att.container_id, att.ifname, att.ip, att.netns, att.host_if, att.created),
                )
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_ip', ?)", (ip,))
            self._records[key] = att
            self._by_ip[ip] = att
            self._last = ip
            return att, True

    def _next_free(self) -> str:
        if not self.pool:
            raise Exhausted("the pool is empty")
        start = self._order[self._last] + 1 if self._last in self._order else 0
        n = len(self.pool)
        for i in range(n):
            ip = self.pool[(start + i) % n]
            if ip not in self._by_ip and ip not in self._held:
                return ip
        raise Exhausted(
            f"all {n} addresses are in use" + (f" ({len(self._held)} still being released)" if self._held else "")
        )

    def release(self, key: tuple[str, str, str], hold: bool = False) -> Attachment | None:
        """Forget an attachment; with ``hold`` its address stays out of the pool until :meth:`unhold`."""
        with self._lock:
            att = self._records.pop(key, None)
            if att is None:
                return None
            self._db.execute("DELETE FROM attachments WHERE network = ? AND container_id = ? AND ifname = ?", key)
            self._by_ip.pop(att.ip, None)
            if hold:
                self._held.add(att.ip)
            return att

    def unhold(self, ips: Iterable[str]) -> None:
        with self._lock:
            self._held.difference_update(ips)


def pool_of(block: str, gateway: str) -> list[str]:
    """Every host address of the node's block but the gateway's."""
    return [str(h) for h in ipaddress.IPv4Network(block).hosts() if str(h) != gateway]

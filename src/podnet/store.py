"""Per-cluster persistent state: allocations, the applied spec, and the cluster lock.

SQLite in WAL mode, one file per cluster under the state directory
(``/var/lib/podnet`` unless ``PODNET_STATE_DIR`` says otherwise). The lock is a separate
file beside the cluster's directory, so ``down`` can remove the directory while holding it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from podnet.plan.ipam import Allocations


def state_root() -> Path:
    return Path(os.environ.get("PODNET_STATE_DIR", "/var/lib/podnet"))


def cluster_dir(cluster: str) -> Path:
    return state_root() / cluster


def known_clusters() -> list[str]:
    root = state_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.db").exists())


@contextmanager
def cluster_lock(cluster: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock on one cluster; a second command says it waits, then waits its turn."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{cluster}.lock"
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None and not told:
                on_wait()
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us when the holder is done
        # `down` removes the lock file while holding it: a lock on a file no longer at the
        # path protects nothing, so take the lock again on the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


class Store:
    def __init__(self, cluster: str, create: bool = True) -> None:
        self.dir = cluster_dir(cluster)
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.dir / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS alloc (kind TEXT, owner TEXT, value TEXT, PRIMARY KEY (kind, owner))"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    def allocations(self) -> Allocations:
        out: Allocations = {}
        for kind, owner, value in self.db.execute("SELECT kind, owner, value FROM alloc"):
            out.setdefault(kind, {})[owner] = value
        return out

    def save(self, allocations: Allocations, spec_text: str, spec_file: str) -> None:
        """Replace allocations and the applied spec in one transaction."""
        with self._tx():
            self.db.execute("DELETE FROM alloc")
            self.db.executemany(
                "INSERT INTO alloc VALUES (?, ?, ?)",
                [(k, o, v) for k, owners in allocations.items() for o, v in owners.items()],
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec', ?)", (spec_text,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec_file', ?)", (spec_file,))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

"""Per-cluster persistent state, and the machine-wide claim on a cluster's name.

State: SQLite in WAL mode, one file per cluster under the state directory (``/var/lib/podnet``
unless ``PODNET_STATE_DIR`` says otherwise), holding the allocations and the applied spec.
Commands that only read (``status``, ``exec``, ``trace``) open it read-only, so a user who may
read the file but not write its directory can still use them. Every failure of SQLite or of
the file system (damaged, unreadable, read-only, a full disk) becomes one ``StateError`` that
names the file; a stored value of the wrong shape is one too, before any plan is made with it.

Ownership: namespaces are machine-wide, state directories are not. So the lock that
serialises the commands on a cluster, and the record of which state directory owns its name,
live under ``/run/podnet/clusters`` keyed by the cluster's name: a second state directory
cannot bring up (or ``down``) a cluster another one holds. A record whose state directory no
longer holds the cluster's state protects nothing, and the name may be taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from podnet.errors import OwnershipError, StateError
from podnet.plan.ipam import Allocations

STATE_FILE = "state.db"
RUN_DIR = Path("/run/podnet/clusters")


def state_root() -> Path:
    return Path(os.environ.get("PODNET_STATE_DIR", "/var/lib/podnet"))


def cluster_dir(cluster: str) -> Path:
    return state_root() / cluster


def state_file(cluster: str, root: Path | None = None) -> Path:
    """The cluster's state file in a state directory (this one unless given)."""
    return (root or state_root()) / cluster / STATE_FILE


def has_state(cluster: str, root: Path | None = None) -> bool:
    """Whether a state directory (this one unless given) holds the cluster's state.

    A state directory this user may not look into cannot say: that is a StateError.
    """
    path = state_file(cluster, root)
    with _translated(cluster, path, "read"):
        return path.exists()


def known_clusters() -> list[str]:
    """The clusters this state directory holds state for (also those it may not look into)."""
    root = state_root()
    try:
        entries = [p for p in root.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot list the clusters in {root}: {_reason(exc)}") from exc

    def holds(p: Path) -> bool:
        try:
            return (p / STATE_FILE).exists()
        except PermissionError:
            return True  # a cluster's directory this user may not read: `status -c` says so

    return sorted(p.name for p in entries if holds(p))


# -- the state file ---------------------------------------------------------------------------------

DAMAGED = "it is damaged"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alloc (kind TEXT, owner TEXT, value TEXT, PRIMARY KEY (kind, owner))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
)


def _reason(exc: BaseException, path: Path | None = None) -> str:
    """What went wrong with a state file, in a user's words."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError):
        if "not a database" in text or "malformed" in text or "no such" in text:
            return f"{DAMAGED} ({text})"
        if "readonly" in text:
            return "it is read-only"
        if "disk is full" in text or (path is not None and _disk_full(path)):
            return "the disk is full"
        if path is not None and path.exists() and not path.is_file():
            return "it is not a file"
        if "unable to open" in text:
            return "it cannot be opened"
        return text
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError):
        return exc.strerror or text
    return text


def _disk_full(path: Path) -> bool:
    """SQLite says "disk I/O error" when it cannot grow a WAL's shared memory: ask the file system."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def _remedy(cluster: str, reason: str) -> str:
    if reason.startswith(DAMAGED):
        return (
            f"; move it away and run 'podnet up FILE' (a running cluster's allocations are recovered from "
            f"the kernel), or remove the cluster with 'podnet down -c {cluster}'"
        )
    if reason == "permission denied":
        return " (run podnet as root, or as a user who may read the state directory)"
    return ""


@contextmanager
def _translated(cluster: str, path: Path, doing: str) -> Iterator[None]:
    """SQLite's and the file system's errors on a state file, as one StateError naming it."""
    try:
        yield
    except (sqlite3.Error, OSError, _BadValue) as exc:
        reason = _reason(exc, path)
        raise StateError(
            f"cannot {doing} the state of cluster {cluster!r} ({path}): {reason}{_remedy(cluster, reason)}"
        ) from exc


class _BadValue(ValueError):
    def __str__(self) -> str:
        return f"{DAMAGED} ({self.args[0]})"


def _address(value: str) -> None:
    ipaddress.IPv4Address(value)


def _network(value: str) -> None:
    ipaddress.IPv4Network(value)


def _number(value: str) -> None:
    if not value.isdigit():
        raise ValueError(value)


# What the planner stores under each kind of allocation (plan/cluster.py, services.py, bgp.py):
# checked when read, so a damaged value is reported as such instead of failing inside a plan.
VALUE_SHAPES: dict[str, tuple[str, Callable[[str], None]]] = {
    "underlay_ip": ("an IPv4 address", _address),
    "pod_ip": ("an IPv4 address", _address),
    "service_ip": ("an IPv4 address", _address),
    "node_cidr": ("an IPv4 network", _network),
    "node_port": ("a port number", _number),
    "service_slot": ("a number", _number),
    "asn": ("an AS number", _number),
}


def _checked(kind: str, owner: str, value: object) -> str:
    shape = VALUE_SHAPES.get(kind)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        if shape is not None:
            shape[1](value)
    except ValueError:
        expected = shape[0] if shape else "text"
        raise _BadValue(f"the stored {kind} of {owner} is {value!r}, not {expected}") from None
    return value


class Store:
    """One cluster's state file: ``Store.writer`` opens it to write (creating it), ``Store.reader``
    opens an existing one read-only."""

    def __init__(self, cluster: str, path: Path, db: sqlite3.Connection, tables: set[str]) -> None:
        self.cluster = cluster
        self.path = path
        self.db = db
        self.tables = tables

    @classmethod
    def writer(cls, cluster: str) -> Store:
        path = state_file(cluster)
        with _translated(cluster, path, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                for statement in SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
        return cls(cluster, path, db, {"alloc", "meta"})

    @classmethod
    def reader(cls, cluster: str, root: Path | None = None) -> Store | None:
        """The state in a state directory (this one unless given), read-only; None when there is none."""
        if not has_state(cluster, root):
            return None
        path = state_file(cluster, root)
        with _translated(cluster, path, "read"):
            db, tables = _open_read_only(path)
        return cls(cluster, path, db, tables)

    def allocations(self) -> Allocations:
        out: Allocations = {}
        if "alloc" not in self.tables:
            return out
        with _translated(self.cluster, self.path, "read"):
            for kind, owner, value in self.db.execute("SELECT kind, owner, value FROM alloc"):
                out.setdefault(kind, {})[owner] = _checked(kind, owner, value)
        return out

    def save(self, allocations: Allocations, spec_text: str, spec_file: str) -> None:
        """Replace allocations and the applied spec in one transaction."""
        with _translated(self.cluster, self.path, "write"), self._tx():
            self.db.execute("DELETE FROM alloc")
            self.db.executemany(
                "INSERT INTO alloc VALUES (?, ?, ?)",
                [(k, o, v) for k, owners in allocations.items() for o, v in owners.items()],
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec', ?)", (spec_text,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec_file', ?)", (spec_file,))

    def get_meta(self, key: str) -> str | None:
        if "meta" not in self.tables:
            return None
        with _translated(self.cluster, self.path, "read"):
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT has rolled back already
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def _open_read_only(path: Path) -> tuple[sqlite3.Connection, set[str]]:
    """Open a state file without writing anything: read-only, and when even that would need
    to write (a WAL file's shared memory, in a directory this user may not write), as an
    immutable snapshot. The first error is the one reported."""
    first: sqlite3.Error | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        db = sqlite3.connect(f"file:{quote(str(path))}?{flags}", uri=True, isolation_level=None)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError as exc:
            db.close()
            first = first or exc
            continue
        except BaseException:
            db.close()
            raise
        return db, tables
    assert first is not None
    raise first


# -- the machine-wide lock and owner record ---------------------------------------------------------


def _run_dir() -> Path:
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
    return RUN_DIR


def lock_file(cluster: str) -> Path:
    return RUN_DIR / f"{cluster}.lock"


def owner_file(cluster: str) -> Path:
    return RUN_DIR / f"{cluster}.owner"


@contextmanager
def cluster_lock(cluster: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock on one cluster name, machine-wide; a second command says it waits, then waits its turn."""
    path = _run_dir() / f"{cluster}.lock"
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


def owner(cluster: str) -> Path | None:
    """The state directory recorded as the owner of a cluster name on this machine, if any."""
    try:
        return Path(json.loads(owner_file(cluster).read_text())["state_dir"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a record no one can read protects nothing


def same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def owns(cluster: str) -> bool:
    """Whether this state directory is the recorded owner of the cluster name."""
    recorded = owner(cluster)
    return recorded is not None and same_dir(recorded, state_root())


def claimed() -> list[str]:
    """Every cluster name an owner record claims on this machine."""
    try:
        return sorted(p.name.removesuffix(".owner") for p in RUN_DIR.glob("*.owner"))
    except OSError:
        return []


def foreign_owner(cluster: str) -> Path | None:
    """Another state directory that owns the cluster and still holds its state; None when this
    state directory may manage it (it owns it, no one does, or the owner's state is gone)."""
    other = owner(cluster)
    if other is None or same_dir(other, state_root()):
        return None
    return other if (other / cluster / STATE_FILE).exists() else None


def check_owner(cluster: str) -> None:
    """Refuse a cluster whose name another state directory owns."""
    other = foreign_owner(cluster)
    if other is not None:
        raise OwnershipError(
            f"cluster {cluster!r} belongs to the state directory {other} (namespaces are shared by every "
            f"state directory of this machine): run podnet with PODNET_STATE_DIR={other}, or choose another name"
        )


def claim(cluster: str) -> None:
    """Record this state directory as the owner of the name (under ``cluster_lock``, after ``check_owner``)."""
    if owns(cluster):
        return
    path = _run_dir() / f"{cluster}.owner"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"state_dir": os.path.realpath(state_root())}) + "\n")
    tmp.chmod(0o644)
    tmp.replace(path)


def disown(cluster: str) -> None:
    """Drop the owner record and the lock file of a cluster that is gone (under ``cluster_lock``)."""
    owner_file(cluster).unlink(missing_ok=True)
    # Removed while held: a command waiting on it notices and locks the new file instead.
    lock_file(cluster).unlink(missing_ok=True)

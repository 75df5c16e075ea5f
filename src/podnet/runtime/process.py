"""Start, reload, observe and stop the daemons podnet runs for a cluster (netexec, DNS).

A daemon is identified by a pidfile *and* its command line: a pid is only ours if
``/proc/PID/cmdline`` still names the same daemon and cluster, so a recycled pid is never
signalled. With the pidfile lost, ``find`` scans /proc for the command line, which is how
``down`` cleans up after a crash or a deleted state directory.

Every daemon follows one protocol: it reads ``<name>.json`` (which carries a ``digest`` and a
``nonce``), opens its sockets inside namespaces, and publishes ``<name>.ready.json`` with the
digest it serves, the nonce of the file it read, and the namespace inode of every socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from podnet.errors import PodnetError
from podnet.state import Process

START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Daemon:
    name: str  # also the key in State.processes
    arg: str  # the hidden CLI command that runs it

    @property
    def config(self) -> str:
        return f"{self.name}.json"

    @property
    def ready(self) -> str:
        return f"{self.name}.ready.json"


NETEXEC = Daemon("netexec", "netexec-daemon")
DNS = Daemon("dns", "dns-daemon")
DAEMONS = {d.name: d for d in (NETEXEC, DNS)}


def cmdline(pid: int) -> list[str]:
    """A process's argv from /proc (empty when it is gone): how podnet recognises its own."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _is_ours(pid: int, cluster: str, daemon: Daemon | None = None) -> bool:
    argv = cmdline(pid)
    if "--cluster" not in argv:
        return False
    i = argv.index("--cluster")
    args = {d.arg for d in DAEMONS.values()} if daemon is None else {daemon.arg}
    return bool(args & set(argv)) and argv[i + 1 : i + 2] == [cluster]


def find(cluster: str, daemon: Daemon | None = None) -> list[int]:
    """Every running daemon of this cluster (of one kind, or all), found by command line."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _is_ours(int(e), cluster, daemon)]


def _pidfile(state_dir: Path, daemon: Daemon) -> Path:
    return state_dir / f"{daemon.name}.pid"


def running_pid(state_dir: Path, cluster: str, daemon: Daemon = NETEXEC) -> int | None:
    try:
        pid = int(_pidfile(state_dir, daemon).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, cluster, daemon) else None


def read_ready(state_dir: Path, daemon: Daemon = NETEXEC) -> dict | None:
    try:
        return json.loads((state_dir / daemon.ready).read_text())
    except (OSError, ValueError):
        return None


def observe(state_dir: Path, cluster: str) -> dict[str, Process]:
    """The observed daemons, each with the digest of the configuration it serves.

    A socket opened in a namespace that has since been recreated serves nobody, so the
    digest is reported as stale when any namespace's inode changed under the daemon.
    """
    found = {}
    for daemon in DAEMONS.values():
        pid = running_pid(state_dir, cluster, daemon)
        if pid is None:
            continue
        ready = read_ready(state_dir, daemon) or {}
        digest = ready.get("digest") or "starting"
        for item in ready.get("listening", []):
            try:
                inode = os.stat(f"/run/netns/{item['netns']}").st_ino
            except OSError:
                inode = None
            if inode != item["inode"]:
                digest = "stale"
                break
        found[daemon.name] = Process(daemon.name, ("podnet", daemon.arg, "--cluster", cluster), digest)
    return found


def write_config(state_dir: Path, daemon: Daemon, config: dict, digest: str) -> str:
    """Write a daemon's configuration; returns the nonce its readiness will echo."""
    nonce = uuid.uuid4().hex
    tmp = state_dir / (daemon.config + ".tmp")
    tmp.write_text(json.dumps({**config, "digest": digest, "nonce": nonce}))
    tmp.replace(state_dir / daemon.config)
    return nonce


def start(state_dir: Path, cluster: str, daemon: Daemon, nonce: str) -> None:
    for pid in find(cluster, daemon):  # an orphan from a crash before its pidfile was written
        _terminate(pid, cluster, daemon)
    log = open(state_dir / f"{daemon.name}.log", "ab")  # noqa: SIM115 - handed to the child
    argv = [sys.executable, "-m", "podnet", daemon.arg, "--cluster", cluster, "--state-dir", str(state_dir)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
    )
    log.close()
    _pidfile(state_dir, daemon).write_text(f"{proc.pid}\n")
    _wait_ready(state_dir, daemon, proc.pid, nonce, lambda: proc.poll() is not None)


def reload(state_dir: Path, cluster: str, daemon: Daemon, nonce: str) -> None:
    pid = running_pid(state_dir, cluster, daemon)
    if pid is None:
        start(state_dir, cluster, daemon, nonce)
        return
    os.kill(pid, signal.SIGHUP)
    _wait_ready(state_dir, daemon, pid, nonce, lambda: not _is_ours(pid, cluster, daemon))


def _wait_ready(state_dir: Path, daemon: Daemon, pid: int, nonce: str, died) -> None:
    """Wait until the daemon publishes readiness for exactly the configuration we wrote last.

    The nonce in the configuration file comes back in the readiness file only once the
    daemon has read that very file: no reliance on timestamps.
    """
    deadline = time.monotonic() + START_TIMEOUT
    log = state_dir / f"{daemon.name}.log"
    while time.monotonic() < deadline:
        ready = read_ready(state_dir, daemon)
        if ready and ready.get("pid") == pid and ready.get("nonce") == nonce:
            if ready.get("errors"):
                raise PodnetError(f"{daemon.name} could not listen: " + "; ".join(ready["errors"]))
            return
        if died():
            raise PodnetError(f"{daemon.name} exited during start; see {log}")
        time.sleep(0.01)  # the daemon publishes readiness by rewriting a file; poll it briefly
    raise PodnetError(f"{daemon.name} did not become ready in {START_TIMEOUT:.0f}s; see {log}")


def stop(state_dir: Path | None, cluster: str, daemon: Daemon | None = None) -> int:
    """Stop the cluster's daemons (one kind, or all); returns how many were stopped."""
    kinds = [daemon] if daemon else list(DAEMONS.values())
    stopped = 0
    for d in kinds:
        pids = set(find(cluster, d))
        if state_dir is not None:
            pid = running_pid(state_dir, cluster, d)
            if pid is not None:
                pids.add(pid)
        for pid in pids:
            _terminate(pid, cluster, d)
        stopped += len(pids)
        if state_dir is not None:
            for name in (f"{d.name}.pid", d.ready):
                (state_dir / name).unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, cluster: str, daemon: Daemon) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _is_ours(pid, cluster, daemon) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.01)
    if _is_ours(pid, cluster, daemon):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _is_ours(pid, cluster, daemon):
            _reap(pid)
            time.sleep(0.01)


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon is our own child (started by this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

"""Start, reload, observe and stop the processes podnet runs for a cluster.

A process is identified by a pidfile *and* its command line: a pid is only ours if
``/proc/PID/cmdline`` still names the same daemon and cluster, so a recycled pid is never
signalled. With the pidfile lost, ``find`` scans /proc for the command line, which is how
``down`` cleans up after a crash or a deleted state directory.
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
from pathlib import Path

from podnet.errors import PodnetError
from podnet.runtime.netexec import CONFIG, READY
from podnet.state import Process

DAEMON_ARG = "netexec-daemon"
START_TIMEOUT = 60.0


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _is_ours(pid: int, cluster: str) -> bool:
    argv = _cmdline(pid)
    return (
        DAEMON_ARG in argv
        and "--cluster" in argv
        and argv[argv.index("--cluster") + 1 : argv.index("--cluster") + 2] == [cluster]
    )


def find(cluster: str) -> list[int]:
    """Every running netexec daemon of this cluster, found by command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_ours(int(entry), cluster):
            pids.append(int(entry))
    return pids


def _pidfile(state_dir: Path) -> Path:
    return state_dir / "netexec.pid"


def running_pid(state_dir: Path, cluster: str) -> int | None:
    try:
        pid = int(_pidfile(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, cluster) else None


def read_ready(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / READY).read_text())
    except (OSError, ValueError):
        return None


def observe(state_dir: Path, cluster: str) -> dict[str, Process]:
    """The observed process set: the daemon, with the digest of the config it serves.

    A socket opened in a namespace that has since been recreated serves nobody, so the
    digest is reported as stale when any namespace's inode changed under the daemon.
    """
    pid = running_pid(state_dir, cluster)
    if pid is None:
        return {}
    ready = read_ready(state_dir) or {}
    digest = ready.get("digest") or "starting"
    for item in ready.get("listening", []):
        try:
            inode = os.stat(f"/run/netns/{item['netns']}").st_ino
        except OSError:
            inode = None
        if inode != item["inode"]:
            digest = "stale"
            break
    return {"netexec": Process("netexec", ("podnet", DAEMON_ARG, "--cluster", cluster), digest)}


def write_config(state_dir: Path, config: dict, digest: str) -> str:
    """Write the daemon's configuration; returns the nonce its readiness will echo."""
    nonce = uuid.uuid4().hex
    tmp = state_dir / (CONFIG + ".tmp")
    tmp.write_text(json.dumps({**config, "digest": digest, "nonce": nonce}))
    tmp.replace(state_dir / CONFIG)
    return nonce


def start(state_dir: Path, cluster: str, nonce: str) -> None:
    for pid in find(cluster):  # an orphan from a crash before its pidfile was written
        _terminate(pid, cluster)
    log = open(state_dir / "netexec.log", "ab")  # noqa: SIM115 - handed to the child
    argv = [sys.executable, "-m", "podnet", DAEMON_ARG, "--cluster", cluster, "--state-dir", str(state_dir)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
    )
    log.close()
    _pidfile(state_dir).write_text(f"{proc.pid}\n")
    _wait_ready(state_dir, proc.pid, nonce, lambda: proc.poll() is not None)


def reload(state_dir: Path, cluster: str, nonce: str) -> None:
    pid = running_pid(state_dir, cluster)
    if pid is None:
        start(state_dir, cluster, nonce)
        return
    os.kill(pid, signal.SIGHUP)
    _wait_ready(state_dir, pid, nonce, lambda: not _is_ours(pid, cluster))


def _wait_ready(state_dir: Path, pid: int, nonce: str, died) -> None:
    """Wait until the daemon publishes readiness for exactly the configuration we wrote last.

    The nonce in the configuration file comes back in the readiness file only once the
    daemon has read that very file: no reliance on timestamps.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready = read_ready(state_dir)
        if ready and ready.get("pid") == pid and ready.get("nonce") == nonce:
            if ready.get("errors"):
                raise PodnetError("netexec could not listen: " + "; ".join(ready["errors"]))
            return
        if died():
            raise PodnetError(f"netexec exited during start; see {state_dir / 'netexec.log'}")
        time.sleep(0.01)  # the daemon publishes readiness by rewriting a file; poll it briefly
    raise PodnetError(f"netexec did not become ready in {START_TIMEOUT:.0f}s; see {state_dir / 'netexec.log'}")


def stop(state_dir: Path | None, cluster: str) -> int:
    """Stop every netexec daemon of the cluster; returns how many were stopped."""
    pids = set(find(cluster))
    if state_dir is not None:
        pid = running_pid(state_dir, cluster)
        if pid is not None:
            pids.add(pid)
    for pid in pids:
        _terminate(pid, cluster)
    if state_dir is not None:
        for name in ("netexec.pid", READY):
            (state_dir / name).unlink(missing_ok=True)
    return len(pids)


def _terminate(pid: int, cluster: str) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _is_ours(pid, cluster) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.01)
    if _is_ours(pid, cluster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _is_ours(pid, cluster):
            _reap(pid)
            time.sleep(0.01)


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon is our own child (started by this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

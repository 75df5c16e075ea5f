"""Run BIRD 2 in the namespaces of a cluster: start, reconfigure, observe, stop, query.

One BIRD per node or router namespace, started as ``ip netns exec NS bird -c CONF -s SOCK -P
PIDFILE`` (BIRD daemonises itself once its configuration parsed). Its files live in the
cluster's state directory under ``bird/``, each named after the namespace
(``podnet_<cluster>_<speaker>.conf`` / ``.ctl`` / ``.pid`` / ``.log`` / ``.state``).

Identity, as ``runtime.process`` does it for podnet's own daemons: a pid is one of ours only if
``/proc/PID/cmdline`` is ``bird`` with ``-c .../podnet_<cluster>_<speaker>.conf``. That name
alone finds every BIRD of a cluster, so ``down`` stops them all even with the state directory
gone. A BIRD whose namespace was deleted and recreated under it (``/proc/PID/ns/net`` is not the
pinned namespace any more) is reported stale, and reloading it restarts it.

``<netns>.state`` records the digest of the configuration BIRD accepted last (written only after
BIRD said so on its control socket): that is what ``observe`` reports, what ``reconcile``
compares with the plan, and what a ``reload`` changes with ``configure``.

The control socket speaks BIRD's line protocol: every reply line starts with a four-digit code,
``-`` when more lines follow, a space on the last; a line starting with a space continues the
previous code. ``query`` returns ``(code, text)`` pairs, so nothing here scrapes ``birdc``'s
screen output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from podnet import names
from podnet.errors import BirdError
from podnet.kernel import netns as kns
from podnet.plan import bgp
from podnet.plan.bgp import BgpPlan, process_name
from podnet.plan.bird import BirdConfig
from podnet.runtime.process import cmdline
from podnet.state import Process

BINARY = "bird"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SOCKET_MAX = 107  # sun_path, less its terminating NUL


@dataclass(frozen=True)
class Files:
    conf: Path
    pid: Path
    log: Path
    state: Path
    ctl: Path


def files(state_dir: Path, netns: str) -> Files:
    base = state_dir / "bird"
    ctl = base / f"{netns}.ctl"
    if len(str(ctl)) > SOCKET_MAX:  # a long state directory and long names: a short path elsewhere
        ctl = Path("/run/podnet") / f"bird-{hashlib.sha1(str(ctl).encode()).hexdigest()[:16]}.ctl"
    return Files(base / f"{netns}.conf", base / f"{netns}.pid", base / f"{netns}.log", base / f"{netns}.state", ctl)


# --- identity -----------------------------------------------------------------------------


def netns_of(argv: list[str], cluster: str) -> str | None:
    """The namespace a BIRD command line serves, if it is one of this cluster's."""
    if not argv or os.path.basename(argv[0]) != BINARY or "-c" not in argv:
        return None
    i = argv.index("-c")
    conf = os.path.basename(argv[i + 1]) if i + 1 < len(argv) else ""
    prefix = names.cluster_prefix(cluster)
    if not (conf.startswith(prefix) and conf.endswith(".conf")):
        return None
    ns = conf.removesuffix(".conf")
    return ns if "_" not in ns[len(prefix) :] else None


def find(cluster: str, netns: str | None = None) -> dict[int, str]:
    """pid -> namespace of every BIRD of this cluster (or of one namespace), by command line."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ns = netns_of(cmdline(int(entry)), cluster)
        if ns is not None and (netns is None or ns == netns):
            out[int(entry)] = ns
    return out


def _is_ours(pid: int, cluster: str, netns: str) -> bool:
    return netns_of(cmdline(pid), cluster) == netns


def running_pid(state_dir: Path, cluster: str, netns: str) -> int | None:
    try:
        pid = int(files(state_dir, netns).pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, cluster, netns) else None


def _netns_inode(netns: str) -> int | None:
    try:
        return os.stat(kns.path(netns)).st_ino
    except OSError:
        return None


def _process_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _in_place(pid: int, netns: str) -> bool:
    """True when the process still lives in the namespace pinned under that name."""
    want = _netns_inode(netns)
    return want is not None and _process_netns_inode(pid) == want


# --- observe --------------------------------------------------------------------------------


def speaker_of(cluster: str, netns: str) -> str:
    return netns[len(names.cluster_prefix(cluster)) :]


def process_for(cluster: str, netns: str, digest: str) -> Process:
    return Process(process_name(speaker_of(cluster, netns)), (BINARY, "--cluster", cluster, "--netns", netns), digest)


def observe(state_dir: Path, cluster: str) -> dict[str, Process]:
    """Every running BIRD of the cluster, with the digest of the configuration it accepted."""
    found = {}
    for pid, ns in find(cluster).items():
        digest = "starting"
        try:
            recorded = json.loads(files(state_dir, ns).state.read_text())
            if recorded.get("pid") == pid:
                digest = recorded.get("digest", "starting")
        except (OSError, ValueError):
            pass
        if not _in_place(pid, ns):
            digest = "stale"
        proc = process_for(cluster, ns, digest)
        found[proc.name] = proc
    return found


def netns_from_process(proc: Process) -> str:
    return proc.argv[proc.argv.index("--netns") + 1]


# --- start, reload, stop ----------------------------------------------------------------------


def _write_config(f: Files, config: BirdConfig) -> None:
    f.conf.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.conf.with_suffix(".conf.tmp")
    tmp.write_text(config.with_log(str(f.log)).render())
    tmp.replace(f.conf)


def _record(f: Files, pid: int, digest: str) -> None:
    tmp = f.state.with_suffix(".state.tmp")
    tmp.write_text(json.dumps({"pid": pid, "digest": digest}))
    tmp.replace(f.state)


def start(state_dir: Path, cluster: str, netns: str, config: BirdConfig) -> int:
    """Start BIRD in ``netns`` with ``config``; returns its pid once its control socket answers."""
    for pid in find(cluster, netns):  # an orphan: from a crash, or running in a deleted namespace
        _terminate([pid], cluster)
    f = files(state_dir, netns)
    _write_config(f, config)
    f.ctl.parent.mkdir(parents=True, exist_ok=True)
    for stale in (f.ctl, f.pid, f.state):
        stale.unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", netns, BINARY, "-c", str(f.conf), "-s", str(f.ctl), "-P", str(f.pid)]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BirdError(f"BIRD did not start in {netns}: {(proc.stderr or proc.stdout).strip()}")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        pid = running_pid(state_dir, cluster, netns)
        if pid is not None:
            with contextlib.suppress(OSError):
                query(f.ctl, "show status")
                _record(f, pid, config.digest)
                return pid
        time.sleep(0.005)  # BIRD writes its pidfile and opens its socket right after forking
    raise BirdError(f"BIRD in {netns} did not answer on {f.ctl} within {START_TIMEOUT:.0f}s; see {f.log}")


def reload(state_dir: Path, cluster: str, netns: str, config: BirdConfig) -> int:
    """Have the running BIRD take ``config`` (``configure``); start it if it runs nowhere useful."""
    pid = running_pid(state_dir, cluster, netns)
    if pid is None or not _in_place(pid, netns):
        return start(state_dir, cluster, netns, config)
    f = files(state_dir, netns)
    _write_config(f, config)
    replies = query(f.ctl, f'configure "{f.conf}"')
    errors = [text for code, text in replies if code >= 8000]
    if errors or not any(code in (3, 4, 5, 19, 20) for code, _ in replies):
        raise BirdError(
            f"BIRD in {netns} refused its new configuration: " + "; ".join(errors or [t for _, t in replies])
        )
    _record(f, pid, config.digest)
    return pid


def stop(state_dir: Path | None, cluster: str, netns: str | None = None) -> int:
    """Stop the cluster's BIRDs (or the one of ``netns``); returns how many were stopped."""
    found = find(cluster, netns)
    if state_dir is not None and netns is not None:
        pid = running_pid(state_dir, cluster, netns)
        if pid is not None:
            found[pid] = netns
    killed = _terminate(list(found), cluster)
    for pid, ns in found.items():
        if pid in killed and kns.exists(ns):
            # SIGKILLed: BIRD could not take its routes out of the kernel; do it for it.
            subprocess.run(["ip", "-n", ns, "route", "flush", "proto", "bird"], capture_output=True)
        if state_dir is not None:
            f = files(state_dir, ns)
            for path in (f.pid, f.state, f.ctl):
                path.unlink(missing_ok=True)
    return len(found)


def _terminate(pids: list[int], cluster: str) -> set[int]:
    """SIGTERM (BIRD shuts its sessions down with a Cease and withdraws its kernel routes), then
    SIGKILL what is still there after STOP_TIMEOUT. Returns the pids that had to be killed."""
    identity = {pid: netns_of(cmdline(pid), cluster) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def alive() -> list[int]:
        return [pid for pid in pids if identity[pid] is not None and netns_of(cmdline(pid), cluster) == identity[pid]]

    deadline = time.monotonic() + STOP_TIMEOUT
    while alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = set(alive())
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while alive():
        time.sleep(0.005)
    return killed


# --- the control socket -------------------------------------------------------------------------


def query(ctl: Path, command: str, timeout: float = 5.0) -> list[tuple[int, str]]:
    """Send one command to BIRD's control socket; the reply as (code, text) lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(ctl))
        reader = s.makefile("r", encoding="utf-8", errors="replace", newline="\n")
        welcome = reader.readline()
        if not welcome.startswith("0001"):
            raise BirdError(f"unexpected greeting from {ctl}: {welcome.strip()!r}")
        s.sendall(command.encode() + b"\n")
        out: list[tuple[int, str]] = []
        code = 0
        for line in reader:
            line = line.rstrip("\n")
            if line[:1] == " ":
                out.append((code, line[1:]))
                continue
            code = int(line[:4])
            out.append((code, line[5:]))
            if line[4:5] == " ":
                break
        return out


# --- what reconcile asks for ---------------------------------------------------------------------


def is_bird(proc: Process) -> bool:
    return bgp.is_bird(proc.name)


def apply_change(state_dir: Path, cluster: str, op: str, proc: Process, plan: BgpPlan | None) -> None:
    """Carry out a start_process, reload_process or stop_process of one BIRD."""
    ns = netns_from_process(proc)
    if op == "stop_process":
        stop(state_dir, cluster, ns)
        return
    assert plan is not None, "a BIRD is planned only with backend bgp"
    config = plan.configs[speaker_of(cluster, ns)]
    if op == "start_process":
        start(state_dir, cluster, ns, config)
    else:
        reload(state_dir, cluster, ns, config)

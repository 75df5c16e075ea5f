"""Run an etcd cluster in podnet's namespaces: start, wait for health, stop, fail one member.

Each member is Debian's ``etcd`` (3.4) started as ``ip netns exec NS etcd ...`` in the network
namespace it is given, with its data under ``<directory>/<member>/``, a pidfile and a log. It
listens for peers and clients only on its underlay address inside that namespace, plus one
client unix socket in the cluster's etcd directory, so a command in the root namespace
reaches the cluster with no listener on any host interface. etcd 3.4 takes a unix listener
as ``unixs://NAME:PORT`` and creates the socket ``NAME:PORT`` relative to its working
directory (its URL check wants a host:port, and the path is host + path), so members run in
the etcd directory and their sockets are ``<member>.sock:2379`` there. The directory is 0700:
only root reaches the sockets, the keys, the data.

TLS everywhere, with certificates from :mod:`podnet.kv.pki`: peers must present a peer
certificate (a CA of their own), clients a client certificate whose common name etcd takes as
the user (``--client-cert-auth``); users and roles come from :mod:`podnet.kv.access`, and
authentication is enabled before ``start`` returns.

Identity, as :mod:`podnet.runtime.process` does it for podnet's daemons: a pid is a member of
this cluster only if ``/proc/PID/cmdline`` is ``etcd`` with ``--initial-cluster-token
podnet_<cluster>`` and ``--name <member>``, so ``stop`` finds every member even without the
directory, and never signals a recycled pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from podnet.errors import PodnetError
from podnet.kernel import netns as kns
from podnet.kv import access, pki
from podnet.kv.config import Endpoint, Settings, Tls
from podnet.runtime.process import cmdline

BINARY = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
SOCKET_MAX = 107  # sun_path, less its terminating NUL


class EtcdError(PodnetError):
    """An etcd member did not start, or the cluster did not become healthy."""


@dataclass(frozen=True)
class Member:
    """One etcd member: its name, the namespace it runs in, its address on the underlay there."""

    name: str
    netns: str
    ip: str


@dataclass(frozen=True)
class Timing:
    """Raft timing. Heartbeat 50 ms / election 500 ms fail a dead leader over in 0.5-1 s here
    (etcd's defaults, 100 / 1000 ms, took 1-2.5 s)."""

    heartbeat_ms: int = 50
    election_ms: int = 500


@dataclass(frozen=True)
class EtcdCluster:
    """An emulated etcd cluster: which members, where its files live, which node agents it knows."""

    cluster: str
    members: tuple[Member, ...]
    directory: Path
    nodes: tuple[str, ...] = ()
    timing: Timing = field(default_factory=Timing)
    # Users, roles and authentication. Off only to measure clients that cannot authenticate by
    # certificate: etcd 3.4's JSON gateway refuses a client certificate's CN once auth is on.
    auth: bool = True

    @property
    def token(self) -> str:
        return f"podnet_{self.cluster}"

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no etcd member {name!r} in cluster {self.cluster} ({', '.join(m.name for m in self.members)})")


# --- files ------------------------------------------------------------------------------


def pki_dir(c: EtcdCluster) -> Path:
    return c.directory / "pki"


def data_dir(c: EtcdCluster, m: Member) -> Path:
    return c.directory / m.name


def pidfile(c: EtcdCluster, m: Member) -> Path:
    return c.directory / f"{m.name}.pid"


def logfile(c: EtcdCluster, m: Member) -> Path:
    return c.directory / f"{m.name}.log"


def socket_dir(c: EtcdCluster) -> Path:
    """Where the members' client sockets are: the etcd directory, unless its path is too long
    for a socket address (then a short root-only directory under /run/podnet)."""
    longest = max((len(socket_name(m)) for m in c.members), default=0)
    if len(str(c.directory)) + 1 + longest <= SOCKET_MAX:
        return c.directory
    return Path("/run/podnet") / f"etcd-{hashlib.sha1(str(c.directory).encode()).hexdigest()[:16]}"


def socket_name(m: Member) -> str:
    return f"{m.name}.sock:{CLIENT_PORT}"


def admin_tls(c: EtcdCluster) -> Tls:
    """The credentials of podnet's own commands (etcd user ``root``)."""
    d = pki_dir(c)
    return Tls(d / "ca.crt", d / "admin.crt", d / "admin.key")


def node_tls(c: EtcdCluster, node: str) -> Tls:
    """The credentials of the agent of ``node`` (etcd user ``system:node:<node>``)."""
    d = pki_dir(c)
    return Tls(d / "ca.crt", d / f"node-{node}.crt", d / f"node-{node}.key")


def local_endpoints(c: EtcdCluster) -> tuple[Endpoint, ...]:
    """The members' unix sockets: how a command in the root namespace reaches the cluster."""
    sockets = socket_dir(c)
    return tuple(Endpoint(f"unix:{sockets / socket_name(m)}", m.ip) for m in c.members)


def underlay_endpoints(c: EtcdCluster) -> tuple[Endpoint, ...]:
    """The members' client addresses on the underlay: how an agent in a host namespace reaches it."""
    return tuple(Endpoint(f"ipv4:{m.ip}:{CLIENT_PORT}", m.ip) for m in c.members)


def urls(c: EtcdCluster) -> str:
    """The ``--etcd`` value an agent on the underlay is given."""
    return ",".join(f"https://{m.ip}:{CLIENT_PORT}" for m in c.members)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def ensure_pki(c: EtcdCluster) -> None:
    """The CAs and every certificate the cluster needs (kept when already right)."""
    d = pki_dir(c)
    _private_dir(d)
    ca = pki.ensure_ca(d, "ca", f"podnet {c.cluster} etcd client CA")
    peer_ca = pki.ensure_ca(d, "peer-ca", f"podnet {c.cluster} etcd peer CA")
    for m in c.members:
        # clientAuth too, as kubeadm's etcd server certificates: etcd's own gateway (HTTP/JSON on
        # the client port) dials the member's gRPC with it, and client-cert-auth checks it.
        names = pki.Identity(m.name, ips=(m.ip,), dns=(m.name,), server=True, client=True)
        pki.ensure_leaf(d, f"{m.name}-server", ca, names)
        pki.ensure_leaf(
            d, f"{m.name}-peer", peer_ca, pki.Identity(m.name, ips=(m.ip,), dns=(m.name,), server=True, client=True)
        )
    pki.ensure_leaf(d, "admin", ca, pki.Identity(access.ADMIN, client=True))
    for node in c.nodes:
        pki.ensure_leaf(d, f"node-{node}", ca, pki.Identity(access.node_user(node), client=True))


# --- identity ---------------------------------------------------------------------------


def _flag(argv: list[str], name: str) -> str | None:
    prefix = f"--{name}="
    for a in argv:
        if a.startswith(prefix):
            return a[len(prefix) :]
    return None


def member_of(argv: list[str], token: str) -> str | None:
    """The member a command line runs, if it is an etcd of the cluster with this token."""
    if not argv or os.path.basename(argv[0]) != BINARY or _flag(argv, "initial-cluster-token") != token:
        return None
    return _flag(argv, "name")


def find(cluster: str) -> dict[int, str]:
    """pid -> member name of every etcd member of this cluster, by command line."""
    token = f"podnet_{cluster}"
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            name = member_of(cmdline(int(entry)), token)
            if name is not None:
                out[int(entry)] = name
    return out


def running_pid(c: EtcdCluster, m: Member) -> int | None:
    try:
        pid = int(pidfile(c, m).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and member_of(cmdline(pid), c.token) == m.name:
        return pid
    for found, name in find(c.cluster).items():  # the pidfile lost in a crash
        if name == m.name:
            return found
    return None


# --- start ------------------------------------------------------------------------------


def argv(c: EtcdCluster, m: Member) -> list[str]:
    d = pki_dir(c)
    peers = ",".join(f"{p.name}=https://{p.ip}:{PEER_PORT}" for p in c.members)
    flags = {
        "name": m.name,
        "data-dir": str(data_dir(c, m)),
        "initial-cluster-token": c.token,
        "initial-cluster": peers,
        "initial-cluster-state": "new",
        "listen-peer-urls": f"https://{m.ip}:{PEER_PORT}",
        "initial-advertise-peer-urls": f"https://{m.ip}:{PEER_PORT}",
        "listen-client-urls": f"https://{m.ip}:{CLIENT_PORT},unixs://{socket_name(m)}",
        "advertise-client-urls": f"https://{m.ip}:{CLIENT_PORT}",
        "trusted-ca-file": str(d / "ca.crt"),
        "cert-file": str(d / f"{m.name}-server.crt"),
        "key-file": str(d / f"{m.name}-server.key"),
        "client-cert-auth": "true",
        "peer-trusted-ca-file": str(d / "peer-ca.crt"),
        "peer-cert-file": str(d / f"{m.name}-peer.crt"),
        "peer-key-file": str(d / f"{m.name}-peer.key"),
        "peer-client-cert-auth": "true",
        "heartbeat-interval": str(c.timing.heartbeat_ms),
        "election-timeout": str(c.timing.election_ms),
        "logger": "zap",
        "log-outputs": "stderr",
    }
    return [BINARY, *(f"--{k}={v}" for k, v in flags.items())]


def _spawn(c: EtcdCluster, m: Member) -> subprocess.Popen:
    if not kns.exists(m.netns):
        raise EtcdError(f"etcd member {m.name}: namespace {m.netns} does not exist")
    if shutil.which(BINARY) is None:
        raise EtcdError("etcd is not installed (Debian package etcd-server; `make deps-test` installs it)")
    _private_dir(data_dir(c, m))
    sockets = socket_dir(c)
    _private_dir(sockets)
    # etcd 3.4 does not remove a socket left by a member that was killed: bind would fail.
    (sockets / socket_name(m)).unlink(missing_ok=True)
    log = open(logfile(c, m), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["ip", "netns", "exec", m.netns, *argv(c, m)],
        cwd=sockets,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        close_fds=True,
    )
    log.close()
    pidfile(c, m).write_text(f"{proc.pid}\n")  # `ip netns exec` execs etcd: the pid stays
    return proc


def start(c: EtcdCluster) -> None:
    """Start every member that is not running, wait until the cluster is healthy, and make
    its users and roles (then authentication is on)."""
    _private_dir(c.directory)
    ensure_pki(c)
    started = {m.name: _spawn(c, m) for m in c.members if running_pid(c, m) is None}
    asyncio.run(_healthy(c, [m.name for m in c.members], started))
    asyncio.run(_bootstrap(c))


def start_member(c: EtcdCluster, name: str) -> None:
    """Start one member again (after a fault) and wait until it has a leader."""
    m = c.member(name)
    if running_pid(c, m) is None:
        asyncio.run(_healthy(c, [name], {name: _spawn(c, m)}))


async def _bootstrap(c: EtcdCluster) -> None:
    """The cluster's users, roles and anchor keys (idempotent), then authentication on."""
    from podnet.kv import etcd_auth
    from podnet.kv.etcd import EtcdStore
    from podnet.kv.layout import Keys

    async with EtcdStore(local_endpoints(c), admin_tls(c)) as store:
        for key in Keys(c.cluster).anchors():
            await store.put_if_absent(key, b"")
        if c.auth:
            await etcd_auth.ensure(store, access.access(c.cluster, c.nodes))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


async def _healthy(c: EtcdCluster, names: list[str], started: dict[str, subprocess.Popen]) -> None:
    """Wait until each named member answers Status with a leader known; fail fast if one died."""
    from podnet.kv.etcd import EtcdStore

    deadline = time.monotonic() + START_TIMEOUT
    index = {m.name: i for i, m in enumerate(c.members)}
    waiting = set(names)
    async with EtcdStore(local_endpoints(c), admin_tls(c), Settings(attempt_timeout=0.5)) as store:
        while waiting:
            for name in sorted(waiting):
                m = c.member(name)
                if name in started and started[name].poll() is not None:
                    raise EtcdError(f"etcd member {name} exited during start: {_tail(logfile(c, m))}")
                status = await store.member_status(index[name])  # None: not listening yet
                if status is not None and status.leader:
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise EtcdError(
                    f"etcd members {', '.join(sorted(waiting))} not healthy after {START_TIMEOUT:.0f}s; see {c.directory}/*.log"
                )
            if waiting:
                await asyncio.sleep(0.05)  # members come up on their own; ask again shortly


# --- stop -------------------------------------------------------------------------------


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: Iterable[int], token: str, timeout: float) -> set[int]:
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for pid in list(left):
            _reap(pid)
            if member_of(cmdline(pid), token) is None:
                left.discard(pid)
        if left:
            time.sleep(0.01)  # the kernel tears the process down; look again shortly
    return left


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_member(c: EtcdCluster, name: str, sig: int = signal.SIGKILL) -> None:
    """Stop one member abruptly (a fault: SIGKILL by default) and wait until it is gone."""
    pid = running_pid(c, c.member(name))
    if pid is None:
        return
    _signal([pid], sig)
    if sig in (signal.SIGKILL, signal.SIGTERM) and _wait_gone([pid], c.token, STOP_TIMEOUT):
        raise EtcdError(f"etcd member {name} (pid {pid}) did not exit")


def stop(cluster: str) -> int:
    """Stop every member of ``cluster`` (found by command line alone); returns how many."""
    token = f"podnet_{cluster}"
    pids = set(find(cluster))
    _signal(pids, signal.SIGTERM)
    left = _wait_gone(pids, token, STOP_TIMEOUT)
    _signal(left, signal.SIGKILL)
    _wait_gone(left, token, STOP_TIMEOUT)
    return len(pids)


def destroy(c: EtcdCluster) -> None:
    """Stop the members and remove everything of the cluster's etcd: data, keys, sockets."""
    stop(c.cluster)
    shutil.rmtree(c.directory, ignore_errors=True)
    if socket_dir(c) != c.directory:
        shutil.rmtree(socket_dir(c), ignore_errors=True)

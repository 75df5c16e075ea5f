"""``podnet agent --node NAME --config FILE``: the node daemon behind ``podnet-cni``.

It programs the network namespace it runs in as node NAME of the cluster the file describes
(see :mod:`podnet.cni.node`), then serves the plugin's requests on a root-only Unix socket:

- ADD: take the next free address of the node's block (:mod:`podnet.cni.ipam`), create a
  veth pair with one end on ``cni0`` and the other, named ``CNI_IFNAME``, up in the
  container's namespace, give it the address and a default route via the bridge.
- DEL: forget the attachment and take its host end down and into a "retired" link group,
  all in well under a millisecond; a background thread deletes every retired link with one
  netlink message (the kernel waits one RCU grace period per deletion batch, about 18 ms, not
  per link). The address stays out of the pool until its old interface is gone.
- CHECK: compare the container's interface, address and route, and the host end, with the
  attachment and ``prevResult``; any difference is an error.
- GC: forget attachments the runtime no longer lists, and delete host ends nobody owns.
- STATUS: ready while the node is set up and the pool has a free address.

Requests are served by a pool of worker threads; each keeps its own netlink socket in the
node's namespace and opens one in the container's namespace per request. Kernel state
outlives the agent: stopping it (SIGTERM) leaves every container connected, and a restarted
agent finds its attachments in the state directory and its node set up already.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from pyroute2 import IPRoute

from podnet import names
from podnet.cni import netlink, node
from podnet.cni.ipam import Attachment, Exhausted, Ipam, pool_of
from podnet.cni.protocol import AddResult, error_message
from podnet.cni.shim import (
    DEFAULT_SOCKET,
    DRIFT,
    IFNAME_IN_USE,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    NOT_AVAILABLE,
    POOL_EXHAUSTED,
    SPEC_VERSION,
    SUPPORTED_VERSIONS,
    UNKNOWN_CONTAINER,
    CniError,
    check_config,
    loads,
)
from podnet.errors import PodnetError, UsageError

log = logging.getLogger("podnet.agent")

RETIRED_GROUP = 0x706E6400  # "pn d": links waiting to be deleted in one batch
MAX_REQUEST = 4 << 20
SO_PEERCRED_FMT = struct.Struct("3i")


def state_root() -> Path:
    return Path(os.environ.get("PODNET_STATE_DIR", "/var/lib/podnet"))


def host_veth_name(container_id: str, ifname: str) -> str:
    """The host end of an attachment: 15 bytes, derived from the attachment's key."""
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def host_veth_mac(host_if: str) -> str:
    """A stable, locally administered unicast MAC for the host end."""
    digest = hashlib.sha256(host_if.encode()).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest[:5])


class _GcLock:
    """Any number of ADD/DEL/CHECK at once, or one GC alone: a GC must not take an attachment
    for stale while its ADD is still being made."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@contextmanager
def host_ipr() -> Iterator[IPRoute]:
    """A pyroute2 socket in the agent's namespace for one request (IPRoute is not thread-safe)."""
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


class Reaper:
    """Deletes retired host ends in batches, then gives their addresses back to the pool."""

    def __init__(self, ipam: Ipam) -> None:
        self.ipam = ipam
        self._cond = threading.Condition()
        self._pending: dict[str, str | None] = {}  # host_if -> address held for it
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def retire(self, host_if: str, ip: str | None) -> None:
        with self._cond:
            self._pending[host_if] = ip
            self._cond.notify_all()

    def pending(self, host_if: str) -> bool:
        with self._cond:
            return host_if in self._pending

    def wait_gone(self, host_if: str | None = None, timeout: float = 30.0) -> bool:
        """Wait until ``host_if`` (or every retired link) is deleted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (host_if in self._pending) if host_if else self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        rtnl = netlink.Rtnl()
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    batch = dict(self._pending)
                # Every link in the batch is in the group already: one message deletes them all.
                try:
                    code = rtnl.request([netlink.delete_group_message(RETIRED_GROUP)])[0]
                    if code not in (0, errno.ENODEV):
                        log.warning("deleting retired links failed: %s; deleting one by one", os.strerror(code))
                        rtnl.request([netlink.delete_link_message(name) for name in batch])
                except OSError as exc:  # keep the batch pending, try again shortly
                    log.warning("deleting retired links failed: %s", exc)
                    with self._cond:
                        self._cond.wait(1.0)
                    continue
                with self._cond:
                    for name in batch:
                        if self._pending.get(name, "") == batch[name]:
                            del self._pending[name]
                    self._cond.notify_all()
                self.ipam.unhold(ip for ip in batch.values() if ip)
        finally:
            rtnl.close()


class Agent:
    def __init__(self, node_name: str, config_file: str, socket_path: str, state_dir: Path | None = None) -> None:
        self.node_name = node_name
        self.config_file = config_file
        self.socket_path = socket_path
        previous_cfg = node.load(config_file, node_name)
        self.state_dir = state_dir or state_root() / "agent" / f"{previous_cfg.cluster}_{node_name}"
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        alloc_file = self.state_dir / "cluster-allocations.json"
        previous = json.loads(alloc_file.read_text()) if alloc_file.exists() else {}
        # Blocks and underlay addresses stay what they were when the file grows.
        self.cfg = node.load(config_file, node_name, previous) if previous else previous_cfg
        alloc_file.write_text(json.dumps(self.cfg.allocations, indent=1, sort_keys=True))
        pool = [ip for ip in pool_of(self.cfg.block, self.cfg.gateway) if ip not in self.cfg.reserved]
        self.ipam = Ipam(self.state_dir / "ipam.db", pool)
        self.reaper = Reaper(self.ipam)
        self.session = node.HostSession()
        self.ready = False
        self.ready_error = "the node is not set up yet"
        self._server: socket.socket | None = None
        self._stopping = threading.Event()
        self._gc = _GcLock()

    # --- the node -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Set the node up (or check that it is), re-enslave attachments, delete retired links."""
        changes = node.sync(self.session, self.cfg)
        if changes:
            log.info(
                "node %s: made %d changes (%s)",
                self.node_name,
                len(changes),
                ", ".join(sorted({c.op for c in changes})),
            )
        rtnl = netlink.Rtnl()
        try:
            rtnl.request([netlink.delete_group_message(RETIRED_GROUP)])  # left by a crash
        finally:
            rtnl.close()
        self._reattach()
        self.ready = True
        self.ready_error = ""

    def _reattach(self) -> None:
        """A bridge recreated by the sync has lost its ports: give them back."""
        bridge = self.session.ipr.link_lookup(ifname=node.BRIDGE)
        if not bridge:
            return
        owned = {a.host_if for a in self.ipam.all()}
        for msg in self.session.ipr.get_links():
            if msg.get_attr("IFLA_IFNAME") in owned and msg.get_attr("IFLA_MASTER") != bridge[0]:
                self.session.ipr.link("set", index=msg["index"], master=bridge[0], state="up")

    # --- verbs ------------------------------------------------------------------------------

    def handle(self, request: dict) -> bytes:
        """One request from the shim: the bytes to send back (status byte + what to print)."""
        conf = request.get("config")
        version = SPEC_VERSION
        try:
            if not isinstance(conf, dict):
                raise CniError(INVALID_CONFIG, "the request carries no configuration")
            if conf.get("cniVersion") in SUPPORTED_VERSIONS:
                version = conf["cniVersion"]
            command = request["command"]
            verb: Callable[[dict, dict, str], bytes] | None = {
                "ADD": self.add,
                "DEL": self.delete,
                "CHECK": self.check,
                "GC": self.gc,
                "STATUS": self.status,
            }.get(command)
            if verb is None:
                raise CniError(INVALID_CONFIG, f"podnet agent does not serve {command!r}")
            check_config(conf, command)  # the shim checked it; a direct caller may not have
            with self._gc.exclusive() if command == "GC" else self._gc.shared():
                return b"0" + verb(request, conf, version)
        except CniError as exc:
            return b"1" + error_message(exc, version)
        except Exception as exc:
            log.exception("request failed")
            return b"1" + error_message(CniError(INTERNAL, f"podnet agent: {exc}"), version)

    def add(self, req: dict, conf: dict, version: str) -> bytes:
        netns_path = req["netns"]
        if not os.path.exists(netns_path):
            raise CniError(UNKNOWN_CONTAINER, f"no network namespace at {netns_path}")
        if not netlink.is_namespace(netns_path):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns_path} is not a network namespace")
        if netlink.same_namespace(netns_path):
            raise CniError(
                INVALID_ENVIRONMENT, f"CNI_NETNS {netns_path} is the node's own namespace, not a container's"
            )
        key = (conf["name"], req["containerID"], req["ifname"])
        host_if = host_veth_name(req["containerID"], req["ifname"])
        try:
            att, new = self.ipam.allocate(*key, netns_path, host_if)
        except Exhausted as exc:
            raise CniError(
                POOL_EXHAUSTED, f"node {self.node_name}: no address left in {self.cfg.block}", str(exc)
            ) from None
        if self.reaper.pending(host_if):
            self.reaper.wait_gone(host_if)
        try:
            result = self._plumb(att, netns_path, replace_existing=not new)
        except CniError:
            self._undo(att, new)
            raise
        except OSError as exc:
            self._undo(att, new)
            raise CniError(
                INTERNAL, f"could not attach {req['ifname']} in {netns_path}: {exc.strerror or exc}"
            ) from None
        prev = conf.get("prevResult")
        return json.dumps(result.to_json(version, conf.get("dns"), prev)).encode() + b"\n"

    def _plumb(self, att: Attachment, netns_path: str, replace_existing: bool) -> AddResult:
        host = netlink.host_socket()
        if replace_existing:  # ADD again for a live attachment: rebuild it from scratch
            host.request([netlink.delete_link_message(att.host_if)])
        bridge = host.ifindex(node.BRIDGE)
        if bridge is None:
            raise CniError(INTERNAL, f"node {self.node_name} has no bridge {node.BRIDGE}: is the agent set up?")
        mac = names.mac_for_ip(att.ip)
        host_mac = host_veth_mac(att.host_if)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            code = host.request(
                [netlink.veth_message(att.host_if, host_mac, bridge, self.cfg.mtu, att.ifname, mac, fd)]
            )[0]
        finally:
            os.close(fd)
        if code == errno.EEXIST:
            with netlink.Rtnl(netns_path) as inside:
                taken = inside.ifindex(att.ifname) is not None
            if taken:
                raise CniError(IFNAME_IN_USE, f"{att.ifname} already exists in {netns_path}")
            raise CniError(INTERNAL, f"a link named {att.host_if} already exists on node {self.node_name}")
        if code:
            raise OSError(code, f"create veth {att.host_if}: {os.strerror(code)}")
        with netlink.Rtnl(netns_path) as inside:
            index = inside.ifindex(att.ifname)
            if index is None:
                raise CniError(INTERNAL, f"{att.ifname} vanished from {netns_path} right after its creation")
            codes = inside.check(
                [
                    netlink.up_message(index),
                    netlink.address_message(index, att.ip, self.cfg.prefix),
                    netlink.default_route_message(index, self.cfg.gateway),
                ],
                [
                    f"set {att.ifname} up",
                    f"address {att.ip}/{self.cfg.prefix}",
                    f"default route via {self.cfg.gateway}",
                ],
                ok=(errno.EEXIST,),
            )
        return AddResult(
            host_if=att.host_if,
            host_mac=host_mac,
            ifname=att.ifname,
            mac=mac,
            sandbox=netns_path,
            mtu=self.cfg.mtu,
            cidr=f"{att.ip}/{self.cfg.prefix}",
            gateway=self.cfg.gateway,
            default_route=codes[2] == 0,
        )

    def _undo(self, att: Attachment, new: bool) -> None:
        with suppress(OSError):
            netlink.host_socket().request([netlink.delete_link_message(att.host_if)])
        if new:
            self.ipam.release(att.key)

    def delete(self, req: dict, conf: dict, version: str) -> bytes:
        key = (conf["name"], req["containerID"], req["ifname"])
        att = self.ipam.release(key, hold=True)
        host_if = att.host_if if att else host_veth_name(req["containerID"], req["ifname"])
        code = netlink.host_socket().request([netlink.retire_message(host_if, RETIRED_GROUP)])[0]
        if code == 0:
            self.reaper.retire(host_if, att.ip if att else None)
        elif att is not None:
            self.ipam.unhold([att.ip])  # nothing to delete: the namespace took the pair with it
        return b""

    def check(self, req: dict, conf: dict, version: str) -> bytes:
        key = (conf["name"], req["containerID"], req["ifname"])
        att = self.ipam.get(key)
        if att is None:
            raise CniError(UNKNOWN_CONTAINER, f"podnet has no attachment {req['containerID']}/{req['ifname']}")
        netns_path = req["netns"]
        if not os.path.exists(netns_path):
            raise CniError(UNKNOWN_CONTAINER, f"no network namespace at {netns_path}")
        problems = self._drift(att, netns_path, conf.get("prevResult") or {})
        if problems:
            raise CniError(
                DRIFT, f"attachment {att.container_id}/{att.ifname} drifted: {problems[0]}", "; ".join(problems)
            )
        return b""

    def _drift(self, att: Attachment, netns_path: str, prev: dict) -> list[str]:
        out: list[str] = []
        cidr = f"{att.ip}/{self.cfg.prefix}"
        mac = names.mac_for_ip(att.ip)
        if not self.ready:
            out.append(f"the node is not set up: {self.ready_error}")
        ours = [
            i
            for i, iface in enumerate(prev.get("interfaces", []))
            if iface.get("name") == att.ifname and iface.get("sandbox") == netns_path
        ]
        if not ours:
            out.append(f"prevResult has no interface {att.ifname} in {netns_path}")
        elif not any(ip.get("address") == cidr and ip.get("interface") in ours for ip in prev.get("ips", [])):
            out.append(f"prevResult does not give {att.ifname} the address {cidr}")
        with netlink.entered(netns_path):
            ipr = IPRoute()
        try:
            links = {m.get_attr("IFLA_IFNAME"): m for m in ipr.get_links()}
            link = links.get(att.ifname)
            if link is None:
                out.append(f"interface {att.ifname} is missing from {netns_path}")
            else:
                if not link["flags"] & 1:
                    out.append(f"interface {att.ifname} is down")
                if link.get_attr("IFLA_ADDRESS") != mac:
                    out.append(f"interface {att.ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, not {mac}")
                addrs = {
                    f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"
                    for m in ipr.get_addr(family=socket.AF_INET, index=link["index"])
                }
                if cidr not in addrs:
                    out.append(f"interface {att.ifname} lacks its address {cidr}")
                routes = {
                    (r.get_attr("RTA_GATEWAY"), r["dst_len"], r.get_attr("RTA_DST") or "0.0.0.0")
                    for r in ipr.get_routes(family=socket.AF_INET, table=254)
                }
                for route in prev.get("routes", []):
                    if route.get("gw") == self.cfg.gateway:
                        dst, _, length = route["dst"].partition("/")
                        if (route["gw"], int(length), dst) not in routes:
                            out.append(f"route {route['dst']} via {route['gw']} is missing")
        finally:
            ipr.close()
        with host_ipr() as ipr:
            host = ipr.link_lookup(ifname=att.host_if)
            bridge = ipr.link_lookup(ifname=node.BRIDGE)
            if not host:
                out.append(f"host end {att.host_if} is missing")
            else:
                msg = ipr.get_links(host[0])[0]
                if not msg["flags"] & 1:
                    out.append(f"host end {att.host_if} is down")
                if not bridge or msg.get_attr("IFLA_MASTER") != bridge[0]:
                    out.append(f"host end {att.host_if} is not on {node.BRIDGE}")
        return out

    def gc(self, req: dict, conf: dict, version: str) -> bytes:
        valid = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments", []))
        keep_ids = {(a["containerID"], a.get("ifname")) for a in valid}
        network = conf["name"]
        stale = [
            a
            for a in self.ipam.all()
            if a.network == network
            and (a.container_id, a.ifname) not in keep_ids
            and (a.container_id, None) not in keep_ids
        ]
        host = netlink.host_socket()
        for att in stale:
            self.ipam.release(att.key, hold=True)
            code = host.request([netlink.retire_message(att.host_if, RETIRED_GROUP)])[0]
            if code == 0:
                self.reaper.retire(att.host_if, att.ip)
            else:
                self.ipam.unhold([att.ip])
        owned = {a.host_if for a in self.ipam.all()}
        orphans = []
        with host_ipr() as ipr:
            bridge = ipr.link_lookup(ifname=node.BRIDGE)
            links = list(ipr.get_links()) if bridge else []
        if bridge:
            for msg in links:
                name = msg.get_attr("IFLA_IFNAME")
                if (
                    msg.get_attr("IFLA_MASTER") == bridge[0]
                    and name.startswith("veth")
                    and name not in owned
                    and not self.reaper.pending(name)
                ):
                    orphans.append(name)
        for name in orphans:
            if host.request([netlink.retire_message(name, RETIRED_GROUP)])[0] == 0:
                self.reaper.retire(name, None)
        if stale or orphans:
            log.info("GC %s: released %d attachments, deleted %d orphaned host ends", network, len(stale), len(orphans))
        self.reaper.wait_gone()
        return b""

    def status(self, req: dict, conf: dict, version: str) -> bytes:
        if not self.ready:
            raise CniError(NOT_AVAILABLE, f"podnet agent of node {self.node_name} is not ready: {self.ready_error}")
        if self.ipam.free() == 0:
            raise CniError(
                NOT_AVAILABLE,
                f"node {self.node_name}: every address of {self.cfg.block} is in use",
                f"{len(self.ipam.pool)} addresses, all allocated or still being released",
            )
        return b""

    # --- serving ------------------------------------------------------------------------------

    def listen(self) -> socket.socket:
        path = Path(self.socket_path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        elif path.parent.stat().st_mode & 0o077:
            # Not ours to chmod (it may be /tmp); the socket itself is 0600, so still root-only.
            log.warning("%s is open to others: podnet's default socket directory is 0700", path.parent)
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by an agent that died
            else:
                raise UsageError(f"another podnet agent is serving {path}")
            finally:
                probe.close()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            srv.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        srv.listen(1024)
        self._server = srv
        return srv

    def serve(self, workers: int = 8) -> None:
        srv = self._server or self.listen()
        log.info(
            "node %s (block %s, gateway %s, MTU %d): serving %s",
            self.node_name,
            self.cfg.block,
            self.cfg.gateway,
            self.cfg.mtu,
            self.socket_path,
        )
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni") as pool:
            while not self._stopping.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    if self._stopping.is_set():
                        break
                    raise
                pool.submit(self._serve_one, conn)
        self.close()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            _pid, uid, _gid = SO_PEERCRED_FMT.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, SO_PEERCRED_FMT.size)
            )
            data = bytearray()  # read first: answering before would reset the connection
            while len(data) <= MAX_REQUEST:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if uid != 0:
                conn.sendall(b"1" + error_message(CniError(INTERNAL, "podnet agent serves root only")))
                return
            try:
                if len(data) > MAX_REQUEST:
                    raise ValueError(f"more than {MAX_REQUEST} bytes")
                request = loads(data.decode())
                if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                    raise ValueError("not a request")
            except ValueError as exc:
                conn.sendall(b"1" + error_message(CniError(INTERNAL, f"garbled request: {exc}")))
                return
            conn.sendall(self.handle(request))
        except OSError as exc:
            log.warning("connection failed: %s", exc)
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop serving (from a signal handler or another thread); kernel state stays."""
        self._stopping.set()
        if self._server is not None:
            with suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._server is not None:
            with suppress(OSError):
                if stat.S_ISSOCK(os.stat(self.socket_path).st_mode):
                    os.unlink(self.socket_path)
            self._server.close()
            self._server = None
        self.reaper.wait_gone(timeout=10)
        self.reaper.stop()
        self.ipam.close()
        self.session.close()


def run(
    node_name: str, config_file: str, socket_path: str = DEFAULT_SOCKET, state_dir: str | None = None, workers: int = 8
) -> int:
    logging.basicConfig(level=logging.INFO, format="podnet agent: %(message)s", stream=sys.stderr)
    agent = Agent(node_name, config_file, socket_path, Path(state_dir) if state_dir else None)
    try:
        agent.setup()
    except PodnetError:
        agent.close()
        raise
    agent.listen()
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.serve(workers)
    finally:
        log.info("stopped; containers keep their network")
    return 0

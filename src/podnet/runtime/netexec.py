"""``podnet netexec``: the small server every pod with container ports runs.

It speaks the protocol of the ``netexec`` server Kubernetes' own network tests use, so the
same probes work: over TCP, HTTP ``GET /hostname`` (the pod's name), ``/clientip`` (the
client's ``ip:port`` as the pod sees it) and ``/echo?msg=X``; over UDP, the datagrams
``hostname``, ``echo X`` and ``clientip``; over SCTP, the same commands, one message per
association, as agnhost's netexec answers them.

SCTP needs the kernel's SCTP sockets. Where ``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)``
fails (a kernel without them: EPROTONOSUPPORT), SCTP ports are published as not served,
with the reason, instead of failing the daemon; nftables still balances and filters SCTP
packets there, it is only the pods' server that cannot answer.

One process serves a whole cluster: it enters each pod's namespace just long enough to open
a listening socket there (a socket stays in the namespace it was created in) and then
serves every socket from one asyncio loop. A thousand pods cost a thousand sockets, not a
thousand interpreters. SIGHUP re-reads the configuration and opens or closes only the
difference; readiness is published to a file the CLI reads.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from podnet.kernel import netns
from podnet.runtime.loop import publish, serve

log = logging.getLogger("podnet.netexec")

CONFIG = "netexec.json"
READY = "netexec.ready.json"


def answer_http(path: str, pod: str, client: tuple[str, int]) -> tuple[int, str]:
    url = urlsplit(path)
    if url.path == "/hostname":
        return 200, pod
    if url.path == "/clientip":
        return 200, f"{client[0]}:{client[1]}"
    if url.path == "/echo":
        return 200, parse_qs(url.query).get("msg", [""])[0]
    if url.path in ("/", "/healthz"):
        return 200, "ok"
    return 404, "not found"


def answer_udp(data: bytes, pod: str, client: tuple[str, int]) -> bytes | None:
    text = data.decode(errors="replace").strip()
    if text == "hostname":
        return pod.encode()
    if text == "clientip":
        return f"{client[0]}:{client[1]}".encode()
    if text.startswith("echo "):
        return text[5:].encode()
    if text == "echo":
        return b""
    return None


SOCKET_KINDS = {
    "TCP": (socket.SOCK_STREAM, 0),
    "UDP": (socket.SOCK_DGRAM, 0),
    "SCTP": (socket.SOCK_STREAM, socket.IPPROTO_SCTP),  # one-to-one style, as agnhost's netexec listens
}


def sctp_unsupported() -> str | None:
    """Why this kernel cannot serve SCTP, or None when it can (socket support is the
    kernel's, not a namespace's)."""
    try:
        socket.socket(socket.AF_INET, *SOCKET_KINDS["SCTP"]).close()
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return f"this kernel has no SCTP sockets (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {name})"
    return None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, pod: str) -> None:
        self.pod = pod
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer_udp(data, self.pod, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _serve_http(pod: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        request_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = request_line.split()
        peer = writer.get_extra_info("peername")
        status, body = answer_http(parts[1] if len(parts) > 1 else "/", pod, peer)
        reason = "OK" if status == 200 else "Not Found"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve_message(pod: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One SCTP association: one message in (a UDP command), its answer out, then closed."""
    try:
        data = await asyncio.wait_for(reader.read(1024), timeout=10)
        reply = answer_udp(data, pod, writer.get_extra_info("peername"))
        if reply is not None:
            writer.write(reply)
            await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(netns.path(name)).st_ino
    except OSError:
        return None


class Daemon:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        # (netns, port, protocol) -> (namespace inode, closer)
        self.listening: dict[tuple[str, int, str], tuple[int, object]] = {}

    def _open(self, ns: str, port: int, protocol: str) -> socket.socket:
        kind, proto = SOCKET_KINDS[protocol]
        with netns.entered(ns):
            sock = socket.socket(socket.AF_INET, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(512)
        sock.setblocking(False)
        return sock

    async def sync(self) -> dict:
        config = json.loads((self.dir / CONFIG).read_text())
        loop = asyncio.get_running_loop()
        want: dict[tuple[str, int, str], str] = {}
        for pod in config["pods"]:
            for p in pod["ports"]:
                want[(pod["netns"], p["port"], p["protocol"])] = pod["name"]
        for key in list(self.listening):
            inode, closer = self.listening[key]
            if key not in want or _ns_inode(key[0]) != inode:
                closer.close()  # type: ignore[attr-defined]
                del self.listening[key]
        errors = []
        unserved = []
        no_sctp = sctp_unsupported() if any(proto == "SCTP" for _, _, proto in want) else None
        for key, pod_name in want.items():
            if key in self.listening:
                continue
            ns, port, protocol = key
            if protocol == "SCTP" and no_sctp:
                unserved.append({"netns": ns, "port": port, "protocol": protocol, "reason": no_sctp})
                continue
            inode = _ns_inode(ns)
            if inode is None:
                errors.append(f"{ns}: namespace is gone")
                continue
            try:
                sock = self._open(ns, port, protocol)
            except OSError as exc:
                errors.append(f"{ns} {port}/{protocol}: {exc}")
                continue
            if protocol != "UDP":
                serve = _serve_http if protocol == "TCP" else _serve_message
                server = await asyncio.start_server(lambda r, w, f=serve, name=pod_name: f(name, r, w), sock=sock)
                self.listening[key] = (inode, server)
            else:
                transport, _ = await loop.create_datagram_endpoint(lambda name=pod_name: _Udp(name), sock=sock)
                self.listening[key] = (inode, transport)
        ready = {
            "digest": config.get("digest"),
            "nonce": config.get("nonce"),
            "pid": os.getpid(),
            "errors": errors,
            "unserved": unserved,
            "listening": [
                {"netns": ns, "port": port, "protocol": proto, "inode": inode}
                for (ns, port, proto), (inode, _) in sorted(self.listening.items())
            ],
        }
        publish(self.dir / READY, ready)
        for e in errors:
            log.warning("%s", e)
        if unserved:
            log.warning("%d SCTP ports not served: %s", len(unserved), no_sctp)
        log.info("serving %d sockets (config %s)", len(self.listening), config.get("digest"))
        return ready

    async def run(self) -> None:
        await serve(self.sync)
        for _, closer in self.listening.values():
            closer.close()  # type: ignore[attr-defined]
        (self.dir / READY).unlink(missing_ok=True)


def main(state_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(Daemon(state_dir).run())

"""netexec's SCTP: where the kernel has SCTP sockets, and what it answers. Pure, no root."""

from __future__ import annotations

import asyncio
import socket

from podnet.runtime import netexec


def test_sctp_detection_agrees_with_the_kernel() -> None:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        supported = True
    except OSError:
        supported = False
    reason = netexec.sctp_unsupported()
    assert (reason is None) == supported
    if reason is not None:
        assert reason.startswith("this kernel has no SCTP sockets (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): E")


def test_an_sctp_association_gets_one_answer_to_one_command() -> None:
    """The handler netexec serves SCTP with (one message in, its answer out, as agnhost's
    netexec does), over a loopback stream: it is the same code whatever the stream."""

    async def ask(message: bytes) -> tuple[bytes, str]:
        server = await asyncio.start_server(lambda r, w: netexec._serve_message("web-1", r, w), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(message)
        await writer.drain()
        answer = await reader.read()  # the server closes after its answer
        host, port = writer.get_extra_info("sockname")
        local = f"{host}:{port}"
        writer.close()
        server.close()
        await server.wait_closed()
        return answer, local

    assert asyncio.run(ask(b"hostname"))[0] == b"web-1"
    assert asyncio.run(ask(b"echo over sctp"))[0] == b"over sctp"
    answer, local = asyncio.run(ask(b"clientip"))
    assert answer.decode() == local
    assert asyncio.run(ask(b"what?"))[0] == b""  # unknown: no answer, closed

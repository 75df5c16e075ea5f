"""The loop every podnet daemon runs: sync now, sync again on SIGHUP, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path


async def serve(sync: Callable[[], Awaitable[object]]) -> None:
    """Run ``sync`` at once and after every SIGHUP; return when asked to stop.

    The wake-up flag is cleared *before* each sync, so a SIGHUP that arrives while a sync is
    running is not lost: it causes one more sync.
    """
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, wake.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():
        wake.clear()
        await sync()
        waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()


def publish(path: Path, data: dict) -> None:
    """Write a readiness file atomically: a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)

"""Small kernel helpers for the benchmarks: namespaces by prefix, work inside a namespace, ICMP.

Nothing here writes to the root namespace. Code that must run inside a namespace runs in a
short-lived thread that enters it and is never moved back (:func:`in_netns`), so the main
thread (and podnet's own idea of where it started) always stays in the root namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

RUN_NETNS = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
# The namespace this process started in (its main thread never leaves it).
ORIGIN_INODE = os.stat("/proc/self/ns/net").st_ino
# Set on Ctrl-C: loops running in worker threads stop at their next step.
STOP = threading.Event()
_live: set[threading.Thread] = set()


class BenchError(Exception):
    """A benchmark step failed: the message says which and why."""


def run(argv: list[str], *, input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command, return its stdout; a failure raises with the command and its output.

    The command runs in a process group of its own, and an interrupt kills the whole
    group, so that no ``ip`` started by a script goes on creating things after cleanup.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(input)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        output = (stderr.strip() or stdout.strip())[-2000:]
        raise BenchError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''} exited {proc.returncode}: {output}")
    return stdout


def find_processes(markers: list[str]) -> list[int]:
    """Processes (not this one) whose command line or environment contains a marker."""
    found = []
    needles = [m.encode() for m in markers]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        blob = b""
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as f:
                    blob += f.read()
            except OSError:
                continue
        if any(n in blob for n in needles):
            found.append(int(entry))
    return found


def kill_processes(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def list_prefixed(prefix: str) -> list[str]:
    """Namespaces pinned under /run/netns whose name starts with ``prefix``."""
    try:
        return sorted(e for e in os.listdir(RUN_NETNS) if e.startswith(prefix))
    except FileNotFoundError:
        return []


def delete_netns(names: Iterable[str]) -> None:
    """``ip netns del`` each of them in one ``ip -batch`` (missing ones are fine)."""
    names = list(names)
    if not names:
        return
    script = "".join(f"netns del {n}\n" for n in names)
    subprocess.run(["ip", "-force", "-batch", "-"], input=script, text=True, capture_output=True, check=False)
    from podnet.kernel import nftcache

    for n in names:
        nftcache.forget_namespace(n)  # what podnet.kernel.nft.load recorded of their tables


def netns_inode(name: str) -> int:
    return os.stat(f"{RUN_NETNS}/{name}").st_ino


def _thread_netns_inode() -> int:
    return os.stat(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net").st_ino


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a new thread that first enters namespace ``name``; return its result.

    The thread checks that it really is in ``name`` (and not in the root namespace)
    before calling ``fn``, so nothing meant for a namespace can land in the root one.
    """
    result: list = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"{RUN_NETNS}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            here = _thread_netns_inode()
            if here != netns_inode(name) or here == ORIGIN_INODE:
                raise BenchError(f"could not enter namespace {name}")
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=body, name=f"in-{name}", daemon=True)
    _live.add(thread)
    thread.start()
    thread.join()
    _live.discard(thread)
    if error:
        raise error[0]
    return result[0]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(netns: str, dst: str, timeout: float = 2.0) -> bool:
    """Send one ICMP echo from inside ``netns`` to ``dst``; True when the reply came back."""

    def probe() -> bool:
        ident = (os.getpid() ^ threading.get_native_id()) & 0xFFFF
        payload = b"podnet-bench"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.sendto(packet, (dst, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data, addr = s.recvfrom(2048)
                except TimeoutError:
                    return False
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind == 0 and rid == ident and addr[0] == dst:
                    return True
        return False

    return in_netns(netns, probe)


def proc_stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, the fields after comm) of every process in /proc/PID/stat."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :].split()


def _kernel_thread_ticks() -> int:
    """CPU time (clock ticks) used so far by kernel threads: where namespaces are freed."""
    total = 0
    for pid, _, fields in proc_stats():
        if pid == 2 or fields[1] == "2":  # kthreadd and its children
            total += int(fields[11]) + int(fields[12])
    return total


_TICKS = os.sysconf("SC_CLK_TCK")


def settle(timeout: float = 10.0, window: float = 0.2, busy_max: float = 0.1, quiet_windows: int = 2) -> float:
    """Wait until kernel threads are idle again; returns the CPU seconds they used meanwhile.

    The kernel frees deleted namespaces (and the veths in them) in a workqueue after
    ``ip netns del`` or ``podnet down`` returned; that work must not be billed to whatever
    is measured next. Kernel threads are watched rather than the whole machine, so other
    users' processes do not keep the benchmark waiting.
    """
    start = time.monotonic()
    first = prev = _kernel_thread_ticks()
    quiet = 0
    while time.monotonic() - start < timeout and quiet < quiet_windows:
        time.sleep(window)
        cur = _kernel_thread_ticks()
        quiet = quiet + 1 if (cur - prev) / _TICKS < busy_max * window else 0
        prev = cur
    return (prev - first) / _TICKS


def stop_workers(timeout: float = 30.0) -> None:
    """Tell loops in worker threads to stop, and wait for them (after a Ctrl-C)."""
    STOP.set()
    for thread in list(_live):
        thread.join(timeout)
        _live.discard(thread)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the body (cleanup must run to its end)."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

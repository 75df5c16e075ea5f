"""Measure an outage: a stream of UDP probes from inside a namespace, and the longest run of
unanswered ones around a fault. Used by the BGP failover test and benchmark alike.

The prober runs as its own process inside the source namespace (one socket, one source port:
one flow, so one ECMP path), sends ``echo SEQ`` to a netexec UDP port every ``interval`` and
prints ``flowing`` at the first answer, then one JSON line at the end with the send times
(CLOCK_MONOTONIC, shared by every process) of the probes that were answered.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

PROBER = r"""
import json, select, socket, sys, time
ip, port, duration, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40404))  # one flow: one ECMP path
s.connect((ip, port))
s.setblocking(False)
sent, got = {}, {}
start = time.monotonic()
seq, next_send, told = 0, start, False
while time.monotonic() < start + duration:
    now = time.monotonic()
    if now >= next_send:
        try:
            s.send(f"echo {seq}".encode())
        except OSError:
            pass
        sent[seq] = now
        seq += 1
        next_send += interval
    ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
    if ready:
        try:
            n = int(s.recv(100).split()[-1])
        except (OSError, ValueError):
            continue
        got.setdefault(n, time.monotonic())
        if not told:
            print("flowing", flush=True)
            told = True
print(json.dumps({"sent": seq, "interval": interval, "answered": [sent[n] for n in sorted(got)]}), flush=True)
"""


def probe_stream(netns: str, ip: str, port: int, duration: float, interval: float = 0.002) -> subprocess.Popen:
    """Start the prober in ``netns``; read ``flowing`` from its stdout, then its report."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBER, ip, str(port), str(duration), str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report(stdout: str) -> dict:
    """The prober's final JSON line."""
    return json.loads(stdout.strip().splitlines()[-1])


def outage(data: dict, start: float, end: float) -> dict:
    """What the prober saw of a fault made between monotonic times ``start`` and ``end``: the
    longest run of unanswered probes that overlaps that window."""
    answered = data["answered"]
    pairs = list(itertools.pairwise(answered))
    during = [b - a for a, b in pairs if b >= start and a <= end]
    elsewhere = [b - a for a, b in pairs if not (b >= start and a <= end)]
    return {
        "sent": data["sent"],
        "answered": len(answered),
        "outage_ms": round((max(during) - data["interval"]) * 1000, 1) if during else None,
        "answered_after": len([t for t in answered if t > end]),
        "worst_gap_elsewhere_ms": round((max(elsewhere, default=0) - data["interval"]) * 1000, 1),
    }

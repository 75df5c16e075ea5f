"""Conntrack clean-up after a Services sync (a side effect only once the sync succeeded).

UDP has no connection to reset: a client keeps sending to a service, conntrack keeps
translating to the endpoint it chose first, and when that endpoint goes away the flow
black-holes until the entry times out. So when an endpoint (address . port) leaves the
``endpoints-udp`` map, its UDP entries toward service addresses are deleted, and the next
datagram is balanced afresh.
"""

from __future__ import annotations

import subprocess

from podnet.kernel import netns
from podnet.state import NftTable


def _pairs(table: NftTable | None, prefix: str) -> set[str]:
    """Elements of every set whose name starts with ``prefix`` (the endpoint maps are sharded)."""
    if table is None:
        return set()
    return {e for name, s in table.sets.items() if name.startswith(prefix) for e in s.elements}


def forget_removed_udp_endpoints(ns: str, want: NftTable, have: NftTable | None) -> list[tuple[str, str, str]]:
    """Delete UDP conntrack entries from service VIPs to endpoints no longer in the map."""
    before = {e.split(" : ", 1)[1] for e in _pairs(have, "endpoints-udp-")}
    after = {e.split(" : ", 1)[1] for e in _pairs(want, "endpoints-udp-")}
    gone = before - after
    if not gone:
        return []
    vips = {e.split(" . ")[0] for e in _pairs(have, "services") if " . udp . " in e}
    done = []
    for target in sorted(gone):
        ip, port = target.split(" . ")
        for vip in sorted(vips):
            subprocess.run(
                [
                    "nsenter",
                    f"--net={netns.path(ns)}",
                    "conntrack",
                    "-D",
                    "-p",
                    "udp",
                    "--orig-dst",
                    vip,
                    "--reply-src",
                    ip,
                    "--reply-port-src",
                    port,
                ],
                capture_output=True,
                text=True,
            )
            done.append((vip, ip, port))
    return done

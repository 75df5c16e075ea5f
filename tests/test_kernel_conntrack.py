"""Conntrack clean-up on the real kernel: exactly the UDP entries from service addresses to
removed endpoints go, over one netlink socket, and nothing else in the table."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from podnet.kernel import conntrack, netns
from tests.conftest import unique_name

pytestmark = pytest.mark.root

CLIENT = "10.244.0.5"


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"podnet_{unique_name('ct')}_node"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def add(ns: str, proto: str, vip: str, sport: int, endpoint: str, port: int) -> None:
    """A flow of the client to ``vip``, DNATed to ``endpoint``:``port``."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "conntrack", "-I", "-p", proto, "-s", CLIENT, "-d", vip]
        + ["--sport", str(sport), "--dport", "53", "--reply-src", endpoint, "--reply-dst", CLIENT]
        + ["--reply-port-src", str(port), "--reply-port-dst", str(sport), "-t", "60"]
        + (["--state", "ESTABLISHED"] if proto == "tcp" else []),
        check=True,
        capture_output=True,
    )


def flows(ns: str) -> set[tuple[str, str, str]]:
    """(protocol, orig destination, reply source:port) of every entry in the namespace."""
    out = subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L"], capture_output=True, text=True, check=True)
    found = set()
    for line in out.stdout.splitlines():
        fields = line.split()
        kv = [f.split("=", 1) for f in fields if "=" in f]
        dst = [v for k, v in kv if k == "dst"]
        src = [v for k, v in kv if k == "src"]
        sport = [v for k, v in kv if k == "sport"]
        found.add((fields[0], dst[0], f"{src[1]}:{sport[1]}"))
    return found


def test_only_udp_entries_from_service_addresses_to_removed_endpoints_go(ns: str) -> None:
    add(ns, "udp", "10.96.0.20", 40000, "10.244.1.7", 5353)  # goes: service address, removed endpoint
    add(ns, "udp", "10.96.0.21", 40001, "10.244.1.7", 5353)  # goes: another service, same endpoint
    add(ns, "udp", "10.96.0.20", 40002, "10.244.1.8", 5353)  # stays: the endpoint stays
    add(ns, "udp", "10.96.0.20", 40003, "10.244.1.7", 6000)  # stays: the endpoint's other port
    add(ns, "udp", "10.96.0.99", 40004, "10.244.1.7", 5353)  # stays: not a service address
    add(ns, "tcp", "10.96.0.20", 40005, "10.244.1.7", 5353)  # stays: TCP resets its own
    gone = conntrack.forget(ns, {"10.96.0.20", "10.96.0.21"}, {("10.244.1.7", 5353)})
    assert sorted(e.orig_dst for e in gone) == ["10.96.0.20", "10.96.0.21"]
    assert flows(ns) == {
        ("udp", "10.96.0.20", "10.244.1.8:5353"),
        ("udp", "10.96.0.20", "10.244.1.7:6000"),
        ("udp", "10.96.0.99", "10.244.1.7:5353"),
        ("tcp", "10.96.0.20", "10.244.1.7:5353"),
    }
    assert conntrack.forget(ns, {"10.96.0.20"}, {("10.244.1.7", 5353)}) == []  # nothing left to do

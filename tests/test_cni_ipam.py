"""The agent's address store: one address per attachment, never one attachment per two addresses."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from podnet.cni.ipam import Exhausted, Ipam, pool_of


def pool(n: int) -> list[str]:
    return [f"10.9.0.{i}" for i in range(2, 2 + n)]


def test_pool_leaves_out_the_gateway() -> None:
    addresses = pool_of("10.244.0.0/29", "10.244.0.1")
    assert addresses == ["10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6"]


def test_same_attachment_gets_the_same_address_and_others_get_new_ones(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(10))
    a, new_a = ipam.allocate("net", "c1", "eth0", "/run/netns/x", "veth1")
    again, new_again = ipam.allocate("net", "c1", "eth0", "/run/netns/x", "veth1")
    b, _ = ipam.allocate("net", "c1", "eth1", "/run/netns/x", "veth2")  # same container, other interface
    c, _ = ipam.allocate("other", "c1", "eth0", "/run/netns/x", "veth3")  # same container, other network
    assert (new_a, new_again) == (True, False)
    assert again.ip == a.ip
    assert len({a.ip, b.ip, c.ip}) == 3


def test_round_robin_does_not_hand_a_released_address_out_at_once(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(4))
    first, _ = ipam.allocate("net", "c1", "eth0", "/ns", "v1")
    ipam.release(first.key)
    second, _ = ipam.allocate("net", "c2", "eth0", "/ns", "v2")
    assert second.ip != first.ip


def test_allocations_survive_a_restart(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(10))
    held = [ipam.allocate("net", f"c{i}", "eth0", "/ns", f"v{i}")[0] for i in range(3)]
    ipam.release(held[1].key)
    ipam.close()
    again = Ipam(tmp_path / "ipam.db", pool(10))
    assert {a.ip for a in again.all()} == {held[0].ip, held[2].ip}
    fresh, _ = again.allocate("net", "c9", "eth0", "/ns", "v9")
    assert fresh.ip not in {held[0].ip, held[2].ip}
    assert fresh.ip != held[1].ip  # round-robin position survived too


def test_exhausted_pool_raises_and_held_addresses_are_not_free(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(2))
    a, _ = ipam.allocate("net", "c1", "eth0", "/ns", "v1")
    ipam.allocate("net", "c2", "eth0", "/ns", "v2")
    with pytest.raises(Exhausted):
        ipam.allocate("net", "c3", "eth0", "/ns", "v3")
    ipam.release(a.key, hold=True)  # DEL: the old interface is not gone yet
    assert ipam.free() == 0
    with pytest.raises(Exhausted, match="being released"):
        ipam.allocate("net", "c3", "eth0", "/ns", "v3")
    ipam.unhold([a.ip])
    assert ipam.free() == 1
    assert ipam.allocate("net", "c3", "eth0", "/ns", "v3")[0].ip == a.ip


def test_release_of_unknown_attachment_is_a_no_op(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(2))
    assert ipam.release(("net", "nope", "eth0")) is None


def test_100_concurrent_allocations_are_unique_and_all_released(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam.db", pool(200))
    got: list[str] = []
    start = threading.Barrier(100)

    def one(i: int) -> None:
        start.wait()
        got.append(ipam.allocate("net", f"c{i}", "eth0", "/ns", f"v{i}")[0].ip)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 100 and len(set(got)) == 100
    for i in range(100):
        assert ipam.release(("net", f"c{i}", "eth0")) is not None
    assert ipam.all() == [] and ipam.free() == 200
    ipam.close()
    assert Ipam(tmp_path / "ipam.db", pool(200)).all() == []

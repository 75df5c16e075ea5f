"""The record of a written table: whole, completed after a change, and refused when it does
not stand for the kernel's table (another generation or namespace, set aside, malformed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podnet.kernel import nftcache
from podnet.state import NftChain, NftSet, NftTable

NS = "podnet_rec_node-1"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(nftcache, "CACHE_DIR", tmp_path)
    return tmp_path


def table(endpoints: set[str], extra_set: bool = False, extra_chain: bool = False) -> NftTable:
    t = NftTable("ip", "podnet")
    t.chains["prerouting"] = NftChain("prerouting", ("nat", "prerouting", -100, "accept"), (), ("24a4d7e8",))
    t.chains["svc-shop/web/tcp/80"] = NftChain("svc-shop/web/tcp/80", None, (), ("e264f783",))
    if extra_chain:
        t.chains["svc-shop/new/tcp/80"] = NftChain("svc-shop/new/tcp/80", None, (), ())
    t.sets["endpoints-tcp-1"] = NftSet("endpoints-tcp-1", "", "map", frozenset(endpoints))
    t.sets["services"] = NftSet("services", "", "map", frozenset({"10.96.0.11 . tcp . 80 : goto svc-shop/web/tcp/80"}))
    t.sets["aff-shop/web/tcp/80/10.244.0.2"] = NftSet("aff-shop/web/tcp/80/10.244.0.2", "", "set", frozenset(), True)
    if extra_set:
        t.sets["hairpin"] = NftSet("hairpin", "", "set", frozenset({"10.244.0.2 . 10.244.0.2"}))
    return t


def test_a_record_stands_for_exactly_its_generation_of_its_namespace() -> None:
    t = table({"4096 : 10.244.0.2 . 80", "4097 : 10.244.1.2 . 80"})
    assert nftcache.remember(NS, t, (7, 41))
    assert nftcache.recall(NS, "ip", "podnet", (7, 41)) == t
    assert nftcache.recall(NS, "ip", "podnet", (7, 42)) is None  # anything committed since
    assert nftcache.recall(NS, "ip", "podnet", (8, 41)) is None  # another namespace of that name
    assert nftcache.recall(NS, "ip", "podnet", None) is None  # a kernel without cookies


def test_a_change_is_completed_into_the_record(cache_dir: Path) -> None:
    old = table({"4096 : 10.244.0.2 . 80", "4097 : 10.244.1.2 . 80"}, extra_set=True)
    nftcache.remember(NS, old, (7, 41))
    new = table({"4096 : 10.244.0.9 . 80", "4097 : 10.244.1.2 . 80"}, extra_chain=True)
    nftcache.invalidate(NS, "ip", "podnet")
    assert nftcache.recall(NS, "ip", "podnet", (7, 41)) is None  # set aside while the write runs
    assert nftcache.remember(NS, new, (7, 43), ({"endpoints-tcp-1", "hairpin"}, True), since=(7, 41))
    assert nftcache.recall(NS, "ip", "podnet", (7, 43)) == new
    written = sorted(p.name for p in (cache_dir / f"{NS}@ip@podnet").iterdir())
    assert written == sorted(["base", "chains", "head", nftcache._own_file("endpoints-tcp-1")])


def test_a_record_not_of_ours_is_no_record(cache_dir: Path) -> None:
    nftcache.remember(NS, table(set()), (7, 41))
    (cache_dir / f"{NS}@ip@podnet" / "head").write_text('{"cookie": 7, "generation": 41, "sets": 3}')
    assert nftcache.recall(NS, "ip", "podnet", (7, 41)) is None


def test_forgetting_a_cluster_removes_its_records_only() -> None:
    nftcache.remember(NS, table(set()), (7, 41))
    nftcache.remember("podnet_other_node-1", table(set()), (9, 2))
    nftcache.forget_prefixed("podnet_rec_")
    assert nftcache.list_prefixed("podnet_") == ["podnet_other_node-1@ip@podnet"]


def test_parts_are_written_over_the_record_of_the_generation_they_follow() -> None:
    """Someone recorded an older listing in between (``podnet trace`` runs without the
    cluster's lock): the parts do not belong on top of it, the whole table is written."""
    t1 = table({"4096 : 10.244.0.2 . 80"}, extra_set=True)
    nftcache.remember(NS, t1, (7, 41))
    older = table({"4096 : 10.244.0.7 . 80"}, extra_set=True)
    nftcache.remember(NS, older, (7, 40))  # the late writer
    nftcache.invalidate(NS, "ip", "podnet")
    t2 = table({"4096 : 10.244.0.2 . 80"})  # hairpin removed; the endpoints as in t1
    assert nftcache.remember(NS, t2, (7, 42), ({"hairpin"}, False), since=(7, 41))
    assert nftcache.recall(NS, "ip", "podnet", (7, 42)) == t2


def test_a_listing_that_fails_is_an_error_not_an_absent_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from podnet.errors import KernelError
    from podnet.kernel import nft

    def failing(ns: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 1, "", "Error: Could not process rule: Cannot allocate memory")

    monkeypatch.setattr(nft, "_nft", failing)
    with pytest.raises(KernelError, match="could not list table ip podnet"):
        nft.read("podnet_rec_no-such-namespace")

"""The netlink writer on the real kernel: it writes what nft would, and fails as one transaction."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from podnet.errors import KernelError
from podnet.kernel import netns, nft, nftcache, nftnl
from podnet.plan import plan
from podnet.spec import load_text
from podnet.state import NftRule
from tests.conftest import REPO

pytestmark = pytest.mark.root


@pytest.fixture
def scratch() -> Iterator[list[str]]:
    """Two empty namespaces of this test only."""
    names = [f"podnet-nltest-{os.getpid()}-{i}" for i in range(2)]
    for name in names:
        netns.create(name)
    try:
        yield names
    finally:
        for name in names:
            netns.delete(name)
            nftcache.forget_namespace(name)
        assert not nftcache.list_prefixed(f"podnet-nltest-{os.getpid()}-")


def listing(ns: str) -> list[str]:
    """``nft -j list table ip podnet`` without handles, one sorted line per object."""
    proc = subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "nft", "-j", "list", "table", "ip", "podnet"],
        capture_output=True,
        text=True,
        check=True,
    )

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    items = json.loads(proc.stdout)["nftables"]
    return sorted(json.dumps(strip(i), sort_keys=True) for i in items if "metainfo" not in i)


def services_tables() -> dict:
    spec = load_text((REPO / "examples" / "services.yaml").read_text(), "services.yaml")
    return {name: ns.nft for name, ns in plan(spec).state.namespaces.items() if ns.nft is not None}


def test_netlink_writes_exactly_what_nft_writes(scratch: list[str]) -> None:
    """Every Service rule kind (ClusterIP, NodePort Cluster and Local, affinity, no endpoints)
    and every element kind, written over netlink, lists the same as the nft source loaded by nft."""
    by_nft, by_netlink = scratch
    for name, table in services_tables().items():
        sync = nft.plan_sync(table, None)
        assert sync.batch is not None, name  # the netlink path is taken
        proc = subprocess.run(
            ["nsenter", f"--net={netns.path(by_nft)}", "nft", "-f", "-"],
            input=nft.script(table, None),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        nft.load(by_netlink, table, None)
        assert listing(by_netlink) == listing(by_nft), name
        assert nft.read(by_netlink) == table
        for ns in scratch:
            nft.delete(ns, table)


def test_a_refused_batch_changes_nothing_and_says_what_failed(scratch: list[str]) -> None:
    ns = scratch[0]
    table = services_tables()["podnet_svc_node-1"]
    nft.load(ns, table, None)
    before = listing(ns)
    batch = nftnl.Batch("ip", "podnet")
    codec = nftnl.ElementCodec.of(table.sets["services"].decl)
    assert codec is not None
    batch.elements("add", "services", codec, ["10.96.99.99 . tcp . 80 : goto reject-connection"])
    # A rule looking up a map that does not exist: the kernel refuses the whole batch.
    batch.add_rule("reject-connection", (("lookup", "no-such-map", 1, None),), NftRule("x").note)
    with pytest.raises(KernelError, match="add rule to reject-connection: No such file or directory"):
        batch.send(ns)
    assert listing(ns) == before


def test_a_large_batch_is_one_message_the_kernel_accepts(scratch: list[str]) -> None:
    """Tens of thousands of elements: split into attributes that fit, sent as one batch."""
    ns = scratch[0]
    table = services_tables()["podnet_svc_node-1"]
    nft.load(ns, table, None)
    codec = nftnl.ElementCodec.of("type ipv4_addr . ipv4_addr")
    assert codec is not None
    elements = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256} . 10.0.0.1" for i in range(30_000)]
    batch = nftnl.Batch("ip", "podnet")
    batch.elements("add", "hairpin", codec, elements)
    assert len(batch.messages) > 1
    batch.send(ns)
    observed = nft.read(ns)
    assert observed is not None and set(elements) <= observed.sets["hairpin"].elements


def test_services_added_and_removed_incrementally_end_as_a_fresh_load(scratch: list[str]) -> None:
    """Adding every Service over a table without them, and removing them again, leaves what a
    fresh load of the same table leaves: chains, rules and elements, nothing more."""
    incremental, fresh = scratch
    text = (REPO / "examples" / "services.yaml").read_text()
    bare_text = "---\n".join(doc for doc in text.split("---\n") if "kind: Service" not in doc)
    node = "podnet_svc_node-1"
    full = services_tables()[node]
    bare = plan(load_text(bare_text, "services.yaml")).state.namespaces[node].nft
    assert bare is not None
    nft.load(incremental, bare, None)
    nft.load(incremental, full, nft.observe(incremental))
    nft.load(fresh, full, None)
    assert listing(incremental) == listing(fresh)
    nft.load(incremental, bare, nft.observe(incremental))
    nft.delete(fresh, full)
    nft.load(fresh, bare, None)
    assert listing(incremental) == listing(fresh)


def test_observe_after_podnet_wrote_the_table_does_not_list_it(
    scratch: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = scratch[0]
    table = services_tables()["podnet_svc_node-1"]
    assert nft.observe(ns) is None  # as up does: observe, then write the difference
    nft.load(ns, table, None)

    def no_nft(*args: object, **kwargs: object) -> None:
        raise AssertionError("nft ran: the table was listed")

    monkeypatch.setattr(nft, "_nft", no_nft)
    assert nft.observe(ns) == table


def test_any_other_commit_makes_observe_list_the_kernel(scratch: list[str]) -> None:
    """A rule added by hand (another nf_tables transaction) is seen, as drift."""
    ns = scratch[0]
    table = services_tables()["podnet_svc_node-1"]
    assert nft.observe(ns) is None
    nft.load(ns, table, None)
    assert nftcache.list_prefixed(ns), "the write was recorded"
    add_rule_by_hand(ns)
    observed = nft.observe(ns)
    assert observed is not None and observed != table
    assert observed.chains["services"].ids[-1] == "?"  # a rule podnet did not write


def test_a_namespace_of_the_same_name_is_not_taken_for_the_old_one(scratch: list[str]) -> None:
    """The record names the namespace by its cookie: a new namespace under the old name, with
    the same number of transactions committed, is listed, not remembered."""
    ns = scratch[0]
    table = services_tables()["podnet_svc_node-1"]
    assert nft.observe(ns) is None
    nft.load(ns, table, None)
    assert nftcache.list_prefixed(ns), "the write was recorded"
    generation = nftnl.generation(ns)
    netns.delete(ns)
    netns.create(ns)
    other = plan(load_text((REPO / "examples" / "quickstart.yaml").read_text(), "q.yaml")).state
    small = next(n.nft for n in other.namespaces.values() if n.nft is not None)
    proc = subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "nft", "-f", "-"], input=nft.script(small, None), text=True
    )
    assert proc.returncode == 0
    while (current := nftnl.generation(ns)) is not None and generation is not None and current[1] < generation[1]:
        subprocess.run(["nsenter", f"--net={netns.path(ns)}", "nft", "add", "table", "ip", "filler" + str(current[1])])
    renewed = nftnl.generation(ns)
    assert generation is not None and renewed is not None
    assert renewed[1] == generation[1] and renewed[0] != generation[0]
    assert nft.observe(ns) == small


def add_rule_by_hand(ns: str) -> None:
    subprocess.run(
        ["nsenter", f"--net={netns.path(ns)}", "nft", "add", "rule", "ip", "podnet", "services", "accept"], check=True
    )


def test_a_commit_between_observe_and_write_is_not_taken_into_the_record(scratch: list[str]) -> None:
    """The kernel changes after podnet read it and before podnet writes the difference: the
    write does not know of that change, so its record must not stand for the kernel."""
    ns = scratch[0]
    text = (REPO / "examples" / "services.yaml").read_text()
    table = services_tables()["podnet_svc_node-1"]
    nft.load(ns, table, None)
    have = nft.observe(ns)
    add_rule_by_hand(ns)
    changed = plan(load_text(text.replace("targetPort: 8080}]", "targetPort: 9090}]", 1), "s.yaml"))
    want = changed.state.namespaces["podnet_svc_node-1"].nft
    assert want is not None and want != table
    nft.load(ns, want, have)
    observed = nft.observe(ns)
    assert observed is not None and observed.chains["services"].ids[-1] == "?"


def changed_tables() -> tuple:
    """node-1's table, and the same after loner's endpoint moved to another target port."""
    text = (REPO / "examples" / "services.yaml").read_text()
    moved = plan(load_text(text.replace("targetPort: 8080}]", "targetPort: 9090}]", 1), "s.yaml"))
    return services_tables()["podnet_svc_node-1"], moved.state.namespaces["podnet_svc_node-1"].nft


def test_a_change_completes_the_record_which_then_equals_the_kernel(
    scratch: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = scratch[0]
    table, changed = changed_tables()
    assert nft.observe(ns) is None
    nft.load(ns, table, None)
    nft.load(ns, changed, nft.observe(ns))
    with monkeypatch.context() as m:
        m.setattr(nft, "_nft", lambda *a, **k: pytest.fail("nft ran: the table was listed"))
        assert nft.observe(ns) == changed
    assert nft.read(ns) == changed  # and that is what the kernel holds


def test_a_failed_write_leaves_no_record(scratch: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ns = scratch[0]
    table, changed = changed_tables()
    assert nft.observe(ns) is None
    nft.load(ns, table, None)
    have = nft.observe(ns)

    def refused(self: nftnl.Netfilter, batch: nftnl.Batch) -> None:
        raise KernelError("refused")

    with monkeypatch.context() as m:
        m.setattr(nftnl.Netfilter, "send", refused)
        with pytest.raises(KernelError):
            nft.load(ns, changed, have)
    listed: list[object] = []
    real = nft._nft
    monkeypatch.setattr(nft, "_nft", lambda *a, **k: listed.append(a) or real(*a, **k))
    assert nft.observe(ns) == table and listed  # read back from the kernel, which kept the old table


def test_a_table_written_into_a_new_namespace_is_recorded_without_observing_first(
    scratch: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was ever committed in a new namespace (its generation is still the first): the
    write starts from no table for certain, so the first up already leaves a record."""
    ns = scratch[1]
    generation = nftnl.generation(ns)
    assert generation is not None and generation[1] == nft.FRESH_GENERATION
    table = services_tables()["podnet_svc_node-1"]
    nft.load(ns, table, None)
    monkeypatch.setattr(nft, "_nft", lambda *a, **k: pytest.fail("nft ran: the table was listed"))
    assert nft.observe(ns) == table

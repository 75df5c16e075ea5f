"""The store on a real etcd cluster: three members in namespaces of their own, TLS, roles.

Each test that breaks the cluster (a member SIGKILLed, quorum lost, history compacted) gets a
cluster of its own; the others share one. The fixture builds the underlay (a bridge in a
switch namespace, one veth per member and one for a host), starts etcd through
``podnet.runtime.etcd``, and afterwards checks that no namespace, process or file of the
cluster is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from podnet import names
from podnet.kernel import netns
from podnet.kv import errors, model
from podnet.kv.config import Settings
from podnet.kv.etcd import EtcdStore
from podnet.kv.layout import Keys
from podnet.runtime import etcd as rt
from tests.conftest import leftovers, unique_name

pytestmark = pytest.mark.root
NODES = ("node-1", "node-2")
HOST = "host-1"  # a namespace on the underlay where an agent would run


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _build_underlay(cluster: str, members: int) -> tuple[list[rt.Member], list[str]]:
    """A switch namespace with a bridge, and one namespace per member (and the host) on it."""
    switch = names.switch_netns(cluster, "underlay")
    made = [switch]
    netns.create(switch)
    _ip("-n", switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", switch, "link", "set", "br0", "up")
    hosts = [(f"etcd-{i + 1}", f"172.31.0.{11 + i}") for i in range(members)] + [(HOST, "172.31.0.100")]
    for i, (host, ip) in enumerate(hosts):
        ns = names.node_netns(cluster, host)
        netns.create(ns)
        made.append(ns)
        port = f"sw{i}"
        _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    members_ = [rt.Member(host, names.node_netns(cluster, host), ip) for host, ip in hosts[:members]]
    return members_, made


@contextmanager
def etcd_cluster(members: int = 3) -> Iterator[rt.EtcdCluster]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    name = unique_name("e")
    made: list[str] = []
    directory = Path(os.environ["PODNET_STATE_DIR"]) / name / "etcd"
    c = rt.EtcdCluster(name, (), directory, NODES)
    try:
        member_list, made = _build_underlay(name, members)
        c = rt.EtcdCluster(name, tuple(member_list), directory, NODES)
        rt.start(c)
        yield c
    finally:
        rt.destroy(c)
        for ns in made:
            netns.delete(ns)
        directory.parent.rmdir()
        left = leftovers(name) + [f"etcd {pid} ({m})" for pid, m in rt.find(name).items()]
        assert left == [], f"etcd cluster {name} left things behind: {left}"


@pytest.fixture(scope="module")
def shared() -> Iterator[rt.EtcdCluster]:
    with etcd_cluster() as c:
        yield c


@pytest.fixture
def own() -> Iterator[rt.EtcdCluster]:
    with etcd_cluster() as c:
        yield c


def admin(c: rt.EtcdCluster) -> EtcdStore:
    return EtcdStore(rt.local_endpoints(c), rt.admin_tls(c))


def agent(c: rt.EtcdCluster, node: str) -> EtcdStore:
    return EtcdStore(rt.local_endpoints(c), rt.node_tls(c, node))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def _statuses(c: rt.EtcdCluster) -> list:
    async with admin(c) as store:
        return [await store.member_status(i) for i in range(len(c.members))]


async def _leader_index(c: rt.EtcdCluster, store: EtcdStore) -> int:
    """Which member leads, by the member ids their Status answers carry."""
    statuses = [await store.member_status(i) for i in range(len(c.members))]
    ids = [s.header.member_id for s in statuses]
    return ids.index(statuses[0].leader)


# --- the cluster ------------------------------------------------------------------------


def test_three_members_start_in_their_namespaces_and_agree_on_a_leader(shared: rt.EtcdCluster) -> None:
    statuses = run(_statuses(shared))
    assert len({s.header.member_id for s in statuses}) == 3
    assert len({s.leader for s in statuses}) == 1 and statuses[0].leader in {s.header.member_id for s in statuses}
    for m in shared.members:
        pid = rt.running_pid(shared, m)
        assert pid is not None
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns.path(m.netns)).st_ino
    for path in (shared.directory, rt.socket_dir(shared), rt.pki_dir(shared)):
        assert os.stat(path).st_mode & 0o777 == 0o700, path


def test_start_again_is_idempotent_and_keeps_the_members(shared: rt.EtcdCluster) -> None:
    before = {m.name: rt.running_pid(shared, m) for m in shared.members}
    certs = {p.name: p.read_bytes() for p in rt.pki_dir(shared).glob("*.crt")}
    rt.start(shared)
    assert {m.name: rt.running_pid(shared, m) for m in shared.members} == before
    assert {p.name: p.read_bytes() for p in rt.pki_dir(shared).glob("*.crt")} == certs


def _listeners(ns: str | None) -> list[str]:
    cmd = ["ss", "-Hltnp"] if ns is None else ["ip", "netns", "exec", ns, "ss", "-Hltnp"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()


def test_nothing_listens_outside_the_members_namespaces(shared: rt.EtcdCluster) -> None:
    root = _listeners(None)
    assert [line for line in root if '"etcd"' in line or ":2379 " in line or ":2380 " in line] == []
    for m in shared.members:
        local = sorted(line.split()[3] for line in _listeners(m.netns) if '"etcd"' in line)
        assert local == [f"{m.ip}:{rt.CLIENT_PORT}", f"{m.ip}:{rt.PEER_PORT}"], m.name


# --- reads, writes, transactions ---------------------------------------------------------


def test_put_if_absent_from_20_concurrent_clients_has_exactly_one_winner(shared: rt.EtcdCluster) -> None:
    key = Keys(shared.cluster).ip("node-1", "10.244.1.7")

    async def claim(i: int) -> model.Claim:
        async with admin(shared) as store:
            return await store.put_if_absent(key, f"default/pod-{i}".encode())

    async def race() -> list[model.Claim]:
        return await asyncio.gather(*(claim(i) for i in range(20)))

    claims = run(race())
    winners = [c for c in claims if c.won]
    assert len(winners) == 1
    assert {c.kv.value for c in claims} == {winners[0].kv.value}
    assert {c.kv.create_revision for c in claims} == {winners[0].kv.create_revision}


def test_watch_from_revision_sees_every_event_after_it(shared: rt.EtcdCluster) -> None:
    prefix = Keys(shared.cluster).kind("pods") + "watch/"

    async def scenario() -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        async with admin(shared) as store:
            written = []
            for i in range(30):
                key = f"{prefix}p{i % 7}"
                if i % 5 == 4:
                    rev = await store.delete(key)
                    written.append(("delete", key, rev))
                else:
                    rev = await store.put(key, f"v{i}".encode())
                    written.append(("put", key, rev))
            after = written[11][2]
            seen = []
            async for batch in store.watch(prefix, after + 1):
                seen += [(e.kind.value, e.kv.key, e.revision) for e in batch]
                if seen[-1][2] >= written[-1][2]:
                    break
            return [w for w in written if w[2] > after], seen

    expected, seen = run(scenario())
    assert seen == expected


def test_list_at_a_revision_is_the_snapshot_of_that_revision(shared: rt.EtcdCluster) -> None:
    prefix = Keys(shared.cluster).kind("services") + "snap/"

    async def scenario() -> tuple[model.Listing, model.Listing]:
        async with EtcdStore(rt.local_endpoints(shared), rt.admin_tls(shared), Settings(page_size=2)) as store:
            for i in range(5):
                rev = await store.put(f"{prefix}s{i}", b"1")
            await store.put(f"{prefix}s9", b"later")
            await store.delete(f"{prefix}s0")
            return await store.list(prefix, rev), await store.list(prefix)

    then, now = run(scenario())
    assert [kv.key.rsplit("/", 1)[1] for kv in then.items] == ["s0", "s1", "s2", "s3", "s4"]
    assert [kv.key.rsplit("/", 1)[1] for kv in now.items] == ["s1", "s2", "s3", "s4", "s9"]
    assert now.revision > then.revision


# --- faults -----------------------------------------------------------------------------


def test_a_killed_leader_loses_no_write_and_no_watched_event(own: rt.EtcdCluster) -> None:
    prefix = Keys(own.cluster).kind("endpoints") + "kill/"

    async def scenario() -> tuple[list[int], list[int], int]:
        async with admin(own) as watcher_store, admin(own) as writer:
            leader = await _leader_index(own, watcher_store)
            watcher_store.members.current = leader  # the watch rides on the member that dies
            start = (await writer.list(prefix)).revision + 1
            watch = watcher_store.watch(prefix, start)
            seen: list[int] = []

            async def consume() -> None:
                async for batch in watch:
                    seen.extend(int(e.kv.value) for e in batch)
                    if seen[-1] == 59:
                        return

            consumer = asyncio.create_task(consume())
            for i in range(60):
                if i == 20:
                    rt.kill_member(own, own.members[leader].name)
                await writer.put(f"{prefix}k{i % 4}", str(i).encode())
            await consumer
            return seen, list(range(60)), watch.streams_opened

    seen, written, streams = run(scenario())
    assert seen == written
    assert streams >= 2  # it did resume on another member


def test_quorum_lost_fails_puts_with_unreachable_and_they_succeed_once_it_returns(own: rt.EtcdCluster) -> None:
    key = Keys(own.cluster).config

    async def scenario() -> tuple[errors.Unreachable, int]:
        async with admin(own) as store:
            await store.put(key, b"before")
            for m in own.members[1:]:
                rt.kill_member(own, m.name)
            with pytest.raises(errors.Unreachable) as lost:
                await asyncio.wait_for(store.put(key, b"during"), timeout=30)
            await asyncio.get_running_loop().run_in_executor(None, _restart, own, [m.name for m in own.members[1:]])
            rev = await store.put(key, b"after")
            assert (await store.get(key)).value == b"after"
            return lost.value, rev

    lost, rev = run(scenario())
    assert set(lost.reasons) == {str(e) for e in rt.local_endpoints(own)}
    assert rev > 0


def _restart(c: rt.EtcdCluster, names_: list[str]) -> None:
    for name in names_:
        rt.start_member(c, name)


def test_compaction_past_a_watchers_revision_raises_compacted_once(own: rt.EtcdCluster) -> None:
    prefix = Keys(own.cluster).kind("policies") + "compact/"

    async def scenario() -> tuple[errors.Compacted, int, bool]:
        async with admin(own) as store:
            old = await store.put(f"{prefix}a", b"1")
            for i in range(5):
                last = await store.put(f"{prefix}b", str(i).encode())
            await store.compact(last)
            watch = store.watch(prefix, old + 1)
            iterator = aiter(watch)
            with pytest.raises(errors.Compacted) as compacted:
                await anext(iterator)
            with pytest.raises(StopAsyncIteration):
                await anext(iterator)
            with pytest.raises(errors.Compacted):
                await store.list(prefix, old)
            relisted = await store.list(prefix)
            return compacted.value, watch.streams_opened, relisted.revision >= last

    compacted, streams, relisted = run(scenario())
    assert compacted.compact_revision > compacted.revision
    assert streams == 1
    assert relisted


# --- leases -----------------------------------------------------------------------------


def test_a_lease_expires_after_its_ttl_without_keepalive_and_lives_with_it(shared: rt.EtcdCluster) -> None:
    prefix = Keys(shared.cluster).nodes + "lease-"

    async def scenario() -> None:
        async with admin(shared) as store:
            left_alone, kept_lease = await store.grant(2), await store.grant(2)
            start = await store.put(f"{prefix}alone", b"x", lease=left_alone.id)
            await store.put(f"{prefix}kept", b"x", lease=kept_lease.id)
            kept = store.keep_alive(kept_lease)
            async for batch in store.watch(prefix, start + 1):
                deleted = [e.kv.key for e in batch if e.kind is model.EventKind.DELETE]
                if deleted:
                    break
            assert deleted == [f"{prefix}alone"]
            assert await store.time_to_live(left_alone.id) is None
            # kept alive for longer than its TTL again: confirmations every TTL/3
            await kept.confirmed(kept.confirmations + 7)
            assert (await store.get(f"{prefix}kept")) is not None
            assert await store.time_to_live(kept_lease.id) > 0
            assert store.keeper.streams_opened == 1
            kept.stop()
            rev = (await store.list(prefix)).revision
            async for batch in store.watch(prefix, rev + 1):
                if any(e.kind is model.EventKind.DELETE for e in batch):
                    break
            assert await store.get(f"{prefix}kept") is None
            with pytest.raises(errors.LeaseExpired):
                await store.put(f"{prefix}late", b"x", lease=kept_lease.id)

    run(scenario())


# --- who may write what -----------------------------------------------------------------


def test_an_agent_writes_its_own_nodes_keys_and_no_other(shared: rt.EtcdCluster) -> None:
    keys = Keys(shared.cluster)

    async def scenario() -> None:
        async with agent(shared, "node-1") as one, agent(shared, "node-2") as two:
            lease = await one.grant(10)
            assert (await one.put_if_absent(keys.node("node-1"), b"node-1", lease=lease.id)).won
            await one.put(keys.ip("node-1", "10.244.1.2"), b"default/a")
            await one.put(keys.status("node-1") + "sync", b"ok")
            for key in (keys.node("node-2"), keys.podcidr("node-2"), keys.ip("node-2", "10.244.2.2"), keys.config):
                with pytest.raises(errors.PermissionDenied):
                    await one.put(key, b"stolen")
            with pytest.raises(errors.PermissionDenied):
                await one.put(keys.node("node-10"), b"prefix")
            assert (await one.get(keys.node("node-1"))).value == b"node-1"
            assert (await two.list(keys.nodes)).items[0].key == keys.node("node-1")  # everyone reads the nodes
            # pod CIDRs: each node writes only its own key, and a CIDR is taken at most once
            assert await claim_cidr(one, keys, "node-1", b"10.244.1.0/24")
            assert not await claim_cidr(two, keys, "node-2", b"10.244.1.0/24")
            assert await claim_cidr(two, keys, "node-2", b"10.244.2.0/24")
            await one.revoke(lease.id)

    run(scenario())


async def claim_cidr(store: EtcdStore, keys: Keys, node: str, cidr: bytes) -> bool:
    result = await store.txn(
        [model.absent(keys.podcidr(node)), model.no_value_under(keys.podcidrs, cidr)],
        [model.Put(keys.podcidr(node), cidr)],
    )
    return result.succeeded


def test_an_unknown_client_is_refused(shared: rt.EtcdCluster, tmp_path: Path) -> None:
    from podnet.kv import pki
    from podnet.kv.config import Tls

    ca = pki.Pair(rt.pki_dir(shared) / "ca.crt", rt.pki_dir(shared) / "ca.key")
    stranger = pki.ensure_leaf(tmp_path, "stranger", ca, pki.Identity("system:node:node-9", client=True))

    async def scenario() -> None:
        async with EtcdStore(
            rt.local_endpoints(shared), Tls(rt.pki_dir(shared) / "ca.crt", stranger.cert, stranger.key)
        ) as store:
            with pytest.raises(errors.PermissionDenied):
                await store.put(Keys(shared.cluster).node("node-9"), b"x")

    run(scenario())


AGENT_ON_UNDERLAY = """
import asyncio, json, sys
from pathlib import Path
from podnet.kv import errors
from podnet.kv.config import Tls, parse_endpoints
from podnet.kv.etcd import EtcdStore

async def main(urls, ca, cert, key, own, other):
    out = {}
    async with EtcdStore(parse_endpoints(urls), Tls(Path(ca), Path(cert), Path(key))) as store:
        out["own"] = await store.put(own, b"here") > 0
        try:
            await store.put(other, b"here")
            out["other"] = "written"
        except errors.PermissionDenied:
            out["other"] = "denied"
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"""


def test_an_agent_in_a_host_namespace_reaches_the_members_over_the_underlay(shared: rt.EtcdCluster) -> None:
    keys = Keys(shared.cluster)
    tls = rt.node_tls(shared, "node-2")
    host = names.node_netns(shared.cluster, HOST)
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            host,
            sys.executable,
            "-c",
            AGENT_ON_UNDERLAY,
            rt.urls(shared),
            str(tls.ca),
            str(tls.cert),
            str(tls.key),
            keys.status("node-2") + "x",
            keys.status("node-1") + "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"own": True, "other": "denied"}

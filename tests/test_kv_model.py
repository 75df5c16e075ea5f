"""The store's pure parts, without a server: keys, ranges, error mapping, endpoints, roles, certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from podnet.kv import access, config, errors, layout, model, pki


def test_prefix_end_is_the_first_key_after_the_prefix() -> None:
    assert model.prefix_end("/podnet/a/") == "/podnet/a0"
    assert model.prefix_end("a") == "b"
    end = model.prefix_end("/podnet/c/ipam/node-1/")
    assert end > "/podnet/c/ipam/node-1/10.0.0.1"
    assert not (end > "/podnet/c/ipam/node-10/10.0.0.1")


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        ("UNAVAILABLE", "etcdserver: no leader", errors.Kind.TRANSIENT),
        ("UNAVAILABLE", "etcdserver: leader changed", errors.Kind.TRANSIENT),
        ("UNAVAILABLE", "failed to connect to all addresses", errors.Kind.TRANSIENT),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", errors.Kind.TRANSIENT),
        ("UNKNOWN", "context deadline exceeded", errors.Kind.TRANSIENT),
        ("PERMISSION_DENIED", "etcdserver: permission denied", errors.Kind.DENIED),
        ("FAILED_PRECONDITION", "etcdserver: user name not found", errors.Kind.DENIED),
        ("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", errors.Kind.COMPACTED),
        ("NOT_FOUND", "etcdserver: requested lease not found", errors.Kind.LEASE_GONE),
        ("INVALID_ARGUMENT", "etcdserver: too many operations in txn request", errors.Kind.REFUSED),
        ("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision", errors.Kind.REFUSED),
    ],
)
def test_grpc_failures_map_to_podnets_kinds(code: str, details: str, kind: errors.Kind) -> None:
    assert errors.classify(code, details) is kind


def test_unreachable_names_every_endpoint_and_what_it_said() -> None:
    e = errors.Unreachable("put /podnet/c/config", {"unix:/a": "unavailable: no leader", "unix:/b": "refused"}, 5.04)
    assert (
        str(e)
        == "etcd unreachable: put /podnet/c/config failed for 5.0s (unix:/a: unavailable: no leader; unix:/b: refused)"
    )
    assert e.exit_code == 1


def test_endpoints_are_https_urls() -> None:
    assert config.parse_endpoints("https://10.0.0.1:2379, https://etcd-2:2379") == (
        config.Endpoint("ipv4:10.0.0.1:2379", "10.0.0.1"),
        config.Endpoint("dns:etcd-2:2379", "etcd-2"),
    )
    assert config.parse_endpoint("https://[fd00::1]:2379") == config.Endpoint("ipv6:[fd00::1]:2379", "fd00::1")
    for bad in ("http://10.0.0.1:2379", "https://10.0.0.1", "10.0.0.1:2379", "https://10.0.0.1:2379/v3"):
        with pytest.raises(ValueError, match="expected https://HOST:PORT"):
            config.parse_endpoint(bad)
    with pytest.raises(ValueError, match="no etcd endpoint"):
        config.parse_endpoints(" , ")


def _covers(grant: access.Grant, key: str) -> bool:
    return key.startswith(grant.key) if grant.prefix else key == grant.key


def test_an_agents_role_writes_only_its_own_nodes_keys() -> None:
    keys = layout.Keys("c")
    role = access.node_role("c", "node-1")
    writable = [g for g in role.grants if g.mode is not access.Mode.READ]
    own = [keys.node("node-1"), keys.podcidr("node-1"), keys.ip("node-1", "10.244.1.2"), keys.status("node-1") + "x"]
    others = [
        keys.node("node-10"),
        keys.podcidr("node-10"),
        keys.ip("node-10", "10.244.1.2"),
        keys.status("node-10") + "x",
    ]
    others += [keys.config, keys.object("pods", "default", "a"), keys.node("node-2"), "/podnet/c2/nodes/node-1"]
    assert all(any(_covers(g, k) for g in writable) for k in own)
    assert not any(_covers(g, k) for g in writable for k in others)
    assert all(g.key.endswith("/") for g in role.grants if g.prefix)  # node-1 never matches node-10
    reads = [g for g in role.grants if g.mode is access.Mode.READ]
    assert reads == [access.Grant("/podnet/c/", True, access.Mode.READ)]


def test_the_access_of_a_cluster_is_root_and_one_user_per_node() -> None:
    a = access.access("c", ("node-2", "node-1"))
    assert [u.name for u in a.users] == ["root", "system:node:node-1", "system:node:node-2"]
    assert [r.name for r in a.roles] == ["system:node:node-1", "system:node:node-2"]
    assert all(u.roles == (u.name,) for u in a.users)


def test_keys_live_under_one_prefix_per_cluster() -> None:
    keys = layout.Keys("demo")
    made = [keys.config, keys.namespace("shop"), keys.object("services", "shop", "web"), keys.node("n1")]
    made += [keys.podcidr("n1"), keys.ip("n1", "10.244.1.2"), keys.status("n1"), *keys.anchors()]
    assert all(k.startswith("/podnet/demo/") for k in made)
    assert keys.object("pods", "shop", "web") == "/podnet/demo/pods/shop/web"
    with pytest.raises(ValueError, match="unknown kind"):
        keys.kind("secrets")


def test_a_value_compare_over_a_range_names_the_range() -> None:
    c = model.no_value_under("/podnet/c/podcidrs/", b"10.244.1.0/24")
    assert (c.key, c.range_end, c.target, c.op) == (
        "/podnet/c/podcidrs/",
        "/podnet/c/podcidrs0",
        model.Target.VALUE,
        model.Op.NOT_EQUAL,
    )
    assert model.absent("k") == model.Compare("k", model.Target.CREATE, model.Op.EQUAL, 0)


def test_certificates_are_made_once_and_say_what_they_are_for(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca", "test CA")
    ident = pki.Identity("etcd-1", ips=("172.31.0.11",), dns=("etcd-1",), server=True)
    leaf = pki.ensure_leaf(tmp_path, "etcd-1-server", ca, ident)
    first = (ca.cert.read_bytes(), leaf.cert.read_bytes(), leaf.key.read_bytes())
    assert pki.ensure_ca(tmp_path, "ca", "test CA") == ca
    assert pki.ensure_leaf(tmp_path, "etcd-1-server", ca, ident) == leaf
    assert (ca.cert.read_bytes(), leaf.cert.read_bytes(), leaf.key.read_bytes()) == first
    assert os.stat(leaf.key).st_mode & 0o777 == 0o600 and os.stat(ca.key).st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    assert pki.common_name(leaf.cert) == "etcd-1"
    assert list(pki.subject_alt_ips(leaf.cert)) == ["172.31.0.11"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=800)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("172.31.0.11")]


def test_a_certificate_that_no_longer_fits_is_issued_again(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, "ca", "test CA")
    leaf = pki.ensure_leaf(tmp_path, "m", ca, pki.Identity("m", ips=("172.31.0.11",), server=True))
    old = leaf.cert.read_bytes()
    pki.ensure_leaf(tmp_path, "m", ca, pki.Identity("m", ips=("172.31.0.12",), server=True))
    assert leaf.cert.read_bytes() != old and list(pki.subject_alt_ips(leaf.cert)) == ["172.31.0.12"]
    other_ca = pki.ensure_ca(tmp_path, "other", "another CA")
    again = leaf.cert.read_bytes()
    pki.ensure_leaf(tmp_path, "m", other_ca, pki.Identity("m", ips=("172.31.0.12",), server=True))
    assert leaf.cert.read_bytes() != again  # signed by a different CA now
    leaf.key.write_bytes(b"garbage")
    pki.ensure_leaf(tmp_path, "m", other_ca, pki.Identity("m", ips=("172.31.0.12",), server=True))
    assert pki.common_name(leaf.cert) == "m" and leaf.key.read_bytes() != b"garbage"


LOADED = "import sys; {imports}; print(sorted(m for m in ('grpc', 'aetcd', 'cryptography', 'podnet.kv') if m in sys.modules))"


@pytest.mark.parametrize(
    ("imports", "loaded"),
    [
        ("import podnet.cli", []),
        (
            "import podnet.kv.store, podnet.kv.model, podnet.kv.layout, podnet.kv.access, podnet.kv.config",
            ["podnet.kv"],
        ),
        ("import podnet.kv.pki", ["cryptography", "podnet.kv"]),
        ("import podnet.kv.etcd", ["aetcd", "grpc", "podnet.kv"]),
    ],
)
def test_grpc_and_cryptography_load_only_with_the_modules_that_need_them(imports: str, loaded: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOADED.format(imports=imports)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == repr(loaded)

"""The cluster DNS zone (podnet.plan.dns) and the answers compiled from it (no root needed)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from podnet.plan.dns import (
    DnsEndpoint,
    DnsPod,
    DnsPort,
    DnsService,
    digest,
    dns_vip,
    parse_upstream,
    resolv_conf,
    zone,
)
from podnet.runtime.dns import FORWARD, Zone

WEB = DnsService(
    "shop",
    "web",
    "10.96.0.20",
    (DnsPort("http", "TCP", 80), DnsPort(None, "TCP", 8080), DnsPort("dns", "UDP", 53)),
    (DnsEndpoint("web-1", "10.244.0.2"), DnsEndpoint("web-2", "10.244.1.2")),
)
DB = DnsService(
    "shop",
    "db",
    None,
    (DnsPort("pg", "TCP", 5432), DnsPort(None, "TCP", 9187)),
    (DnsEndpoint("db-1", "10.244.1.3"), DnsEndpoint("db-0", "10.244.0.3")),
)
PODS = [
    DnsPod("shop", "web-1", "10.244.0.2"),
    DnsPod("shop", "web-2", "10.244.1.2"),
    DnsPod("shop", "db-0", "10.244.0.3"),
    DnsPod("shop", "db-1", "10.244.1.3"),
    DnsPod("default", "client", "10.244.1.4"),
]


def records(z: dict, kind: str | None = None, name: str | None = None) -> list:
    return [
        r["data"] for r in z["records"] if (kind is None or r["type"] == kind) and (name is None or r["name"] == name)
    ]


@pytest.fixture
def z() -> dict:
    return zone("cluster.local", [WEB, DB], PODS, [])


def test_clusterip_service_a_record(z: dict) -> None:
    assert records(z, "A", "web.shop.svc.cluster.local.") == ["10.96.0.20"]
    # endpoints of a ClusterIP service get no names of their own
    assert records(z, name="web-1.web.shop.svc.cluster.local.") == []


def test_headless_service_has_every_endpoint_and_a_name_per_endpoint(z: dict) -> None:
    assert records(z, "A", "db.shop.svc.cluster.local.") == ["10.244.0.3", "10.244.1.3"]
    assert records(z, "A", "db-0.db.shop.svc.cluster.local.") == ["10.244.0.3"]
    assert records(z, "A", "db-1.db.shop.svc.cluster.local.") == ["10.244.1.3"]


def test_headless_service_without_ready_endpoints_has_no_address(z: dict) -> None:
    empty = zone("cluster.local", [DnsService("shop", "idle", None, (DnsPort("x", "TCP", 1),), ())], [], [])
    assert empty["records"] == []


def test_srv_only_for_named_ports_target_is_the_service(z: dict) -> None:
    assert records(z, "SRV", "_http._tcp.web.shop.svc.cluster.local.") == [
        {"priority": 0, "weight": 100, "port": 80, "target": "web.shop.svc.cluster.local."}
    ]
    assert records(z, "SRV", "_dns._udp.web.shop.svc.cluster.local.") == [
        {"priority": 0, "weight": 100, "port": 53, "target": "web.shop.svc.cluster.local."}
    ]
    srv_names = {r["name"] for r in z["records"] if r["type"] == "SRV"}
    assert not any("8080" in n or "9187" in n or "__" in n or "_none" in n for n in srv_names)
    assert len(srv_names) == 3  # http, dns of web; pg of db


def test_headless_srv_targets_each_endpoint_hostname(z: dict) -> None:
    assert records(z, "SRV", "_pg._tcp.db.shop.svc.cluster.local.") == [
        {"priority": 0, "weight": 50, "port": 5432, "target": "db-0.db.shop.svc.cluster.local."},
        {"priority": 0, "weight": 50, "port": 5432, "target": "db-1.db.shop.svc.cluster.local."},
    ]


def test_pod_a_records(z: dict) -> None:
    assert records(z, "A", "10-244-0-2.shop.pod.cluster.local.") == ["10.244.0.2"]
    assert records(z, "A", "10-244-1-4.default.pod.cluster.local.") == ["10.244.1.4"]


def test_ptr_for_service_clusterip_and_for_every_pod(z: dict) -> None:
    assert records(z, "PTR", "20.0.96.10.in-addr.arpa.") == ["web.shop.svc.cluster.local."]
    assert records(z, "PTR", "4.1.244.10.in-addr.arpa.") == ["10-244-1-4.default.pod.cluster.local."]
    assert records(z, "PTR", "3.0.244.10.in-addr.arpa.") == ["10-244-0-3.shop.pod.cluster.local."]
    assert len(records(z, "PTR")) == 1 + len(PODS)  # one ClusterIP (db is headless) + every pod


def test_names_lowercase_absolute_and_zone_metadata() -> None:
    z = zone("Cluster.Local", [DnsService("Shop", "Web", "10.96.0.20", (DnsPort("HTTP", "TCP", 80),), ())], [], [])
    assert z["domain"] == "cluster.local."
    names = [r["name"] for r in z["records"]] + [r["data"] for r in z["records"] if r["type"] == "PTR"]
    assert all(n == n.lower() and n.endswith(".") and not n.endswith("..") for n in names)
    assert "_http._tcp.web.shop.svc.cluster.local." in names
    assert z["ttl"] == 5
    assert z["soa"] == {"mname": "ns.dns.cluster.local.", "rname": "hostmaster.cluster.local."}


def test_zone_is_deterministic_json_and_deduplicated(z: dict) -> None:
    shuffled = zone("cluster.local", [DB, WEB], list(reversed(PODS)) + PODS[:1], [])
    assert json.dumps(shuffled, sort_keys=True) == json.dumps(z, sort_keys=True)
    assert digest(shuffled) == digest(z)
    assert json.loads(json.dumps(z)) == z
    assert len({json.dumps(r, sort_keys=True) for r in z["records"]}) == len(z["records"])
    other = zone("cluster.local", [WEB], PODS, [])
    assert digest(other) != digest(z)


def test_upstreams_are_normalised_and_checked() -> None:
    z = zone("cluster.local", [], [], ["10.250.0.2", "10.250.0.3:5353", "10.250.0.4:53"])
    assert z["upstreams"] == ["10.250.0.2", "10.250.0.3:5353", "10.250.0.4"]
    assert parse_upstream("10.250.0.3:5353") == ("10.250.0.3", 5353)
    with pytest.raises(ValueError):
        zone("cluster.local", [], [], ["dns.google"])


def test_resolv_conf_is_a_kubernetes_pods() -> None:
    assert resolv_conf("shop", "cluster.local", "10.96.0.10") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert resolv_conf("default", "cluster.local.", "10.96.0.10").startswith("search default.svc.cluster.local ")


def test_dns_vip_is_the_tenth_address() -> None:
    assert dns_vip(ipaddress.IPv4Network("10.96.0.0/12")) == "10.96.0.10"
    assert dns_vip(ipaddress.IPv4Network("172.20.0.0/16")) == "172.20.0.10"
    with pytest.raises(ValueError):
        dns_vip(ipaddress.IPv4Network("10.0.0.0/29"))


# --- the answers the daemon compiles from a zone (podnet.runtime.dns.Zone) ------------


def ask(compiled: Zone, name: str, kind: str = "A", *, edns: bool = False, udp: bool = True) -> DNSRecord:
    query = DNSRecord.question(name, kind)
    if edns:
        query.add_ar(EDNS0(udp_len=1232))
    reply = compiled.answer(bytes(query.pack()), udp)
    assert reply is not None and reply is not FORWARD
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == query.header.id
    assert [str(q.qname) for q in parsed.questions] == [name if name.endswith(".") else name + "."]
    return parsed


def answers(reply: DNSRecord) -> list[str]:
    return sorted(f"{QTYPE[rr.rtype]} {rr.rdata}" for rr in reply.rr)


def test_answers_every_record_kind_authoritatively(z: dict) -> None:
    c = Zone(z)
    r = ask(c, "web.shop.svc.cluster.local")
    assert r.header.aa and not r.header.ra and r.header.rcode == RCODE.NOERROR
    assert answers(r) == ["A 10.96.0.20"]
    assert answers(ask(c, "db.shop.svc.cluster.local")) == ["A 10.244.0.3", "A 10.244.1.3"]
    assert answers(ask(c, "db-1.db.shop.svc.cluster.local")) == ["A 10.244.1.3"]
    assert answers(ask(c, "10-244-1-4.default.pod.cluster.local")) == ["A 10.244.1.4"]
    srv = ask(c, "_pg._tcp.db.shop.svc.cluster.local", "SRV")
    assert answers(srv) == [
        "SRV 0 50 5432 db-0.db.shop.svc.cluster.local.",
        "SRV 0 50 5432 db-1.db.shop.svc.cluster.local.",
    ]
    assert sorted(f"{rr.rname} {rr.rdata}" for rr in srv.ar) == [
        "db-0.db.shop.svc.cluster.local. 10.244.0.3",
        "db-1.db.shop.svc.cluster.local. 10.244.1.3",
    ]
    assert answers(ask(c, "20.0.96.10.in-addr.arpa", "PTR")) == ["PTR web.shop.svc.cluster.local."]
    assert answers(ask(c, "2.0.244.10.in-addr.arpa", "PTR")) == ["PTR 10-244-0-2.shop.pod.cluster.local."]
    soa = ask(c, "cluster.local", "SOA")
    assert [QTYPE[rr.rtype] for rr in soa.rr] == ["SOA"]


def test_names_are_matched_case_insensitively_and_echoed_as_asked(z: dict) -> None:
    r = ask(Zone(z), "WEB.Shop.svc.CLUSTER.local")
    assert answers(r) == ["A 10.96.0.20"]
    assert str(r.rr[0].rname) == "WEB.Shop.svc.CLUSTER.local."


def test_nodata_nxdomain_and_refused(z: dict) -> None:
    c = Zone(z)
    for name, kind in [("web.shop.svc.cluster.local", "AAAA"), ("shop.svc.cluster.local", "A"), ("cluster.local", "A")]:
        r = ask(c, name, kind)
        assert (r.header.rcode, r.header.aa, r.rr) == (RCODE.NOERROR, 1, []), name
        assert [QTYPE[rr.rtype] for rr in r.auth] == ["SOA"]
    for name, kind in [("nope.shop.svc.cluster.local", "A"), ("9.9.9.9.in-addr.arpa", "PTR")]:
        r = ask(c, name, kind)
        assert (r.header.rcode, r.header.aa) == (RCODE.NXDOMAIN, 1), name
        assert [QTYPE[rr.rtype] for rr in r.auth] == ["SOA"]
    r = ask(c, "example.com")
    assert (r.header.rcode, r.header.aa, r.header.ra) == (RCODE.REFUSED, 0, 0)
    assert ask(c, "cluster.local", "AXFR", udp=False).header.rcode == RCODE.REFUSED  # no zone transfers


def test_outside_names_are_forwarded_only_with_upstreams(z: dict) -> None:
    forwarding = Zone(zone("cluster.local", [WEB], [], ["10.250.0.2"]))
    assert forwarding.answer(bytes(DNSRecord.question("example.com").pack())) is FORWARD
    inside = ask(forwarding, "web.shop.svc.cluster.local")
    assert inside.header.ra and inside.header.aa
    assert ask(forwarding, "nope.cluster.local").header.rcode == RCODE.NXDOMAIN


def test_edns_and_truncation() -> None:
    many = DnsService("shop", "big", None, (), tuple(DnsEndpoint(f"p{i}", f"10.244.2.{i}") for i in range(1, 60)))
    c = Zone(zone("cluster.local", [many], [], []))
    plain = ask(c, "big.shop.svc.cluster.local")  # 59 answers do not fit 512 bytes
    assert plain.header.tc and plain.rr == []
    big = ask(c, "big.shop.svc.cluster.local", edns=True)
    assert not big.header.tc and len(big.rr) == 59
    assert [QTYPE[rr.rtype] for rr in big.ar] == ["OPT"]
    over_tcp = ask(c, "big.shop.svc.cluster.local", udp=False)
    assert len(over_tcp.rr) == 59


def test_malformed_and_non_queries() -> None:
    c = Zone(zone("cluster.local", [WEB], [], []))
    assert c.answer(b"\x00\x01") is None
    query = bytes(DNSRecord.question("web.shop.svc.cluster.local").pack())
    response = query[:2] + bytes([query[2] | 0x80]) + query[3:]
    assert c.answer(response) is None  # never answer an answer
    formerr = DNSRecord.parse(c.answer(query[:20]))  # type: ignore[arg-type]
    assert formerr.header.rcode == RCODE.FORMERR
    notify = query[:2] + bytes([query[2] | 0x20]) + query[3:]  # opcode 4
    assert DNSRecord.parse(c.answer(notify)).header.rcode == RCODE.NOTIMP  # type: ignore[arg-type]

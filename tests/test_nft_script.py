"""The nft transaction podnet writes: everything at first, then only the difference."""

from __future__ import annotations

from podnet.kernel.nft import parse, plan_sync, script
from podnet.plan import plan
from podnet.spec import load_text
from tests.conftest import REPO

NODE1 = "podnet_svc_node-1"


def table(text: str):
    return plan(load_text(text, "services.yaml")).state.namespaces[NODE1].nft


def base() -> str:
    return (REPO / "examples" / "services.yaml").read_text()


def test_first_sync_creates_every_chain_and_element() -> None:
    t = table(base())
    text = script(t, None)
    assert text.startswith("add table ip podnet\n")
    for name, chain in t.chains.items():
        assert f"add chain ip podnet {name}" in text
        assert text.count(f"add rule ip podnet {name} ") == len(chain.rules)
    assert "add element ip podnet services { " in text
    assert "goto reject-connection" in text  # the service without endpoints


def test_unchanged_table_writes_nothing() -> None:
    t = table(base())
    assert script(t, table(base())) == ""
    sync = plan_sync(t, table(base()))
    assert (sync.before, sync.batch, sync.after) == ([], None, [])


def test_changing_one_service_touches_only_its_chain_and_elements() -> None:
    before = table(base())
    # web-sticky loses its affinity: only its own chains, sets and elements change.
    after = table(
        base().replace("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n", "")
    )
    lines = [line for line in script(after, before).strip().splitlines() if line != "add table ip podnet"]
    assert lines, "something must change"
    for line in lines:
        assert "web-sticky" in line or line.startswith(
            ("add element ip podnet endpoints-tcp", "add map ip podnet endpoints-tcp", "delete element ip podnet slots")
        ), line
    assert any(line.startswith("flush chain ip podnet svc-shop/web-sticky/tcp/80") for line in lines)
    assert any(line.startswith("delete chain ip podnet ep-shop/web-sticky/tcp/80/") for line in lines)


def test_a_changed_endpoint_is_one_netlink_transaction_and_no_nft() -> None:
    """Replacing a pod behind a service changes map elements only: no nft run, one batch."""
    text = base()
    old = table(text)
    # loner's only endpoint now listens on 9090: the same pod, another target port
    new = table(text.replace("ports: [{port: 80, targetPort: 8080}]", "ports: [{port: 80, targetPort: 9090}]", 1))
    assert new != old
    sync = plan_sync(new, old)
    assert sync.before == [] and sync.after == []
    assert sync.batch is not None
    assert set(sync.batch.what) <= {
        *(f"{verb} elements of {name}" for verb in ("add", "delete") for name in new.sets),
        *(f"flush chain {name}" for name in new.chains if name.startswith("svc-")),
        *(f"add rule to {name}" for name in new.chains if name.startswith("svc-")),
    }, sync.batch.what


def test_adding_and_removing_services_is_one_netlink_transaction() -> None:
    """Service chains are added and removed in the batch that fills and empties them; nft
    only declares new maps (empty, unused) and the rules that are not Service rules."""
    full = table(base())
    bare = table("---\n".join(doc for doc in base().split("---\n") if "kind: Service" not in doc))
    grow = plan_sync(full, bare)
    assert grow.batch is not None and grow.after == []
    assert "add chain svc-shop/web/tcp/80" in grow.batch.what
    assert grow.batch.what.index("add chain svc-shop/web/tcp/80") < grow.batch.what.index("add elements of services")
    assert not any(" svc-" in line or " nodeport-" in line or " ep-" in line for line in grow.before), grow.before
    shrink = plan_sync(bare, full)
    assert shrink.batch is not None and shrink.after == []
    assert not any(" svc-" in line for line in shrink.before)
    what = shrink.batch.what
    assert what.index("delete elements of services") < what.index("delete chain svc-shop/web/tcp/80")
    assert what.index("flush chain ep-shop/web-sticky/tcp/80/" + ep_ip(full)) < what.index(
        "delete chain svc-shop/web/tcp/80"
    )


def ep_ip(t) -> str:
    """The address of one endpoint of web-sticky (its per-endpoint chains are named by it)."""
    return next(n for n in t.chains if n.startswith("ep-shop/web-sticky/")).rsplit("/", 1)[1]


def test_parse_reads_rules_by_id_and_elements_as_source() -> None:
    data = {
        "nftables": [
            {"table": {"family": "ip", "name": "podnet"}},
            {"chain": {"name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
            {"chain": {"name": "svc-a"}},
            {"rule": {"chain": "prerouting", "comment": "#24a4d7e8"}},
            {"rule": {"chain": "svc-a", "comment": "shop/a #0badc0de"}},
            {"rule": {"chain": "svc-a"}},
            {
                "map": {
                    "name": "services",
                    "type": ["ipv4_addr", "inet_proto", "inet_service"],
                    "map": "verdict",
                    "elem": [[{"concat": ["10.96.0.20", "tcp", 80]}, {"goto": {"target": "svc-a"}}]],
                }
            },
            {"map": {"name": "no-endpoint-nodeports", "elem": [[{"concat": ["udp", 30001]}, {"drop": None}]]}},
            {
                "set": {
                    "name": "aff-x",
                    "type": "ipv4_addr",
                    "flags": ["timeout"],
                    "elem": [{"elem": {"val": "1.2.3.4"}}],
                }
            },
        ]
    }
    t = parse(data)
    assert t.chains["prerouting"].hook == ("nat", "prerouting", -100, "accept")
    assert t.chains["svc-a"].ids == ("0badc0de", "?")  # a rule podnet did not write is drift
    assert t.sets["services"].elements == {"10.96.0.20 . tcp . 80 : goto svc-a"}
    assert t.sets["no-endpoint-nodeports"].elements == {"udp . 30001 : drop"}
    assert t.sets["aff-x"].dynamic and not t.sets["aff-x"].elements


def test_long_names_give_comments_nft_accepts() -> None:
    """Kubernetes names run to 63 characters; nft refuses comments over 128."""
    ns, name = "n" * 63, "s" * 63
    text = base().replace("metadata: {name: web-np, namespace: shop}", f"metadata: {{name: {name}, namespace: shop}}")
    text = text.replace("metadata: {name: shop}", f"metadata: {{name: {ns}}}").replace(
        "namespace: shop", f"namespace: {ns}"
    )
    t = table(text)
    notes = [rule.note for chain in t.chains.values() for rule in chain.rules]
    assert any(note.startswith(f"{ns}/{name[:40]}") for note in notes)
    assert all(len(note) <= 128 for note in notes), max(notes, key=len)

"""The use cases behind the CLI: up, down, status. Each is load -> plan -> observe -> diff -> apply.

The CLI stays thin; tests and the benchmark call these functions directly.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podnet import names, store
from podnet.errors import OwnershipError, PodnetError, StateError, UsageError
from podnet.kernel import netns, nftcache
from podnet.plan import Plan, plan
from podnet.plan.ipam import Allocations
from podnet.reconcile import Change, diff
from podnet.recover import Recovery, recover, recover_slots
from podnet.runtime import bird, process
from podnet.spec import Spec, load_file, load_sources, load_stored, read_sources, stored_form
from podnet.state import State
from podnet.store import Store, cluster_dir, cluster_lock, known_clusters

if TYPE_CHECKING:
    from podnet.kernel.netlink import Sessions
    from podnet.plan.topology import Topology

# The netlink layer (pyroute2) is imported where it is used: `podnet down`, `status` and
# `exec` do not need it, and it is a third of the CLI's start-up time.

ProgressStart = Callable[[int], Callable[[int], None]]
Warn = Callable[[str], None]


def _ignore(_: str) -> None:
    """Where warnings go when the caller listens for none."""


@dataclass
class UpResult:
    cluster: str
    changes: list[Change]
    dry_run: bool
    recovered: Recovery | None = None  # the state was lost: allocations read back from the kernel

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "changes": len(self.changes),
            "dry_run": self.dry_run,
            "summary": dict(sorted(Counter(c.op for c in self.changes).items())),
            "details": [c.describe() for c in self.changes],
            "recovered": self.recovered.counts() if self.recovered else None,
        }


def _sysctl_keys(state: State) -> set[str]:
    return {k for ns in state.namespaces.values() for k in ns.sysctls}


def observe_cluster(cluster: str, desired: State, sessions: Sessions | None = None) -> tuple[State, list[str]]:
    """The kernel's view of a cluster's namespaces, and the cluster's namespaces not desired."""
    from podnet.kernel.observe import observe

    present = netns.list_prefixed(names.cluster_prefix(cluster))
    nft_in = {name for name, ns in desired.namespaces.items() if ns.nft is not None}
    observed = observe(present, _sysctl_keys(desired), sessions, nft_in=nft_in)
    observed.processes = process.observe(cluster_dir(cluster), cluster)
    observed.processes.update(bird.observe(cluster_dir(cluster), cluster))
    extra = [n for n in present if n not in desired.namespaces]
    return observed, extra


def up(
    file: str | list[str],
    dry_run: bool = False,
    on_wait: Callable[[], None] | None = None,
    progress: ProgressStart | None = None,
    warn: Warn = _ignore,
    quiet: bool = False,
) -> UpResult:
    """``file``: a file, a directory or ``-``, or several of them (``podnet up -f A -f B``);
    ``quiet``: no warnings about the Kubernetes fields the spec has and podnet ignores."""
    sources = read_sources([file] if isinstance(file, str) else file)
    spec = load_sources(sources)
    if not quiet:
        for warning in spec.warnings:
            warn(warning)
    cluster = spec.cluster.name
    # Planning may still refuse the spec (a full node block, a hostPort clash): do it before
    # the lock or the store create anything.
    previous = _previous_allocations(cluster)
    p = plan(spec, previous)
    store.check_owner(cluster)
    if dry_run:
        p, recovered = _recovered(spec, cluster, previous, p, warn)
        observed, extra = observe_cluster(cluster, p.state)
        return UpResult(cluster, diff(p.state, observed, extra), True, recovered)
    with cluster_lock(cluster, on_wait=on_wait):
        store.check_owner(cluster)  # another state directory may have claimed it while this one waited
        if (current := _previous_allocations(cluster)) != previous:
            previous = current
            p = plan(spec, current)  # another command changed them while this one waited
        p, recovered = _recovered(spec, cluster, previous, p, warn)
        state = _save(cluster, p.allocations, *stored_form(sources))
        try:
            from podnet.kernel.apply import apply
            from podnet.kernel.netlink import Sessions

            with Sessions() as sessions:
                observed, extra = observe_cluster(cluster, p.state, sessions)
                changes = diff(p.state, observed, extra)
                tick = progress(len(changes)) if progress and changes else None
                apply(changes, sessions, _process_handler(cluster, p), tick)
        finally:
            state.close()
    return UpResult(cluster, changes, False, recovered)


def _save(cluster: str, allocations: Allocations, text: str, file: str) -> Store:
    """Claim the name and save the allocations, before any kernel change: a crash from here on
    replans the very same addresses. A first ``up`` that cannot save leaves nothing behind."""
    fresh, claimed = not cluster_dir(cluster).exists(), store.owns(cluster)
    store.claim(cluster)
    try:
        state = Store.writer(cluster)
        try:
            state.save(allocations, text, file)
        except BaseException:
            state.close()
            raise
    except StateError:
        if fresh:
            shutil.rmtree(cluster_dir(cluster), ignore_errors=True)
        if not claimed:
            store.disown(cluster)
        raise
    return state


def _recovered(spec: Spec, cluster: str, previous: Allocations, p: Plan, warn: Warn) -> tuple[Plan, Recovery | None]:
    """With no allocations stored but the cluster's namespaces present, the ones they hold.

    Without this, a lost state file would plan afresh and move running pods to other nodes and
    addresses (``recover`` says what is read back, and what cannot be).
    """
    if previous or not netns.list_prefixed(names.cluster_prefix(cluster)):
        return p, None
    observed, _ = observe_cluster(cluster, p.state)
    recovered = recover(p.topology, observed)
    # The endpoint slots are found by the endpoints they hold: planned with the pods' own addresses.
    recovered = recovered.with_slots(recover_slots(plan(spec, recovered.allocations).topology, observed))
    warn(
        f"the state of cluster {cluster!r} was lost ({store.state_file(cluster)}): "
        f"recovered {recovered.summary() or 'nothing'} from its namespaces"
    )
    return plan(spec, recovered.allocations), recovered


def _previous_allocations(cluster: str, root: Path | None = None) -> Allocations:
    state = Store.reader(cluster, root)
    if state is None:
        return {}
    try:
        return state.allocations()
    finally:
        state.close()


def _planned_allocations(cluster: str, warn: Warn) -> Allocations:
    """The allocations a plan of FILE (``trace -f``, ``diagram -f``) uses: the running cluster's
    when they can be read, else none, said in one line (no root is needed to plan)."""
    try:
        return _previous_allocations(cluster)
    except StateError as exc:
        warn(f"{exc}; planned afresh, so addresses may differ from the running cluster's")
        return {}


def _process_handler(cluster: str, p: Plan) -> Callable[[Change], None]:
    state_dir = cluster_dir(cluster)

    def handle(change: Change) -> None:
        if bird.is_bird(change.obj):
            bird.apply_change(state_dir, cluster, change.op, change.obj, p.bgp)
            return
        daemon = process.DAEMONS[change.obj.name]
        if change.op == "stop_process":
            process.stop(state_dir, cluster, daemon)
            return
        config = p.netexec_config if daemon is process.NETEXEC else p.dns_config
        nonce = process.write_config(state_dir, daemon, config or {}, change.obj.digest)
        if change.op == "start_process":
            process.start(state_dir, cluster, daemon, nonce)
        else:
            process.reload(state_dir, cluster, daemon, nonce)

    return handle


@dataclass
class DownResult:
    cluster: str
    namespaces: int
    processes: int
    state_removed: bool
    error: str | None = None  # what could not be removed: the command then fails

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "namespaces": self.namespaces,
            "processes": self.processes,
            "state_removed": self.state_removed,
            "error": self.error,
        }


def down(cluster: str, on_wait: Callable[[], None] | None = None) -> DownResult:
    """Remove everything of the cluster, found by name: works with the state file gone."""
    names.check_cluster_name(cluster)
    with cluster_lock(cluster, on_wait=on_wait):
        store.check_owner(cluster)
        state_dir = cluster_dir(cluster)
        stopped = bird.stop(state_dir if state_dir.exists() else None, cluster)
        stopped += process.stop(state_dir if state_dir.exists() else None, cluster)
        present = netns.list_prefixed(names.cluster_prefix(cluster))
        for name in present:
            netns.delete(name)
        for name in netns.list_etc_prefixed(names.cluster_prefix(cluster)):
            netns.remove_etc(name)  # left by a crash between deleting a namespace and its directory
        nftcache.forget_prefixed(names.cluster_prefix(cluster))  # what podnet wrote to their tables
        existed = state_dir.exists()
        error = _remove_tree(state_dir)
        if error is None:
            store.disown(cluster)  # the state is gone: so is the claim on the name
    return DownResult(cluster, len(present), stopped, existed and error is None, error)


def _remove_tree(path: Path) -> str | None:
    """Remove a directory and everything in it; the first failure, said in one line."""
    failures: list[tuple[str, BaseException]] = []
    shutil.rmtree(path, onerror=lambda _fn, where, info: failures.append((where, info[1])))
    failures = [(where, exc) for where, exc in failures if not isinstance(exc, FileNotFoundError)]
    if not failures:
        return None
    where, exc = failures[0]
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"could not remove its state: {where}: {reason}"


def down_all(on_wait: Callable[[], None] | None = None) -> list[DownResult]:
    """``down`` every cluster of this state directory: those it holds state for, and those it
    owns whose state was lost. Clusters of other state directories are theirs to remove."""
    results = []
    for c in clusters():
        if not c["here"]:
            continue
        try:
            results.append(down(c["name"], on_wait))
        except PodnetError as exc:  # refused (another state directory took it meanwhile): say so, go on
            results.append(DownResult(c["name"], 0, 0, False, str(exc)))
    return results


def resolve_cluster(name: str | None) -> str:
    """The -c argument, or the only cluster there is."""
    if name:
        return name
    clusters = known_clusters()
    if len(clusters) == 1:
        return clusters[0]
    if not clusters:
        raise UsageError("no cluster exists here; bring one up with 'podnet up FILE'")
    raise UsageError(f"several clusters exist ({', '.join(clusters)}); choose one with -c NAME")


def load_applied(cluster: str) -> tuple[Spec, Plan]:
    """The spec the cluster was last brought up with, planned again with its allocations."""
    state = Store.reader(cluster)
    if state is None:
        raise _missing(cluster)
    try:
        text = state.get_meta("spec")
        file = state.get_meta("spec_file") or "<applied spec>"
        allocations = state.allocations()
    finally:
        state.close()
    if not text:
        raise _missing(cluster)
    spec = load_stored(text, file)
    return spec, plan(spec, allocations)


def _missing(cluster: str) -> PodnetError:
    """Why a cluster has no state here: it is another state directory's, its state was lost, or it does not exist."""
    other = store.foreign_owner(cluster)
    if other is not None:
        return OwnershipError(
            f"cluster {cluster!r} is not in {store.state_root()}: it belongs to the state directory {other} "
            f"(run podnet with PODNET_STATE_DIR={other})"
        )
    running = netns.list_prefixed(names.cluster_prefix(cluster))
    if running:
        return StateError(
            f"cluster {cluster!r} is running ({len(running)} namespaces) but its state is lost "
            f"(no {store.state_file(cluster)}): run 'podnet up FILE' to recover its allocations from the "
            f"kernel, or 'podnet down -c {cluster}' to remove it"
        )
    return UsageError(f"cluster {cluster!r} does not exist (no state in {cluster_dir(cluster)})")


def clusters() -> list[dict]:
    """Every cluster this machine knows of: with state here, claimed by a state directory, or
    running (its namespaces exist), each with where its state is and whether it is lost."""
    here = store.state_root()
    running = Counter(
        c for c in (names.cluster_of_netns(n) for n in netns.list_prefixed(names.PREFIX)) if c is not None
    )
    listed = []
    for name in sorted(set(known_clusters()) | set(running) | set(store.claimed())):
        root, held = _where(name, here)
        listed.append(
            {
                "name": name,
                "state": ("up" if running[name] else "down") if held else "state lost",
                "namespaces": running[name],
                "state_dir": str(root) if root else None,
                "here": root is not None and store.same_dir(root, here),
                **_sizes(name, root if held else None),
            }
        )
    return listed


def _where(cluster: str, here: Path) -> tuple[Path | None, bool]:
    """The state directory of a cluster (its owner's, else this one), and whether it holds the
    state (one this user may not look into does, as far as anyone can tell)."""
    owner = store.owner(cluster)
    for root in dict.fromkeys(r for r in (owner, here) if r is not None):
        try:
            if store.has_state(cluster, root):
                return root, True
        except StateError:
            return root, True
    return owner, False


def _sizes(cluster: str, root: Path | None) -> dict:
    """Nodes and pods of a cluster from its allocations (None where they cannot be read)."""
    try:
        allocations = _previous_allocations(cluster, root) if root is not None else None
    except StateError:
        allocations = None
    if allocations is None:
        return {"nodes": None, "pods": None}
    return {"nodes": len(allocations.get("node_cidr", {})), "pods": len(allocations.get("pod_ip", {}))}


def _by_reason(topo: Topology, unserved: dict[str, dict[tuple[int, str], str]]) -> dict[str, list[str]]:
    """The pods' ports a daemon cannot serve, grouped by why (said once, not per port)."""
    out: dict[str, list[str]] = {}
    for pod in topo.pods.values():
        for (port, protocol), why in sorted(unserved.get(pod.netns, {}).items()):
            out.setdefault(why, []).append(f"{pod.key} {port}/{protocol}")
    return out


def status(cluster: str) -> dict:
    _, p = load_applied(cluster)
    topo = p.topology
    listening: dict[str, set[tuple[int, str]]] = {}
    unserved: dict[str, dict[tuple[int, str], str]] = {}  # ports a daemon cannot serve here, and why
    for daemon in process.DAEMONS.values():
        if process.running_pid(cluster_dir(cluster), cluster, daemon) is None:
            continue
        ready = process.read_ready(cluster_dir(cluster), daemon) or {}
        for item in ready.get("listening", []):
            listening.setdefault(item["netns"], set()).add((item["port"], item["protocol"]))
        for item in ready.get("unserved", []):
            unserved.setdefault(item["netns"], {})[(item["port"], item["protocol"])] = item["reason"]
    pods = []
    for pod in topo.pods.values():
        alive = netns.exists(pod.netns)
        not_served = unserved.get(pod.netns, {})
        wanted = {(port.port, port.protocol) for port in pod.ports} - set(not_served)
        pods.append(
            {
                "namespace": pod.namespace,
                "name": pod.name,
                "node": pod.node,
                "ip": pod.ip,
                "mac": pod.mac,
                "netns": pod.netns,
                "ports": [f"{port.port}/{port.protocol}" for port in pod.ports],
                "not_served": [f"{port}/{protocol}" for port, protocol in sorted(not_served)],
                "ready": alive and wanted <= listening.get(pod.netns, set()),
            }
        )
    return {
        "cluster": cluster,
        "backend": topo.backend,
        "mtu": topo.mtu,
        "subnets": [
            {"name": s.name, "cidr": s.cidr, "netns": s.switch_netns, "external": s.external}
            for s in topo.subnets.values()
        ],
        "nodes": [
            {
                "name": n.name,
                "netns": n.netns,
                "subnet": n.subnet,
                "underlay_ip": n.underlay_ip,
                "pod_cidr": n.pod_cidr,
                "ready": netns.exists(n.netns),
            }
            for n in topo.nodes.values()
        ],
        "routers": [
            {
                "name": r.name,
                "netns": r.netns,
                "edge": r.uplink is not None,
                "interfaces": [{"ifname": i.ifname, "subnet": i.subnet, "ip": i.ip} for i in r.interfaces],
                "ready": netns.exists(r.netns),
            }
            for r in topo.routers.values()
        ],
        "external_hosts": [
            {
                "name": h.name,
                "netns": h.netns,
                "ip": h.ip,
                "ports": [f"{port.port}/{port.protocol}" for port in h.ports],
                "ready": netns.exists(h.netns)
                and {(port.port, port.protocol) for port in h.ports} <= listening.get(h.netns, set()),
            }
            for h in topo.hosts.values()
        ],
        "pods": pods,
        "notes": [f"not served: {', '.join(ports)}: {why}" for why, ports in _by_reason(topo, unserved).items()],
        "services": [
            {
                "namespace": svc.namespace,
                "name": svc.name,
                "type": svc.type,
                "cluster_ip": svc.cluster_ip,
                "headless": svc.cluster_ip is None,
                "session_affinity": "ClientIP" if svc.affinity_timeout else "None",
                "external_traffic_policy": "Local" if svc.local else "Cluster",
                "ports": [
                    {
                        "name": port.name,
                        "protocol": port.protocol,
                        "port": port.port,
                        "node_port": port.node_port,
                        "endpoints": [f"{e.ip}:{e.port}" for e in port.endpoints],
                        "endpoint_pods": [e.pod for e in port.endpoints],
                    }
                    for port in svc.ports
                ],
            }
            for svc in topo.services.values()
        ],
    }


def exec_target(cluster: str, target: str) -> str:
    """The namespace of a pod (NS/POD, or POD in 'default'), a node, a router or an external host."""
    _, p = load_applied(cluster)
    topo = p.topology
    if "/" in target:
        pod = topo.pods.get(target)
    else:
        infra = topo.netns_of(target)
        if infra is not None:
            return infra
        pod = topo.pods.get(f"default/{target}")
    if pod is None:
        choices = sorted([*topo.nodes, *topo.routers, *topo.hosts, *topo.pods])
        raise UsageError(
            f"no pod, node, router or host {target!r} in cluster {cluster!r} (expected one of: {', '.join(choices)})"
        )
    return pod.netns


def trace(
    src: str,
    dst: str,
    proto: str = "tcp",
    port: int | None = None,
    cluster: str | None = None,
    file: str | None = None,
    verify: bool = False,
    cold: bool = False,
    warn: Warn = _ignore,
):
    """Trace a packet through the planned state of FILE, or the observed state of a running cluster.

    With a running cluster, what the kernel holds is compared with the plan first and the
    differences are reported as drift. ``verify`` sends the packet for real: it checks the
    path the plan intends, so on a drifted cluster it fails at the hop where reality departs
    from the plan (and the trace of the kernel as it is says what happens there instead).
    """
    from podnet.plan.bgp import with_expected_routes
    from podnet.trace import Tracer
    from podnet.trace.walk import TraceError

    if verify and proto == "sctp":
        raise UsageError("--verify does not send SCTP (its probes are TCP, UDP and ICMP sockets); trace without it")
    if file is not None:
        if verify:
            raise UsageError("--verify sends real packets: it needs a running cluster (-c NAME), not a file")
        spec = load_file(file)
        p = plan(spec, _planned_allocations(spec.cluster.name, warn))
        # backend bgp: the plan has no pod routes; trace with those BIRD will install (proto bird).
        tracers = [Tracer(with_expected_routes(p.state, p.bgp), p.topology, p.state, p.dns_config, mode="planned")]
        drift: list[str] = []
    else:
        name = resolve_cluster(cluster)
        _, p = load_applied(name)
        observed, extra = observe_cluster(name, p.state)
        drift = [c.describe() for c in diff(p.state, observed, extra)]
        tracers = [Tracer(observed, p.topology, p.state, p.dns_config, mode="observed")]
        if verify and drift:
            planned = with_expected_routes(p.state, p.bgp)
            tracers.append(Tracer(planned, p.topology, p.state, p.dns_config, mode="planned"))
    try:
        results = [t.trace(src, dst, proto, port) for t in tracers]
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    result = results[-1]
    result.drift = sorted(set(result.drift) | set(drift) | {d for r in results for d in r.drift})
    if len(results) > 1:
        now = results[0]
        result.notes.append(f"the kernel as it is now: {now.verdict} ({now.reason}); verifying the planned path")
    if verify:
        from podnet.trace.verify import verify as run_verify

        run_verify(result, tracers[-1], cold=cold)
    return result


def diagram(
    cluster: str | None = None,
    file: str | None = None,
    path: tuple[str, str] | None = None,
    proto: str = "tcp",
    port: int | None = None,
    warn: Warn = _ignore,
) -> str:
    """The cluster as Graphviz dot text: the plan of FILE or of a running cluster, a trace over it.

    ``path`` (SRC, DST) draws that trace: on the planned state of FILE, or on the observed
    state of the running cluster (as ``trace`` does).
    """
    from podnet import diagram as drawing

    if file is not None:
        spec = load_file(file)
        p = plan(spec, _planned_allocations(spec.cluster.name, warn))
    else:
        cluster = resolve_cluster(cluster)
        _, p = load_applied(cluster)
    result = None
    if path is not None:
        result = trace(path[0], path[1], proto, port, cluster=None if file else cluster, file=file, warn=_ignore)
    return drawing.to_dot(p.topology, p.state, result)

"""The NetworkPolicy benchmark: 100 policies over 1,000 pods, through ``podnet up`` on the real kernel.

A two-node cluster of 1,000 pods in 10 namespaces (``podnet up``, in-process) gets:

1. **apply**: 100 NetworkPolicies (10 per namespace: a default deny, seven allow rules by
   namespace and pod selectors, one by ipBlock with except, one egress rule with DNS) written
   into the file and applied with ``podnet up``: plan, observe, diff, and one nft transaction
   per node. Timed as a whole and by stage (plan, observe, the nft transactions); the size of
   each node's table is reported.
2. **label change**: one pod gets a label that puts it into a selector 70 policies share;
   ``podnet up`` again. On every node that must be set-element changes only (checked).
3. **connection setup**: a client pod on node-1 opens TCP connections to a server pod on node-2
   (``connect`` until established, then a reset), timed one by one; the server side is a listener
   of the benchmark's own on port 9000 that only accepts (netexec's accept queue would overflow).
   The client's egress (port range 9000-9100) and the server's ingress are isolated by policies:
   the server's by nine, of which only the last lets the client in. Rounds alternate (without
   the policies, apply them, with them, remove them, ...), each after the kernel has settled,
   and the median of all the connects of a case is reported.

On a shared 2-CPU machine the connection figures move by about 10 % from run to run, which is
the size of the target: compare several runs.

``podnet up`` of 1,000 pods is mostly observing 1,000 namespaces (the pods benchmark's
business), so the targets are on what the policies add: one node's nft transaction applying the
100 policies within 0.5 s and a label change within 50 ms (set elements only), and connection
setup at most 10 % slower with the policies than without.

``python -m bench.policy [--pods N] [--connects N] [--json]`` (root) runs it alone; in ``make
bench`` it is the suite ``policy``. Everything lives in the cluster ``pbpol<pid>`` (namespaces
``podnet_pbpol<pid>_*``), addresses only inside them; ``cleanup`` removes it whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import nsutil
from bench.nsutil import BenchError
from bench.pods import UP_STAGES, stage_timers

PODS = 1000
POLICIES_PER_NAMESPACE = 10
NAMESPACES = 10
CONNECTS = 2000  # per round
WARMUP = 100
ROUNDS = 3  # per case, alternating
SERVER_PORT = 8080  # the server pod's container port "http" (netexec)
TIMED_PORT = 9000  # the benchmark's own listener in the server pod: accepts as fast as connects come
CLUSTER = f"pbpol{os.getpid()}"

APPLY_TARGET_S = 0.5  # one node's nft transaction (nsenter + nft -f)
CHANGE_TARGET_S = 0.050  # idem
CONNECT_TARGET_RATIO = 1.10


def _ns(i: int) -> str:
    return f"ns-{i}"


def cluster_text(pods: int, policies: bool, changed: bool = False) -> str:
    """The cluster file. Pod i lives in ns-(i % 10) on node-(i % 2 + 1), labelled app, tier and team."""
    docs = [
        f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {CLUSTER}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 22
  backend: host-gw
  nodes: [{{name: node-1}}, {{name: node-2}}]
"""
    ]
    for n in range(NAMESPACES):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {_ns(n)}, labels: {{team: t{n % 3}}}}}\n")
    for i in range(pods):
        labels = f"app: app-{i % 20}, tier: {('web', 'api', 'db')[i % 3]}"
        if changed and i == 7:
            labels += ", role: scraper"  # joins the scraper selector all 70 policies 1..7 share
        ports = f"\n    ports: [{{name: http, containerPort: {SERVER_PORT}}}]" if i == server_index() else ""
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: p{i:04d}, namespace: {_ns(i % NAMESPACES)}, labels: {{{labels}}}}}
spec:
  nodeName: node-{i % 2 + 1}
  containers:
  - name: main{ports}
"""
        )
    if policies:
        docs += [policy_doc(n, k) for n in range(NAMESPACES) for k in range(POLICIES_PER_NAMESPACE)]
    return "---\n".join(docs)


def client_index() -> int:
    return 10  # ns-0, node-1, app-10, tier api


def server_index() -> int:
    return 1  # ns-1, node-2, app-1, tier api


def policy_doc(n: int, k: int) -> str:
    """Policy k of namespace n. Every pod is selected by 0 (deny) and 1..7, api and db pods by 9
    too: the server (ns-1, tier api) by nine policies, of which only 9 (ipBlock: node-1's pods)
    lets the client in. The client (ns-0, tier api, on node-1) is egress-isolated by 8, which
    allows DNS, and the named port http and ports 9000-9100 in any team's namespace."""
    head = f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np-{k}, namespace: {_ns(n)}}}\nspec:\n"
    if k == 0:
        return head + "  podSelector: {}\n  policyTypes: [Ingress]\n"
    if k == 8:
        return (
            head
            + """  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  - to: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]
    ports: [{port: http}, {port: 9000, endPort: 9100}]
"""
        )
    if k == 9:
        return (
            head
            + """  podSelector: {matchExpressions: [{key: tier, operator: In, values: [api, db]}]}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.4.0/22]}}]
    ports: [{port: 8080}, {port: 9000}]
"""
        )
    # 1..7: every pod of the namespace accepts some tier of some team, and any scraper.
    return (
        head
        + f"""  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [app-{n}, app-{n + 10}]}}]}}
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{team: t{k % 3}}}}}
      podSelector: {{matchLabels: {{tier: {("web", "db", "db")[k % 3]}}}}}
    - namespaceSelector: {{}}
      podSelector: {{matchLabels: {{role: scraper}}}}
    ports: [{{port: {SERVER_PORT}}}, {{port: 9090, protocol: TCP}}]
"""
    )


# --- measuring ------------------------------------------------------------------------------


class Listener:
    """A TCP listener in the server pod that accepts and closes, in a thread of this process."""

    def __init__(self, netns_name: str) -> None:
        from podnet.kernel import netns

        with netns.entered(netns_name):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", TIMED_PORT))
        self.sock.listen(4096)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="policy-bench-listener", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _connect_round(client_ns: str, server_ip: str, count: int) -> list[float]:
    """Sequential connects from inside the client pod; seconds each (established, then reset)."""
    from podnet.kernel import netns

    times: list[float] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            with netns.entered(client_ns):
                for _ in range(count + WARMUP):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.settimeout(2.0)
                    start = time.perf_counter()
                    s.connect((server_ip, TIMED_PORT))
                    times.append(time.perf_counter() - start)
                    s.close()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=work, name="policy-bench-client")
    thread.start()
    thread.join()
    if error:
        raise BenchError(f"connect from the client pod to {server_ip}:{TIMED_PORT} failed: {error[0]!r}")
    return times[WARMUP:]


def _stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "connects": len(ordered),
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[int(len(ordered) * 0.99) - 1] * 1e6,
    }


def _table_stats(state) -> dict:
    out = {}
    for name, ns in sorted(state.namespaces.items()):
        if ns.nft is None:
            continue
        chains = [c for c in ns.nft.chains if c.startswith(("np-", "ingress-", "egress-", "policy-"))]
        sets = [s for n, s in ns.nft.sets.items() if n.startswith(("sel-", "np-", "ingress-pods", "egress-pods"))]
        out[name.rsplit("_", 1)[1]] = {
            "policy_chains": len(chains),
            "policy_rules": sum(len(ns.nft.chains[c].ids) for c in chains),
            "policy_sets": len(sets),
            "policy_elements": sum(len(s.elements) for s in sets),
        }
    return out


def run(pods: int = PODS, connects: int = CONNECTS, rounds: int = ROUNDS, log=None) -> dict:
    """Every figure of the benchmark; the cluster is removed before returning, even on errors."""
    from podnet import cluster as usecases
    from podnet.kernel import nft
    from podnet.plan import plan
    from podnet.spec import load_text

    say = log or (lambda text: print(text, file=sys.stderr))
    if pods < 20 or pods > 2000:
        raise BenchError(f"--pods must be 20..2000 (two /22 node blocks), not {pods}")
    own_state = "PODNET_STATE_DIR" not in os.environ
    tmp = Path(tempfile.mkdtemp(prefix=f"podnet-bench-policy-{os.getpid()}-"))
    if own_state:
        os.environ["PODNET_STATE_DIR"] = str(tmp / "state")
    spec = tmp / "cluster.yaml"
    result: dict = {
        "pods": pods,
        "policies": NAMESPACES * POLICIES_PER_NAMESPACE,
        "nodes": 2,
        "connects_per_round": connects,
        "rounds": rounds,
        "targets": {"apply_s": APPLY_TARGET_S, "change_s": CHANGE_TARGET_S, "connect_ratio": CONNECT_TARGET_RATIO},
    }

    def up(text: str, what: str, key: str) -> object:
        """podnet up, timed as a whole and by stage: result[key] = seconds, result[key_stages] = {...}."""
        spec.write_text(text)
        say(f"policy: {what}")
        with stage_timers(usecases, UP_STAGES) as stages, stage_timers(nft, ("load",)) as loads:
            start = time.perf_counter()
            res = usecases.up(str(spec))
            result[key] = time.perf_counter() - start
        result[f"{key}_stages"] = {**stages, "nft_transactions": loads.get("load", 0.0)}
        return res

    listener = None
    try:
        up(cluster_text(pods, False), f"up {pods} pods without policies", "up_pods_s")
        _, p = usecases.load_applied(CLUSTER)
        client = p.topology.pods[f"ns-0/p{client_index():04d}"]
        server = p.topology.pods[f"ns-1/p{server_index():04d}"]
        listener = Listener(server.netns)
        without: list[float] = []
        with_policies: list[float] = []

        def connects_round(samples: list[float], what: str) -> None:
            nsutil.settle()  # namespaces just created or policies just loaded: let the kernel finish
            say(f"policy: {connects} connects {what}")
            samples += _connect_round(client.netns, server.ip, connects)

        text = cluster_text(pods, True)
        start = time.perf_counter()
        planned = plan(load_text(text, "cluster.yaml"))
        result["plan_s"] = time.perf_counter() - start
        # Rounds alternate: without, with, without, ... so that both cases span the run.
        for r in range(rounds):
            connects_round(without, f"without policies ({r + 1}/{rounds})")
            if r == 0:
                res = up(text, "apply 100 policies", "apply_s")
                result["apply_changes"] = len(res.changes)
                result["tables"] = _table_stats(planned.state)
                res = up(text, "up again (converged: no changes)", "up_again_s")
                result["up_again_changes"] = len(res.changes)
            else:
                up(text, f"apply the policies again ({r + 1}/{rounds})", f"reapply_{r}_s")
            connects_round(with_policies, f"with policies ({r + 1}/{rounds})")
            if r == 0:
                changed = cluster_text(pods, True, changed=True)
                after = plan(load_text(changed, "cluster.yaml"))
                lines = []
                for name, ns in after.state.namespaces.items():
                    if ns.nft is not None:
                        lines += nft.script(ns.nft, planned.state.namespaces[name].nft).splitlines()[1:]
                result["change_script_lines"] = len(lines)
                result["change_elements_only"] = all("element" in line for line in lines)
                res = up(changed, "one pod joins a selector shared by 70 policies", "change_s")
                result["change_changes"] = len(res.changes)
                text = changed
            up(
                cluster_text(pods, False, changed=True),
                "remove every policy",
                "remove_s" if r == 0 else f"remove_{r}_s",
            )
        result["connect_without"] = _stats(without)
        result["connect_with"] = _stats(with_policies)
        result["connect_ratio"] = result["connect_with"]["median_us"] / result["connect_without"]["median_us"]
        result["met"] = {
            "apply": result["apply_s_stages"]["nft_transactions"] / 2 <= APPLY_TARGET_S,
            "change": result["change_s_stages"]["nft_transactions"] / 2 <= CHANGE_TARGET_S
            and result["change_elements_only"],
            "connect": result["connect_ratio"] <= CONNECT_TARGET_RATIO,
        }
    finally:
        if listener is not None:
            listener.close()
        problems = cleanup()
        if own_state:
            os.environ.pop("PODNET_STATE_DIR", None)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if problems:
            raise BenchError(f"policy benchmark cleanup: {problems}")
    return result


def cleanup() -> list[str]:
    """Remove the benchmark's cluster (works without its state); what could not be removed."""
    from podnet import cluster as usecases

    prefix = f"podnet_{CLUSTER}_"
    try:
        usecases.down(CLUSTER)
    except Exception as exc:
        return [f"podnet down -c {CLUSTER} failed: {exc}"]
    left = nsutil.list_prefixed(prefix)
    return [f"namespaces left: {left}"] if left else []


def render(result: dict, console=None) -> str:
    met = result.get("met", {})

    def mark(key: str) -> str:
        return "met" if met.get(key) else "MISSED"

    def stages(key: str) -> str:
        st = result.get(f"{key}_stages", {})
        return (
            f"plan {st.get('plan', 0):.2f}, observe {st.get('observe_cluster', 0):.2f}, "
            f"nft {st.get('nft_transactions', 0) * 1000 / 2:.0f} ms per node"
        )

    lines = [
        f"policy: {result['policies']} NetworkPolicies over {result['pods']} pods on {result['nodes']} nodes (host-gw)",
        f"  up of the pods, no policies           {result.get('up_pods_s', 0):8.2f} s   ({stages('up_pods_s')})",
        f"  apply 100 policies (podnet up)        {result.get('apply_s', 0):8.2f} s   ({stages('apply_s')}; "
        f"nft target <= {APPLY_TARGET_S * 1000:.0f} ms: {mark('apply')})",
        f"  up again, converged                   {result.get('up_again_s', 0):8.2f} s   "
        f"({stages('up_again_s')}; {result.get('up_again_changes')} changes)",
        f"  one label change (podnet up)          {result.get('change_s', 0):8.2f} s   ({stages('change_s')}; "
        f"nft target <= {CHANGE_TARGET_S * 1000:.0f} ms: {mark('change')})",
        f"    its nft script: {result.get('change_script_lines')} lines, set elements only: "
        f"{result.get('change_elements_only')}",
    ]
    for node, t in result.get("tables", {}).items():
        lines.append(
            f"  {node} table: {t['policy_chains']} policy chains, {t['policy_rules']} rules, "
            f"{t['policy_sets']} sets/maps, {t['policy_elements']} elements"
        )
    if "connect_ratio" in result:
        w, p = result["connect_without"], result["connect_with"]
        lines += [
            f"  connection setup without policies     {w['median_us']:8.1f} us   (p99 {w['p99_us']:.1f} us)",
            f"  connection setup with policies        {p['median_us']:8.1f} us   (p99 {p['p99_us']:.1f} us)",
            f"  ratio {result['connect_ratio']:.3f} (target <= {CONNECT_TARGET_RATIO}: {mark('connect')})",
        ]
    text = "\n".join(lines)
    if console is not None:
        console.print(text, markup=False)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=PODS, help=f"pods (default {PODS})")
    parser.add_argument("--connects", type=int, default=CONNECTS, help=f"connects per round (default {CONNECTS})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per case (default {ROUNDS})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the benchmark builds a cluster: run it as root", file=sys.stderr)
        return 2
    try:
        result = run(args.pods, args.connects, args.rounds)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        cleanup()
        return 130
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

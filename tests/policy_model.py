"""The NetworkPolicy test model, shared by the kernel tests and the pure ones.

Three namespaces (x, y, z, labelled ``ns: <name>``) of three pods (a, b, c, labelled
``pod: <name>``) on two nodes, each pod serving TCP, UDP and SCTP on ports 80 and 81 under
the container port names Kubernetes' own policy tests use (``serve-80-tcp``, ...). A Service ``web``
in y and in z selects the pod ``a`` there; an external host ``ext`` (203.0.113.10) serves TCP 80
behind an edge router.

Matrices are written as truth tables: a row per source, a column per destination, ``.`` for
reached and ``X`` for denied, in the order of :data:`PODS`.
"""

from __future__ import annotations

PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
NODE_OF = {key: f"node-{i % 2 + 1}" for i, key in enumerate(PODS)}  # x/a node-1, x/b node-2, ...
CHECKS = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]  # what sockets probe
SCTP_CHECKS = [(80, "SCTP"), (81, "SCTP")]  # probed with raw INITs: this kernel has no SCTP sockets
EXTERNAL_IP = "203.0.113.10"
NODE_BLOCKS = {"node-1": "10.244.0.0/24", "node-2": "10.244.1.0/24"}


def cluster_text(name: str, policies: str = "", labels: dict[str, dict[str, str]] | None = None) -> str:
    """The cluster file; ``labels`` adds labels to pods by key; ``policies`` is appended as is."""
    labels = labels or {}
    docs = [
        f"""apiVersion: podnet.io/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  podCIDR: 10.244.0.0/16
  nodeCIDRMaskSize: 24
  serviceCIDR: 10.96.0.0/12
  backend: host-gw
  underlay:
    cidr: 172.31.0.0/24
    routers: [{{name: edge, subnets: [underlay], uplink: internet}}]
  nodes: [{{name: node-1}}, {{name: node-2}}]
  external:
    name: internet
    cidr: 203.0.113.0/24
    hosts: [{{name: ext, address: {EXTERNAL_IP}, ports: [{{containerPort: 80}}]}}]
"""
    ]
    for ns in "xyz":
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n")
    for key in PODS:
        ns, pod = key.split("/")
        extra = "".join(f", {k}: {v}" for k, v in labels.get(key, {}).items())
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}{extra}}}}}
spec:
  nodeName: {NODE_OF[key]}
  containers:
  - name: main
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-tcp, containerPort: 81}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
    - {{name: serve-80-sctp, containerPort: 80, protocol: SCTP}}
    - {{name: serve-81-sctp, containerPort: 81, protocol: SCTP}}
"""
        )
    for ns in "yz":
        docs.append(
            f"""apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{pod: a}}
  ports: [{{port: 80}}]
"""
        )
    text = "---\n".join(docs)
    return text + ("---\n" + policies.strip() + "\n" if policies.strip() else "")


def parse_matrix(text: str) -> dict[tuple[str, str], bool]:
    """A truth table back into {(from, to): reached}."""
    lines = [line.split() for line in text.strip().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    assert header == PODS, f"columns must be {PODS}, not {header}"
    assert [r[0] for r in rows] == PODS, f"rows must be {PODS}"
    out = {}
    for row in rows:
        assert len(row) == len(PODS) + 1 and set(row[1:]) <= {".", "X"}, row
        for dst, mark in zip(PODS, row[1:], strict=True):
            out[(row[0], dst)] = mark == "."
    return out


def format_matrix(cells: dict[tuple[str, str], bool]) -> str:
    width = max(len(p) for p in PODS)
    head = " " * width + " " + " ".join(p.rjust(width) for p in PODS)
    rows = [
        src.ljust(width) + " " + " ".join(("." if cells[(src, dst)] else "X").rjust(width) for dst in PODS)
        for src in PODS
    ]
    return "\n".join([head, *rows])


# --- the scenarios: (policies, {"TCP/80": matrix, ...} or {"*": matrix}) ---------------------

DNS_EGRESS = """
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]"""


def policy(name: str, namespace: str, body: str, annotations: str = "") -> str:
    meta = (
        f"{{name: {name}, namespace: {namespace}" + (f", annotations: {{{annotations}}}" if annotations else "") + "}"
    )
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {meta}\nspec:\n{body.strip(chr(10))}\n"


def join(*docs: str) -> str:
    return "---\n".join(docs)


DENY_INGRESS_X = policy(
    "deny-ingress",
    "x",
    """
  podSelector: {}
  policyTypes: [Ingress]
""",
    annotations='podnet.io/log-drops: "true"',
)

DENY_EGRESS_X = policy(
    "deny-egress",
    "x",
    """
  podSelector: {}
  policyTypes: [Egress]
""",
)

ALLOW_WITHIN_X = policy(
    "allow-within",
    "x",
    """
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
""",
)

NAMESPACE_SELECTOR = policy(
    "from-y",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
""",
)

AND_PEER = policy(
    "and",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
""",
)

OR_PEERS = policy(
    "or",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
""",
)

IP_BLOCK = policy(
    "ip-block",
    "x",
    f"""
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: 10.244.0.0/16, except: [{NODE_BLOCKS["node-2"]}]}}
""",
)

EGRESS_EXTERNAL = policy(
    "to-ext",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]
    ports: [{port: 80}]
""",
)

NAMED_PORTS = join(
    policy(
        "named-in",
        "x",
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]
""",
    ),
    policy(
        "named-out",
        "y",
        """
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: serve-80-tcp}]
""",
    ),
)

END_PORT = policy(
    "range",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, endPort: 90}, {protocol: UDP, port: 70, endPort: 80}]
""",
)

EGRESS_WITH_DNS = policy(
    "egress-dns",
    "x",
    f"""
  podSelector: {{}}
  policyTypes: [Egress]
  egress:{DNS_EGRESS}
  - to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
    ports: [{{port: 80}}]
""",
)

ADD_UP = join(
    policy(
        "web-from-y",
        "x",
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
""",
    ),
    policy(
        "all-from-b",
        "x",
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
""",
    ),
    policy(
        "deny-c",
        "x",
        """
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
""",
    ),
)

MATCH_EXPRESSIONS = join(
    policy(
        "expr-a",
        "x",
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
""",
    ),
    policy(
        "expr-y",
        "y",
        """
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: pod, operator: NotIn, values: [c]}]}
""",
    ),
    policy(
        "expr-z",
        "z",
        """
  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: DoesNotExist}]}}]
""",
    ),
)

CLIENTS_ONLY = policy(
    "clients",
    "x",
    """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
""",
)

# Kubernetes' "should not allow access by TCP when a policy specifies only SCTP": a policy
# whose only port is SCTP isolates its pods for TCP and UDP too, and allows SCTP alone.
SCTP_ONLY = join(
    policy(
        "sctp-80",
        "x",
        """
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: SCTP, port: 80}]
""",
    ),
    policy(
        "sctp-named",
        "x",
        """
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{protocol: SCTP, port: serve-81-sctp}]
""",
    ),
)
SCTP_ONLY_MATRICES = {
    "*": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   X   .   .   .   .   .   .   .
y/a  X   X   .   .   .   .   .   .   .
y/b  X   X   .   .   .   .   .   .   .
y/c  X   X   .   .   .   .   .   .   .
z/a  X   X   .   .   .   .   .   .   .
z/b  X   X   .   .   .   .   .   .   .
z/c  X   X   .   .   .   .   .   .   .
""",
    "SCTP/80": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   .   .   .   .   .   .   .
x/b  .   .   .   .   .   .   .   .   .
x/c  .   X   .   .   .   .   .   .   .
y/a  .   X   .   .   .   .   .   .   .
y/b  .   X   .   .   .   .   .   .   .
y/c  .   X   .   .   .   .   .   .   .
z/a  .   X   .   .   .   .   .   .   .
z/b  .   X   .   .   .   .   .   .   .
z/c  .   X   .   .   .   .   .   .   .
""",
    "SCTP/81": """
    x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a  .   X   .   .   .   .   .   .   .
x/b  X   .   .   .   .   .   .   .   .
x/c  X   X   .   .   .   .   .   .   .
y/a  X   .   .   .   .   .   .   .   .
y/b  X   .   .   .   .   .   .   .   .
y/c  X   .   .   .   .   .   .   .   .
z/a  X   X   .   .   .   .   .   .   .
z/b  X   X   .   .   .   .   .   .   .
z/c  X   X   .   .   .   .   .   .   .
""",
}

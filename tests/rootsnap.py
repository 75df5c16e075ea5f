"""A snapshot of the host's root network namespace, to prove podnet never changes it."""

from __future__ import annotations

import re
import subprocess

SYSCTLS = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/default/rp_filter",
    "net/ipv4/conf/all/proxy_arp",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/fib_multipath_hash_policy",
    "net/core/devconf_inherit_init_net",
]


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else f"<{' '.join(cmd)} failed: {proc.stderr.strip()}>"


def _without_counters(text: str) -> str:
    return re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(line for line in text.splitlines() if not line.startswith("#")))


def _foreign_namespaces() -> str:
    """The namespaces that are not podnet's. podnet's own are checked per cluster by the
    tests' leftovers check; other clusters (another checkout's test run) come and go here."""
    names = (line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip())
    return "\n".join(sorted(n for n in names if not n.startswith(("podnet_", "podnet-"))))


def snapshot() -> dict[str, str]:
    sysctls = {}
    for key in SYSCTLS:
        try:
            with open(f"/proc/sys/{key}") as f:
                sysctls[key] = f.read().strip()
        except OSError:
            sysctls[key] = "<absent>"
    return {
        "links": _run("ip", "-d", "-o", "link", "show"),
        "addresses": _run("ip", "-o", "addr", "show"),
        "routes": _run("ip", "route", "show", "table", "all"),
        "rules": _run("ip", "rule", "show"),
        "neighbours": _run("ip", "neigh", "show", "nud", "permanent"),
        "nft": _run("nft", "list", "ruleset"),
        "iptables": _without_counters(_run("iptables-save")),
        "sysctls": repr(sysctls),
        "netns": _foreign_namespaces(),
    }


def differences(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {k: (before[k], after.get(k, "")) for k in before if before[k] != after.get(k)}

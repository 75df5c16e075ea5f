"""The sysctls of every namespace podnet creates: all it depends on, planned, none assumed.

A new network namespace is not a blank one. With ``net.core.devconf_inherit_init_net`` = 0
(the default) Linux copies the host's ``net.ipv4.conf.all`` and ``conf.default`` into it, so
on a host that forwards (``ip_forward`` = 1: every host that runs Docker) a new pod forwards
too, and whatever the host chose for reverse-path filtering, ARP or redirects comes along.
So each IPv4 setting podnet's behaviour depends on is planned explicitly, in ``all`` (which
the kernel combines with each interface's own value) and in ``default`` (which every
interface created later starts from), and written when the namespace is created.

- forwarding: only nodes and routers route; a pod, a switch or an external host never does.
- ``rp_filter`` 0: no reverse-path check; the trace makes none, and the host's choice
  (strict, loose) must not decide which packets arrive.
- ``accept_local``, ``route_localnet`` 0: a packet from one of the namespace's own addresses,
  or for 127/8 from outside, is a martian, as the trace has it.
- ``accept_redirects``, ``send_redirects`` 0: every route is planned; no namespace teaches
  another one a route the plan does not hold (a node sends redirects when a packet leaves by
  the interface it came in on, with the shared-media default).
- ``proxy_arp``, ``arp_ignore``, ``arp_announce``, ``arp_filter`` 0: the kernel's own ARP
  behaviour (answer for any local address, announce the packet's source), which the trace's
  neighbour resolution follows.

Settings of a namespace the kernel does not copy from the host (``fib_multipath_hash_policy``,
the bridge's netfilter calls) are planned where they matter. IPv6 is left alone: podnet's
namespaces carry IPv4 only; their IPv6 link-local addresses are never forwarded whatever
``forwarding`` says, and nothing sends them router advertisements.
"""

from __future__ import annotations

FORWARDING = "net.ipv4.ip_forward"  # the same setting as net.ipv4.conf.all.forwarding
DEFAULT_FORWARDING = "net.ipv4.conf.default.forwarding"
# Writing one of these makes the kernel rewrite others (net/ipv4/devinet.c,
# inet_forward_change): conf.default.forwarding and every interface's forwarding follow
# ip_forward, and conf.all.accept_redirects becomes its opposite. Such a key is written first,
# and what it rewrites is written again after it.
REWRITES = {FORWARDING: (DEFAULT_FORWARDING, "net.ipv4.conf.all.accept_redirects")}
OFF = ("rp_filter", "accept_local", "route_localnet", "accept_redirects", "send_redirects")
ARP = ("proxy_arp", "arp_ignore", "arp_announce", "arp_filter")


def _settings(forwards: bool) -> dict[str, str]:
    value = "1" if forwards else "0"
    settings = {FORWARDING: value, DEFAULT_FORWARDING: value}
    for conf in ("all", "default"):
        settings.update({f"net.ipv4.conf.{conf}.{key}": "0" for key in (*OFF, *ARP)})
    return settings


_IPV4 = {forwards: _settings(forwards) for forwards in (False, True)}


def ipv4(forwards: bool) -> dict[str, str]:
    """The IPv4 settings of a namespace that routes (``forwards``) or never does."""
    return dict(_IPV4[forwards])

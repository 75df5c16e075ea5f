"""A typed model of the BIRD 2 configuration podnet runs in a node or router, rendered to text.

One ``BirdConfig`` per BGP speaker. The planner fills it (``plan.bgp``); ``render`` is the only
place that knows BIRD's syntax, and ``tests/golden/bgp/`` pins what it writes. The log file is
the one thing the runtime adds (it lives in the state directory, which a pure plan does not
know), so the digest that drives reloads is taken without it.

What every config does, whatever the role:

- ``protocol direct`` reads the connected subnets of the listed interfaces. On a router they
  are announced (the underlay is routed by BGP too); on a node they only shadow the BGP copy
  of its own segment, and ``cni0`` gives the node's pod block, which it announces.
- ``protocol kernel`` writes the routes BGP chose into the namespace's main table (``proto bird``,
  metric 32), one ECMP route where several equal paths exist (``merge paths``). It learns
  nothing from the kernel: podnet's own static routes stay podnet's.
- ``protocol bfd`` plus ``bfd on`` and ``check link on`` in every session: a dead link or peer
  is noticed in ``interval x multiplier`` (300 ms by default), a lost carrier at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

KERNEL_METRIC = 32  # BIRD's default; podnet's own routes use metric 0, so the two never collide


@dataclass(frozen=True)
class Neighbor:
    protocol: str  # BIRD protocol name: the peer's name, made an identifier
    peer: str  # the node or router at the other end
    subnet: str  # the segment the session runs over
    local_ip: str
    address: str
    asn: int


@dataclass(frozen=True)
class StaticRoute:
    """A route BIRD originates into BGP only (never into the kernel): the border's default."""

    prefix: str
    device: str | None = None  # None: a blackhole (an announced service address)

    def render(self) -> str:
        return f'route {self.prefix} via "{self.device}";' if self.device else f"route {self.prefix} blackhole;"


@dataclass(frozen=True)
class Timers:
    hold: int = 3
    connect_delay: int = 1  # BIRD waits 5 s by default (1 s is its floor, less up to a quarter of jitter)
    connect_retry: int = 1  # and 120 s between attempts
    error_wait: tuple[int, int] = (1, 5)  # and 60-300 s after an error

    @property
    def keepalive(self) -> int:
        return max(1, self.hold // 3)


@dataclass(frozen=True)
class Bfd:
    interval_ms: int = 100
    multiplier: int = 3


@dataclass(frozen=True)
class BirdConfig:
    cluster: str
    speaker: str  # the node or router this BIRD runs in
    role: str  # node | spine | leaf | router
    router_id: str
    local_as: int
    direct: tuple[str, ...]  # interface patterns whose connected subnets BIRD knows
    export: tuple[str, ...] | None  # prefixes announced to peers; None: everything (a router)
    static: tuple[StaticRoute, ...]
    neighbors: tuple[Neighbor, ...]
    timers: Timers = Timers()
    bfd: Bfd | None = Bfd()
    log_file: str | None = None

    @property
    def digest(self) -> str:
        text = replace(self, log_file=None).render()
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_log(self, path: str) -> BirdConfig:
        return replace(self, log_file=path)

    def render(self) -> str:
        out: list[str] = [
            f"# podnet: BIRD of {self.role} {self.speaker} in cluster {self.cluster}, AS {self.local_as}.",
            "# Generated from the cluster file by podnet; edit that and run `podnet up`, not this file.",
            f"router id {self.router_id};",
        ]
        if self.log_file:
            out.append(f'log "{self.log_file}" {{ info, remote, warning, error, auth, fatal, bug }};')
        out += [
            "",
            "protocol device {",
            "  scan time 10;",
            "}",
            "",
            "protocol direct {",
            "  ipv4;",
            "  interface " + ", ".join(f'"{i}"' for i in self.direct) + ";",
            "}",
            "",
            "protocol kernel {",
            "  ipv4 {",
            "    import none;",
            "    export where source = RTS_BGP;",
            "  };",
            "  merge paths on;",
            f"  metric {KERNEL_METRIC};",
            "}",
        ]
        if self.bfd is not None:
            out += [
                "",
                "protocol bfd {",
                '  interface "*" {',
                f"    min rx interval {self.bfd.interval_ms} ms;",
                f"    min tx interval {self.bfd.interval_ms} ms;",
                f"    multiplier {self.bfd.multiplier};",
                "  };",
                "}",
            ]
        if self.static:
            out += ["", "protocol static originated {", "  ipv4;"]
            out += [f"  {r.render()}" for r in self.static]
            out.append("}")
        if self.export is not None:
            out += ["", "filter podnet_export {"]
            if self.export:
                out.append("  if net ~ [ " + ", ".join(self.export) + " ] then accept;")
            out += ["  reject;", "}"]
        t = self.timers
        out += [
            "",
            "template bgp podnet_peer {",
            f"  hold time {t.hold};",
            f"  keepalive time {t.keepalive};",
            f"  connect delay time {t.connect_delay};",
            f"  connect retry time {t.connect_retry};",
            f"  error wait time {t.error_wait[0]}, {t.error_wait[1]};",
            "  direct;",
            "  check link on;",
        ]
        if self.bfd is not None:
            out.append("  bfd on;")
        out += [
            "  graceful restart off;",
            "  ipv4 {",
            "    import all;",
            "    export all;" if self.export is None else "    export filter podnet_export;",
            "  };",
            "}",
        ]
        for n in self.neighbors:
            out += [
                "",
                f"protocol bgp {n.protocol} from podnet_peer {{",
                f'  description "{n.peer} on {n.subnet}";',
                f"  local {n.local_ip} as {self.local_as};",
                f"  neighbor {n.address} as {n.asn};",
                "}",
            ]
        return "\n".join(out) + "\n"

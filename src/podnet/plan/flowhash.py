"""The overlay's flow hash: one fixed function of the inner 5-tuple, set on every packet VXLAN sends.

Why podnet sets it. The VXLAN device derives the outer UDP source port from the packet's flow
hash (``udp_flow_src_port``), and the node's multipath route hashes that outer 5-tuple to pick
a spine. But the flow hash a pod's packet carries is its socket's ``sk_txhash``: a random
number drawn per connection (and redrawn after a retransmission timeout). Two connections
with the same 5-tuple leave by different outer ports, so no one can say beforehand which spine
a flow takes. Worse, the device caches its route per remote VTEP in a per-CPU dst cache, so
the multipath route is not consulted at all: every flow takes whichever spine the CPU that
encapsulates it cached first (issue 13 §9: 40 flows, one spine, in 5 of 9 runs).

A small tc program on the egress of ``vxlan0`` fixes both, before the device sees the packet:
- it sets the flow hash to :func:`inner_hash` of the inner IPv4 5-tuple (``bpf_set_hash``), so
  the outer source port, and with it the spine, is a function of the flow alone;
- it ORs :data:`OVERLAY_MARK` into the packet's mark: the kernel skips a tunnel's dst cache
  for marked packets (``ip_tunnel_dst_cache_usable``), so every packet's route is looked up,
  and the multipath route decides per flow. The mark means nothing else: no rule matches it,
  and it stays in the node (crossing into another namespace clears it).

The program is a few dozen eBPF instructions written out here (no compiler): it loads through
the ``bpf()`` syscall (:mod:`podnet.kernel.tcbpf`). :func:`inner_hash` is the same function in
Python, which is what lets a trace of the *planned* state name the spine without root.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from functools import cache

OVERLAY_MARK = 0x00010000  # apart from nat's masquerade bit (0x4000)
PROGRAM_NAME = "podnet_flowhash"  # the kernel keeps 15 characters of a program's name
ETH_HLEN = 14
IPPROTO = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
WITH_PORTS = (6, 17)
# Multipliers: the golden ratio and murmur3's constants (fmix32), for a hash whose every bit
# depends on every input bit: the outer source port is taken from its high bits.
K_DADDR, K_PORTS = 0x9E3779B1, 0x85EBCA77
FMIX1, FMIX2 = 0x85EBCA6B, 0xC2B2AE35
M32 = 0xFFFFFFFF


def inner_hash(src_ip: str, dst_ip: str, proto: str, sport: int = 0, dport: int = 0, fragment: bool = False) -> int:
    """The flow hash the program sets, for an IPv4 packet with these headers (never 0).

    Words are read as the host reads them from the packet (native order), as the program does;
    the ports count for TCP and UDP only, and not for a fragment."""
    number = IPPROTO.get(proto, 0)
    saddr, daddr = (_word(socket.inet_aton(a)) for a in (src_ip, dst_ip))
    h = saddr ^ ((daddr * K_DADDR) & M32) ^ number
    if number in WITH_PORTS and not fragment:
        h ^= (_word(struct.pack("!HH", sport, dport)) * K_PORTS) & M32
    h ^= h >> 16
    h = (h * FMIX1) & M32
    h ^= h >> 13
    h = (h * FMIX2) & M32
    h ^= h >> 16
    return h or 1


def _word(four: bytes) -> int:
    return struct.unpack("=I", four)[0]


# --- the program -----------------------------------------------------------------------------
# eBPF encoding: opcode, dst/src registers, 16-bit offset, 32-bit immediate.
R0, R1, R2, R3, R4, R6, R7, R8, FP = 0, 1, 2, 3, 4, 6, 7, 8, 10
SKB_MARK, SKB_PROTOCOL = 8, 16  # offsets in struct __sk_buff
HELPER_SKB_LOAD_BYTES, HELPER_SET_HASH = 26, 48
IP_BUF, PORTS_BUF = -32, -8  # stack: the IPv4 header, the transport ports


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    if imm > 0x7FFFFFFF:
        imm -= 1 << 32
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov64(dst: int, src: int) -> bytes:
    return _insn(0xBF, dst, src)


def mov64_imm(dst: int, imm: int) -> bytes:
    return _insn(0xB7, dst, imm=imm)


def add64_imm(dst: int, imm: int) -> bytes:
    return _insn(0x07, dst, imm=imm)


def alu32_imm(op: str, dst: int, imm: int) -> bytes:
    return _insn(
        {"add": 0x04, "mul": 0x24, "or": 0x44, "and": 0x54, "lsh": 0x64, "rsh": 0x74, "mov": 0xB4}[op], dst, imm=imm
    )


def alu32(op: str, dst: int, src: int) -> bytes:
    return _insn({"xor": 0xAC, "mov": 0xBC}[op], dst, src)


def load(size: str, dst: int, src: int, off: int) -> bytes:
    return _insn({"w": 0x61, "h": 0x69, "b": 0x71}[size], dst, src, off)


def store_w(dst: int, src: int, off: int) -> bytes:
    return _insn(0x63, dst, src, off)


def jump_if(op: str, dst: int, imm: int, skip: int) -> bytes:
    return _insn({"eq": 0x15, "ne": 0x55}[op], dst, off=skip, imm=imm)


def jump(skip: int) -> bytes:
    return _insn(0x05, off=skip)


def call(helper: int) -> bytes:
    return _insn(0x85, imm=helper)


EXIT = _insn(0x95)


def _load_bytes(offset_reg_setup: list[bytes], to: int, length: int) -> list[bytes]:
    """bpf_skb_load_bytes(skb, offset, fp + to, length); the offset is set by the given code."""
    setup = [mov64(R1, R6), *offset_reg_setup, mov64(R3, FP), add64_imm(R3, to), mov64_imm(R4, length)]
    return [*setup, call(HELPER_SKB_LOAD_BYTES)]


def _mix() -> list[bytes]:
    """r7 = fmix32(r7), never 0."""
    out: list[bytes] = []
    for shift, multiplier in ((16, FMIX1), (13, FMIX2), (16, None)):
        out += [alu32("mov", R2, R7), alu32_imm("rsh", R2, shift), alu32("xor", R7, R2)]
        if multiplier is not None:
            out.append(alu32_imm("mul", R7, multiplier))
    return [*out, jump_if("ne", R7, 0, 1), alu32_imm("mov", R7, 1)]


@cache
def program() -> bytes:
    """The eBPF program (sched_cls, direct action): mark the packet, set its flow hash."""
    ip_proto = socket.htons(0x0800)
    not_fragment = struct.unpack("=H", struct.pack("!H", 0x3FFF))[0]  # MF flag and offset
    head = [
        mov64(R6, R1),
        load("w", R2, R6, SKB_MARK),
        alu32_imm("or", R2, OVERLAY_MARK),
        store_w(R6, R2, SKB_MARK),
        load("w", R2, R6, SKB_PROTOCOL),
    ]
    header = _load_bytes([mov64_imm(R2, ETH_HLEN)], IP_BUF, 20)
    words = [
        load("w", R7, FP, IP_BUF + 12),  # saddr
        load("w", R2, FP, IP_BUF + 16),  # daddr
        alu32_imm("mul", R2, K_DADDR),
        alu32("xor", R7, R2),
        load("b", R8, FP, IP_BUF + 9),  # protocol
        alu32("xor", R7, R8),
    ]
    ports_offset = [load("b", R2, FP, IP_BUF), alu32_imm("and", R2, 0x0F), alu32_imm("lsh", R2, 2)]
    ports_offset.append(alu32_imm("add", R2, ETH_HLEN))
    ports = [
        *_load_bytes(ports_offset, PORTS_BUF, 4),
        jump_if("ne", R0, 0, 3),
        load("w", R2, FP, PORTS_BUF),
        alu32_imm("mul", R2, K_PORTS),
        alu32("xor", R7, R2),
    ]
    gate = [load("h", R2, FP, IP_BUF + 6), alu32_imm("and", R2, not_fragment), jump_if("ne", R2, 0, len(ports))]
    proto_gate = [jump_if("eq", R8, 6, 2), jump_if("eq", R8, 17, 1), jump(len(gate) + len(ports))]
    tail = [*_mix(), mov64(R1, R6), mov64(R2, R7), call(HELPER_SET_HASH)]
    body = [*header, jump_if("ne", R0, 0, 0), *words, *proto_gate, *gate, *ports, *tail]
    # The load's failure skips everything after it: fill in that jump now that the length is known.
    at = len(header)
    body[at] = jump_if("ne", R0, 0, len(body) - at - 1)
    code = [*head, jump_if("ne", R2, ip_proto, len(body)), *body, mov64_imm(R0, 0), EXIT]
    return b"".join(code)


@cache
def program_id() -> str:
    """The program's name with a digest of its code: what the tc filter is named, and compared."""
    return f"{PROGRAM_NAME}-{hashlib.sha1(program()).hexdigest()[:8]}"


DEFAULT_PORT_RANGE = (32768, 60999)  # net.ipv4.ip_local_port_range of a new namespace


def outer_source_port(flow_hash: int, port_range: tuple[int, int] = DEFAULT_PORT_RANGE) -> int:
    """The VXLAN device's outer UDP source port for a packet with this flow hash
    (``udp_flow_src_port``; the device's own range is unset, so the namespace's local range)."""
    low, high = port_range
    flow_hash ^= (flow_hash << 16) & M32
    return ((flow_hash * (high - low)) >> 32) + low


def port_range(sysctls: dict[str, str]) -> tuple[int, int]:
    value = sysctls.get("net.ipv4.ip_local_port_range")
    if not value:
        return DEFAULT_PORT_RANGE
    low, high = (int(v) for v in value.split())
    return low, high

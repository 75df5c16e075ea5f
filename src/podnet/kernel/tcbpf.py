"""A tc program on a device's egress: loaded through the ``bpf()`` syscall, attached over netlink.

podnet attaches one program (``plan.flowhash``) to the egress of each node's ``vxlan0``: a
``clsact`` qdisc and one direct-action ``bpf`` filter named after the program and a digest of
its code, so that reading the filter's name back says whether the kernel runs this very code.
The program's file descriptor is needed only while the filter is created; the filter holds
the program after that.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from pyroute2.netlink.exceptions import NetlinkError

from podnet.errors import KernelError

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}
EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
LICENSE = b"GPL"
LOG_SIZE = 1 << 16


def load(code: bytes, name: str) -> int:
    """A sched_cls program's file descriptor; the verifier's log in the error if it refuses."""
    number = SYSCALL_BPF.get(platform.machine())
    if number is None:
        raise KernelError(f"loading a tc program: no bpf() syscall number known for {platform.machine()}")
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(LICENSE)
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = bytearray(128)
    fields = (
        (0, 4, BPF_PROG_TYPE_SCHED_CLS),
        (4, 4, len(code) // 8),
        (8, 8, ctypes.addressof(insns)),
        (16, 8, ctypes.addressof(license_)),
        (24, 4, 1),  # log level: say why, if refused
        (28, 4, LOG_SIZE),
        (32, 8, ctypes.addressof(log)),
    )
    for offset, size, value in fields:
        attr[offset : offset + size] = value.to_bytes(size, "little")
    attr[48 : 48 + 15] = name.encode()[:15].ljust(15, b"\0")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, BPF_PROG_LOAD, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        why = log.value.decode(errors="replace").strip().splitlines()
        raise KernelError(
            f"the kernel refused tc program {name}: {os.strerror(err)}" + (f" ({why[-1]})" if why else "")
        )
    return fd


def attach_egress(ipr, ifindex: int, program_id: str, code: bytes) -> None:
    """Run the program on ``ifindex``'s egress, replacing whatever filter was there."""
    fd = load(code, program_id.split("-")[0])
    try:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        detach_egress(ipr, ifindex)
        ipr.tc("add-filter", "bpf", ifindex, ":1", fd=fd, name=program_id, parent=EGRESS, classid=1, direct_action=True)
    finally:
        os.close(fd)


def detach_egress(ipr, ifindex: int) -> None:
    try:
        ipr.tc("del-filter", index=ifindex, parent=EGRESS)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def egress_program(ipr, ifindex: int) -> str | None:
    """The name of the bpf filter on ``ifindex``'s egress (podnet names it after its program)."""
    try:
        filters = ipr.get_filters(index=ifindex, parent=EGRESS)
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.EINVAL):
            return None
        raise
    for f in filters:
        options = f.get_attr("TCA_OPTIONS")
        name = options.get_attr("TCA_BPF_NAME") if options is not None else None
        if name:
            return name
    return None

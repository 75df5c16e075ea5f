"""One rtnetlink socket per namespace, opened from inside it, with a name -> ifindex cache.

A netlink socket stays bound to the namespace it was created in, so we enter the namespace
once, open the socket, and come back: no helper process per namespace (pyroute2's ``NetNS``
forks one, which costs about three times as much per pod).
"""

from __future__ import annotations

import os
import socket

from pyroute2 import IPRoute

from podnet.kernel import netns, rtdump


class Session:
    _rt: socket.socket | None = None  # a raw rtnetlink socket for dumps (kernel.rtdump), opened on use

    def __init__(self, name: str, fresh: bool = False) -> None:
        self.name = name
        with netns.entered(name):
            self.ipr = IPRoute()
        self.fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
        # In a namespace we just created the only link is lo, index 1.
        self.index: dict[str, int] = {"lo": 1} if fresh else {}
        self._complete = fresh

    def refresh(self) -> None:
        self.index = {name: index for index, name in rtdump.link_names(self.rt).items()}
        self._complete = True

    def ifindex(self, ifname: str) -> int:
        if ifname not in self.index:
            self.refresh()
        try:
            return self.index[ifname]
        except KeyError:
            raise LookupError(f"{self.name}: no interface {ifname}") from None

    def forget_index(self, ifname: str) -> None:
        """A link appeared here with an index we did not choose: the map is no longer complete."""
        self.index.pop(ifname, None)
        self._complete = False

    def next_free_index(self) -> int:
        if not self._complete:
            self.refresh()
        return max(self.index.values(), default=1) + 1

    @property
    def rt(self) -> socket.socket:
        if self._rt is None:
            self._rt = rtdump.socket_in(self.fd)
        return self._rt

    def close(self) -> None:
        self.ipr.close()
        if self._rt is not None:
            self._rt.close()
        os.close(self.fd)


class Sessions:
    """Lazily opened sessions, closed together."""

    def __init__(self) -> None:
        self._open: dict[str, Session] = {}

    def get(self, name: str, fresh: bool = False) -> Session:
        s = self._open.get(name)
        if s is None:
            s = self._open[name] = Session(name, fresh=fresh)
        return s

    def forget(self, name: str) -> None:
        s = self._open.pop(name, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

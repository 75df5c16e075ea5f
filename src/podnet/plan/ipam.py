"""Address allocation: stable across runs, lowest free first, never two owners for one address.

Allocations are plain ``{kind: {owner: value}}`` dicts so that the store can persist them and
the planner stays pure: it gets the previous allocations and returns the new ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator

Allocations = dict[str, dict[str, str]]


def allocate(
    owners: Iterable[str],
    previous: dict[str, str],
    candidates: Iterator[str],
    valid: set[str] | Callable[[str], bool] | None = None,
) -> dict[str, str]:
    """Give each owner a value: its previous one if still valid and unique, else the next free.

    ``valid`` is a set of acceptable values or a predicate (for ranges too big to list).
    """

    def ok(value: str) -> bool:
        if valid is None:
            return True
        return valid(value) if callable(valid) else value in valid

    owners = list(owners)
    result: dict[str, str] = {}
    taken: set[str] = set()
    for owner in owners:
        prev = previous.get(owner)
        if prev is not None and prev not in taken and ok(prev):
            result[owner] = prev
            taken.add(prev)
    for owner in owners:
        if owner in result:
            continue
        for value in candidates:
            if value not in taken:
                result[owner] = value
                taken.add(value)
                break
        else:
            raise _Exhausted(owner)
    return result


class _Exhausted(Exception):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


Exhausted = _Exhausted


def hosts(net: ipaddress.IPv4Network, skip_first: int = 0) -> list[str]:
    """Usable host addresses of ``net`` in order, leaving out the first ``skip_first``."""
    return [str(h) for h in list(net.hosts())[skip_first:]]

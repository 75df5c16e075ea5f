"""Pause Python's cycle collector while building large, acyclic structures.

A plan for 10,000 Services holds about 100,000 live objects; while it builds 100,000 more
(strings, tuples, sets), every full collection walks all of them for cycles that are not
there: measured, a third of the time of building a node's table. The collector is paused
for that build and for encoding the kernel batch, and switched back on after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

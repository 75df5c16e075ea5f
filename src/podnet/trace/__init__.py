"""The life of a packet: walk it through a State, hop by hop, and (with --verify) prove it."""

from podnet.trace.model import Hop, Packet, TraceResult
from podnet.trace.walk import Tracer

__all__ = ["Hop", "Packet", "TraceResult", "Tracer"]

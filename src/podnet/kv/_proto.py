"""podnet's store values to etcd's v3 protocol messages and back (aetcd's generated bindings)."""

from __future__ import annotations

from aetcd import rpc

from podnet.kv.model import (
    Compare,
    Delete,
    Event,
    EventKind,
    Get,
    KeyValue,
    Op,
    Operation,
    Put,
    Target,
    prefix_end,
)

_RESULTS = {
    Op.EQUAL: rpc.Compare.EQUAL,
    Op.NOT_EQUAL: rpc.Compare.NOT_EQUAL,
    Op.LESS: rpc.Compare.LESS,
    Op.GREATER: rpc.Compare.GREATER,
}


def key_value(kv: rpc.KeyValue) -> KeyValue:
    return KeyValue(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def event(ev: rpc.Event) -> Event:
    kind = EventKind.DELETE if ev.type == rpc.Event.DELETE else EventKind.PUT
    return Event(kind, key_value(ev.kv))


def range_request(
    key: str, *, prefix: bool = False, revision: int = 0, limit: int = 0, start: str | None = None
) -> rpc.RangeRequest:
    request = rpc.RangeRequest(key=(start if start is not None else key).encode(), revision=revision, limit=limit)
    if prefix:
        request.range_end = prefix_end(key).encode()
    return request


def compare(c: Compare) -> rpc.Compare:
    message = rpc.Compare(key=c.key.encode(), result=_RESULTS[c.op])
    if c.range_end is not None:
        message.range_end = c.range_end.encode()
    if c.target is Target.VALUE:
        message.target = rpc.Compare.VALUE
        message.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    elif c.target is Target.VERSION:
        message.target = rpc.Compare.VERSION
        message.version = int(c.value)
    elif c.target is Target.CREATE:
        message.target = rpc.Compare.CREATE
        message.create_revision = int(c.value)
    elif c.target is Target.MOD:
        message.target = rpc.Compare.MOD
        message.mod_revision = int(c.value)
    else:
        message.target = rpc.Compare.LEASE
        message.lease = int(c.value)
    return message


def put_request(p: Put) -> rpc.PutRequest:
    return rpc.PutRequest(key=p.key.encode(), value=p.value, lease=p.lease)


def delete_request(d: Delete) -> rpc.DeleteRangeRequest:
    request = rpc.DeleteRangeRequest(key=d.key.encode())
    if d.prefix:
        request.range_end = prefix_end(d.key).encode()
    return request


def request_op(op: Operation) -> rpc.RequestOp:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=put_request(op))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=delete_request(op))
    if isinstance(op, Get):
        return rpc.RequestOp(request_range=range_request(op.key, prefix=op.prefix))
    raise TypeError(f"not a store operation: {op!r}")


def reads(response: rpc.TxnResponse) -> tuple[tuple[KeyValue, ...], ...]:
    """What each Get of the branch that ran read, in order."""
    out = []
    for r in response.responses:
        if r.WhichOneof("response") == "response_range":
            out.append(tuple(key_value(kv) for kv in r.response_range.kvs))
    return tuple(out)

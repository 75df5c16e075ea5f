"""Make etcd's users and roles what :mod:`podnet.kv.access` says, then turn authentication on.

Idempotent: missing roles and users are added, missing permissions granted and extra ones
revoked, so running it again after a node joined (or a crash half-way) converges. Users have
no password: etcd knows them only by the common name of their client certificate. The caller
must be ``root`` (before authentication is enabled, any client with a certificate of the
cluster's CA is).
"""

from __future__ import annotations

from aetcd import rpc

from podnet.kv.access import Access, Grant, Role
from podnet.kv.errors import PermissionDenied, Refused
from podnet.kv.etcd import EtcdStore
from podnet.kv.model import prefix_end


def _permission(grant: Grant) -> tuple[int, bytes, bytes]:
    return grant.mode.value, grant.key.encode(), prefix_end(grant.key).encode() if grant.prefix else b""


async def _auth(store: EtcdStore, what: str, method: str, request: object) -> object:
    response, _ = await store.members.call(what, lambda ch, t: getattr(rpc.AuthStub(ch), method)(request, timeout=t))
    return response


async def _existing(store: EtcdStore, what: str, method: str, request: object) -> object | None:
    """The answer of a Get, None when etcd says the role or user does not exist."""
    try:
        return await _auth(store, what, method, request)
    except (Refused, PermissionDenied) as exc:  # etcd: "role name not found", "user name not found"
        if "not found" in str(exc):
            return None
        raise


async def ensure_role(store: EtcdStore, role: Role) -> None:
    got = await _existing(store, f"role get {role.name}", "RoleGet", rpc.AuthRoleGetRequest(role=role.name))
    if got is None:
        await _auth(store, f"role add {role.name}", "RoleAdd", rpc.AuthRoleAddRequest(name=role.name))
        have: set[tuple[int, bytes, bytes]] = set()
    else:
        have = {(p.permType, p.key, p.range_end) for p in got.perm}  # type: ignore[attr-defined]
    want = {_permission(g) for g in role.grants}
    for mode, key, end in sorted(want - have):
        perm = rpc.Permission(permType=mode, key=key, range_end=end)
        await _auth(
            store,
            f"grant {role.name}",
            "RoleGrantPermission",
            rpc.AuthRoleGrantPermissionRequest(name=role.name, perm=perm),
        )
    for _, key, end in sorted(have - want):
        await _auth(
            store,
            f"revoke {role.name}",
            "RoleRevokePermission",
            rpc.AuthRoleRevokePermissionRequest(role=role.name, key=key, range_end=end),
        )


async def ensure_user(store: EtcdStore, name: str, roles: tuple[str, ...]) -> None:
    got = await _existing(store, f"user get {name}", "UserGet", rpc.AuthUserGetRequest(name=name))
    if got is None:
        options = rpc.UserAddOptions(no_password=True)
        await _auth(store, f"user add {name}", "UserAdd", rpc.AuthUserAddRequest(name=name, options=options))
        have: set[str] = set()
    else:
        have = set(got.roles)  # type: ignore[attr-defined]
    for role in sorted(set(roles) - have):
        await _auth(
            store, f"grant {role} to {name}", "UserGrantRole", rpc.AuthUserGrantRoleRequest(user=name, role=role)
        )


async def ensure(store: EtcdStore, access: Access) -> None:
    """Roles, then users, then authentication on (etcd requires the root user for that)."""
    for role in access.roles:
        await ensure_role(store, role)
    for user in access.users:  # root's role is etcd's own, built in
        await ensure_user(store, user.name, user.roles)
    await _auth(store, "auth enable", "AuthEnable", rpc.AuthEnableRequest())

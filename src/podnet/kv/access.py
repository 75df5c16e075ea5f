"""Who may read and write what, as data: etcd users and roles for one cluster.

A client is known to etcd by its certificate's common name (``--client-cert-auth`` with auth
enabled). podnet's own commands use ``root`` (etcd's administrator, needed to compact and to
manage users); each node agent uses ``system:node:<node>``, the name Kubernetes gives its
kubelets (and a node called ``root`` cannot become the administrator). An agent's role
lets it read its cluster's prefix and write only the keys of its own node
(:mod:`podnet.kv.layout`); every grant is an exact key or a prefix ending in ``/``, so
``node-1`` never reaches ``node-10``'s keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from podnet.kv.layout import Keys

ADMIN = "root"  # etcd's built-in administrator user and role


class Mode(enum.Enum):
    READ = 0  # etcd's Permission.READ
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True)
class Grant:
    key: str
    prefix: bool
    mode: Mode


@dataclass(frozen=True)
class Role:
    name: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]


def node_user(node: str) -> str:
    return f"system:node:{node}"


def node_role(cluster: str, node: str) -> Role:
    keys = Keys(cluster)
    return Role(
        node_user(node),
        (
            Grant(keys.prefix, True, Mode.READ),
            Grant(keys.node(node), False, Mode.READWRITE),
            Grant(keys.podcidr(node), False, Mode.READWRITE),
            Grant(keys.ipam(node), True, Mode.READWRITE),
            Grant(keys.status(node), True, Mode.READWRITE),
        ),
    )


@dataclass(frozen=True)
class Access:
    """The users and roles one cluster needs (etcd's ``root`` role is built in)."""

    roles: tuple[Role, ...]
    users: tuple[User, ...]


def access(cluster: str, nodes: tuple[str, ...]) -> Access:
    roles = tuple(node_role(cluster, n) for n in sorted(nodes))
    users = (User(ADMIN, (ADMIN,)), *(User(r.name, (r.name,)) for r in roles))
    return Access(roles, users)

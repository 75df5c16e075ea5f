"""The key-value store of the distributed mode: one small interface, etcd behind it.

- ``store``: the interface (get, list at a revision, watch from a revision, transactions,
  leases); ``model``: its typed values; ``errors``: its failures, as podnet's errors.
- ``etcd``: the implementation on a real etcd cluster (gRPC, TLS, failover across members);
  ``etcd_auth``: its users and roles.
- ``layout``: the keys of a cluster; ``access``: who may write which of them; ``pki``: the
  certificates of an emulated cluster; ``config``: endpoints, credentials, timeouts.

This package is imported only by code that uses the store, and only ``etcd`` (and what it
imports) loads gRPC, only ``pki`` loads cryptography: a command that never talks to etcd
pays for neither (``tests/test_kv_model.py`` keeps it so).
"""

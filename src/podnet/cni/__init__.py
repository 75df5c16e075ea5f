"""podnet as a CNI plugin: ``podnet-cni`` (the shim a runtime executes) and ``podnet agent``.

- :mod:`podnet.cni.shim`: the plugin executable; standard library only, self-contained.
- :mod:`podnet.cni.agent`: the node daemon that serves it over a root-only Unix socket.
- :mod:`podnet.cni.node`: what the agent sets up in its namespace, from the cluster file.
- :mod:`podnet.cni.ipam`: the node's address allocations.
- :mod:`podnet.cni.netlink`: raw netlink into namespaces given by path.
- :mod:`podnet.cni.protocol`: the ADD result by spec version, and a checker of its shape.
- :mod:`podnet.cni.install`: ``podnet cni install``.

See docs/cni.md.
"""

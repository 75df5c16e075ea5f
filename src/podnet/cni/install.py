"""``podnet cni install``: put ``podnet-cni`` where runtimes look for plugins, and a conflist.

The plugin is the file :mod:`podnet.cni.shim` itself, copied with a first line naming the
system's Python with ``-I -S`` (isolated, no ``site``): it imports nothing of podnet, so it
needs no virtualenv and starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from podnet.cni import shim
from podnet.errors import UsageError

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
PLUGIN = "podnet-cni"


def python_for_plugin() -> str:
    """A real interpreter (not a pyenv shim script): the system's when there is one."""
    for candidate in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def conflist(network: str, socket_path: str, portmap: bool = False) -> dict:
    """The network's configuration list. ``cniVersion`` 1.0.0 is what runtimes built on libcni
    1.1 (podman 4, containerd 1.6/1.7) and Debian's reference plugins speak; a runtime that
    reads ``cniVersions`` picks 1.1.0 and gets GC and STATUS too."""
    plugin: dict = {"type": PLUGIN}
    if socket_path != shim.DEFAULT_SOCKET:
        plugin["agentSocket"] = socket_path
    conf: dict = {"cniVersion": "1.0.0", "name": network, "plugins": [plugin]}
    if portmap:
        # The reference portmap plugin of Debian (1.1.1) speaks up to 1.0.0 only.
        conf["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    else:
        conf["cniVersions"] = list(shim.SUPPORTED_VERSIONS)
    return conf


def install(
    network: str,
    bin_dir: str = DEFAULT_BIN_DIR,
    conf_dir: str = DEFAULT_CONF_DIR,
    socket_path: str = shim.DEFAULT_SOCKET,
    portmap: bool = False,
) -> dict:
    if not shim._valid_name(network):
        raise UsageError(f"{network!r} is not a CNI network name (a letter or digit, then letters, digits, _ . -)")
    if not socket_path.startswith("/"):
        raise UsageError(f"--socket {socket_path!r}: give an absolute path")
    bin_path = Path(bin_dir) / PLUGIN
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    source = Path(shim.__file__).read_text().split("\n", 1)[1]  # without the original first line
    tmp = bin_path.with_name(f".{PLUGIN}.{os.getpid()}")
    tmp.write_text(f"#!{python_for_plugin()} -IS\n{source}")
    tmp.chmod(0o755)
    os.replace(tmp, bin_path)  # atomic: a runtime never executes half a file
    conf_path = Path(conf_dir) / f"10-podnet-{network}.conflist"
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = conf_path.with_name(f".{conf_path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(conflist(network, socket_path, portmap), indent=2) + "\n")
    os.replace(tmp, conf_path)
    if portmap and shutil.which("portmap", path=f"{bin_dir}:/usr/lib/cni:/opt/cni/bin") is None:
        raise UsageError(f"{conf_path}: chains portmap, but no portmap plugin is in {bin_dir} or /usr/lib/cni")
    return {"plugin": str(bin_path), "conflist": str(conf_path), "network": network}

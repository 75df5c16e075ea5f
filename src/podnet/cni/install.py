"""``podnet cni install``: put ``podnet-cni`` where runtimes look for plugins, and a conflist.

The plugin is :mod:`podnet.cni.shim`, run by the system's Python with ``-I -S`` (isolated, no
``site``): it imports nothing of podnet, so it needs no virtualenv and starts in a few
milliseconds. See :func:`install_plugin` for the form it is installed in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


STUB = """#!{python} -IS
# podnet-cni, podnet's CNI plugin: runs the compiled copy of podnet/cni/shim.py beside this file
# (a script is compiled on every run; the module's bytecode is not). Installed by podnet cni install.
import sys
sys.path.insert(0, {libdir!r})
from podnet_cni import main
sys.exit(main())
"""


def install_plugin(bin_dir: Path) -> Path:
    """Put the plugin in ``bin_dir``: a five-line executable that imports the shim from its
    compiled copy in ``bin_dir/.podnet-cni/`` (compiling the 500-line shim as a script on every
    exec would cost a runtime 3 ms per container). The shim itself stays a valid stand-alone
    executable: copying src/podnet/cni/shim.py as ``podnet-cni`` works too, a little slower."""
    python = python_for_plugin()
    libdir = bin_dir / f".{PLUGIN}"
    libdir.mkdir(parents=True, exist_ok=True)
    module = libdir / "podnet_cni.py"
    _write(module, Path(shim.__file__).read_text(), 0o644)
    compiled = subprocess.run([python, "-IS", "-c", COMPILE, str(module)], capture_output=True, text=True, check=False)
    if compiled.returncode != 0:
        raise UsageError(f"{python} could not compile {module}: {compiled.stderr.strip()}")
    bin_path = bin_dir / PLUGIN
    _write(bin_path, STUB.format(python=python, libdir=str(libdir.resolve())), 0o755)
    return bin_path


COMPILE = (
    "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, "
    "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)"
)


def _write(path: Path, text: str, mode: int) -> None:
    """Atomically: a runtime never executes half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


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
    bin_path = install_plugin(Path(bin_dir))
    conf_path = Path(conf_dir) / f"10-podnet-{network}.conflist"
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    _write(conf_path, json.dumps(conflist(network, socket_path, portmap), indent=2) + "\n", 0o644)
    if portmap and shutil.which("portmap", path=f"{bin_dir}:/usr/lib/cni:/opt/cni/bin") is None:
        raise UsageError(f"{conf_path}: chains portmap, but no portmap plugin is in {bin_dir} or /usr/lib/cni")
    return {"plugin": str(bin_path), "conflist": str(conf_path), "network": network}

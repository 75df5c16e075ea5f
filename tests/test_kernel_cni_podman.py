"""A real container runtime attaches containers through podnet: podman with its CNI backend.

podman runs in the root namespace, as on a real host, and executes ``podnet-cni`` there; the
plugin only forwards to the agent, which runs in a "host" namespace created by the test, so
every link, route and rule the containers need lands in that namespace and in the
containers' own (which podman creates). The root namespace does not change (checked).

Made to fit this machine kind: podman's own ``crun`` fails on the hybrid cgroup layout, so
the runtime is ``runc`` (with its state under the test's directory); the default ulimits
exceed the machine's hard limits, so ``nofile``/``nproc`` are set within them. podman keeps
everything under the test's directory but two caches it always writes in place
(``/var/lib/containers/cache`` when importing, ``/var/lib/cni`` for CNI results); if the test
created them, it removes them again.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest

from tests.test_kernel_cni import Agent, Lab, cluster_yaml, root_untouched, sh, wait_for

pytestmark = pytest.mark.root
__all__ = ["root_untouched"]  # a fixture this module uses

NETWORK = "podnetpm"
IMAGE = "localhost/podnet-busybox:test"
PODMAN_TRACES = ("/var/lib/containers", "/var/lib/cni", "/run/runc")
LOCK = "/run/lock/podnet-cnitest-podman.lock"
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Podman:
    lab: Lab
    agent: Agent
    base: list[str]
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def ip(self, name: str) -> str:
        out = self("inspect", name, "--format", "{{json .NetworkSettings.Networks}}").stdout
        return json.loads(out)[NETWORK]["IPAddress"]

    def http_get(self, client: str, ip: str) -> str:
        """From inside container ``client``, GET / from ip:8080 with busybox nc (its static wget
        would need glibc's resolver plugins, which a static binary cannot load)."""
        cmd = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {ip} 8080'
        return self("exec", client, "/bin/sh", "-c", cmd, check=False).stdout


def _limits() -> list[str]:
    """nofile and nproc within this machine's hard limits."""
    out = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(which)[1]
        value = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)
        out.append(f"{name}={value}:{value}")
    return out


@pytest.fixture(scope="module")
def podman(root_untouched: None) -> Iterator[Podman]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    missing = [t for t in ("podman", "runc", "conmon") if shutil.which(t) is None]
    if missing or not Path("/bin/busybox").exists():
        pytest.fail(f"the podman test needs {', '.join(missing) or 'busybox-static'}: make deps-test installs them")
    # podman's caches are machine-wide: two runs of this test at once (two checkouts, two
    # sessions) would remove them under each other. One at a time.
    lock = _exclusive(LOCK)
    existed = {p: os.path.exists(p) for p in PODMAN_TRACES}
    # conmon detaches from podman; as a subreaper this process inherits it and can reap it,
    # so that no zombie of the test waits for the machine's init.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pm_netns_before = {n for n in os.listdir("/run/netns") if n.startswith("netns-")}
    lab = Lab()
    pm: Podman | None = None
    try:
        host = lab.plug("node-1", "172.31.0.2")
        agent = lab.agent("node-1", host, cluster_yaml(f"pm{lab.prefix[14:20]}", nodes=1))
        tmp = lab.tmp / "podman"
        # The plugin and its conflist, installed the way an operator installs them.
        installed = sh(sys.executable, "-m", "podnet", "cni", "install", "--network", NETWORK, "--bin-dir",
                       str(tmp / "bin"), "--conf-dir", str(tmp / "net.d"), "--socket", agent.socket, "-o", "json")  # fmt: skip
        assert json.loads(installed.stdout)["network"] == NETWORK
        # runc keeps its state in /run/runc unless told otherwise, also when podman's cleanup
        # process calls it: a wrapper gives every call the test's directory.
        runc = tmp / "runc-wrapper"
        runc.write_text(f'#!/bin/sh\nexec {shutil.which("runc")} --root {tmp / "runc"} "$@"\n')
        runc.chmod(0o755)
        conf = tmp / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f"default_ulimits = {json.dumps(_limits())}\n"
            "[engine]\n"
            'runtime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n'
            "[engine.runtimes]\n"
            f'runc = ["{runc}"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{tmp / "bin"}"]\n'
            f'network_config_dir = "{tmp / "net.d"}"\n'
        )
        base = ["podman", "--root", str(tmp / "root"), "--runroot", str(tmp / "runroot"), "--tmpdir",
                str(tmp / "libpod"), "--storage-driver", "vfs"]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CONTAINERS_CONF": str(conf)}
        pm = Podman(lab, agent, base, env)
        _import_busybox(pm, tmp / "rootfs")
        yield pm
    finally:
        problems: list[str] = []
        if pm is not None:
            pm("rm", "--all", "--force", "--time", "0", check=False)
            left = pm("ps", "--all", "--quiet", check=False).stdout.split()
            if left:
                problems.append(f"podman containers left: {left}")
        problems += lab.close()
        # conmon outlives a removed container by a moment; nothing of the test's may stay.
        try:
            wait_for("podman's processes to exit", lambda: not _processes_under(lab.tmp), 30)
        except AssertionError as exc:
            problems.append(f"{exc}: {_processes_under(lab.tmp)}")
        leaked = {n for n in os.listdir("/run/netns") if n.startswith("netns-")} - pm_netns_before
        if leaked:
            problems.append(f"podman namespaces left: {sorted(leaked)}")
        try:
            wait_for("conmon to be reaped", _reap_conmons, 30)
        except AssertionError as exc:
            problems.append(str(exc))
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for path, was_there in existed.items():
            if not was_there and os.path.exists(path):
                shutil.rmtree(path)  # podman's caches, created by this test
        os.unlink(LOCK)  # while held: a test waiting on it notices and locks a new file
        lock.close()
        assert not problems, problems


def _exclusive(path: str) -> TextIO:
    """An flock on ``path`` that its holder may unlink: retried until the file locked is the
    file at the path (not one a previous holder unlinked)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)  # /run/lock is not on every host
    while True:
        f = open(path, "a")  # noqa: SIM115 - held until the end of the fixture
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def _reap_conmons() -> bool:
    """Reap the conmon processes this process inherited; True when none is left."""
    left = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if comm == "conmon" and int(rest[1]) == os.getpid():
            pid, _ = os.waitpid(int(entry), os.WNOHANG)
            left = left or pid == 0
    return not left


def _processes_under(path: Path) -> list[int]:
    """Live processes whose command line mentions ``path`` (conmon, podman, runc of this test)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry))
    return found


def _import_busybox(pm: Podman, rootfs: Path) -> None:
    """An image from a rootfs built here: Debian's static busybox and a page to serve."""
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "www").mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "httpd", "nc", "sleep", "ip", "cat", "printf"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text("hello from podnet\n")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    proc = subprocess.run([*pm.base, "import", "-", IMAGE], input=tar, env=pm.env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def test_two_podman_containers_talk_through_podnet(podman: Podman) -> None:
    pm, agent = podman, podman.agent
    pm("run", "-d", "--name", "web", "--network", NETWORK, IMAGE, "/bin/httpd", "-f", "-p", "8080", "-h", "/www")
    pm("run", "-d", "--name", "client", "--network", NETWORK, IMAGE, "/bin/sleep", "3600")
    web, client = pm.ip("web"), pm.ip("client")
    assert web.startswith("10.244.0.") and client.startswith("10.244.0.") and web != client

    # The agent holds exactly these two attachments, keyed by podman's container IDs.
    ids = {pm("inspect", n, "--format", "{{.Id}}").stdout.strip(): n for n in ("web", "client")}
    held = {a.container_id: a.ip for a in agent.attachments()}
    assert held == {cid: pm.ip(name) for cid, name in ids.items()}
    # Their host ends are on the bridge of the test's host namespace.
    ports = sh("ip", "-n", agent.host, "-o", "link", "show", "master", "cni0").stdout
    assert ports.count("veth") == 2

    assert "hello from podnet" in pm.http_get("client", web)

    # Restarting the agent leaves the containers connected, and finds its attachments again.
    agent.stop()
    assert "hello from podnet" in pm.http_get("client", web)
    agent.start()
    assert "made" not in agent.log, agent.log
    assert "hello from podnet" in pm.http_get("client", web)
    assert {a.container_id for a in agent.attachments()} == set(ids)

    # podman rm releases the addresses (the agent's DEL), and the interfaces go.
    pm("rm", "--force", "--time", "0", "web", "client")
    assert agent.attachments() == []
    wait_for("the host ends to be deleted",
             lambda: "veth" not in sh("ip", "-n", agent.host, "-o", "link", "show", "master", "cni0").stdout)  # fmt: skip
    # And a new container gets an address again.
    pm("run", "--rm", "--network", NETWORK, IMAGE, "/bin/ip", "-4", "addr", "show", "eth0")
    assert agent.attachments() == []

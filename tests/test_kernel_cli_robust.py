"""Every command against a running cluster whose state is damaged, as a user who may not write,
and out of file descriptors: a result or one line of error, never a traceback, nothing half
done. And the commands over several clusters: `status` lists them, `down --all` removes them.
Kernel tests (root)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet import names, store
from podnet.kernel import netns
from podnet.runtime import process
from tests.conftest import REPO, assert_observed_equals_plan, cluster_yaml, one_line_error, run_cli, unique_name

NOBODY = 65534


def _pods(*names_: str) -> list[dict]:
    return [{"name": n, "node": f"node-{i % 2 + 1}", "ports": [(80, "TCP")]} for i, n in enumerate(names_)]


@dataclass
class Running:
    name: str
    file: Path  # the spec it runs
    changed: Path  # the spec with one pod more: what a failed `up` must not create
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env)


def _gone(name: str) -> list[str]:
    """What of cluster ``name`` is still on the machine (any state directory)."""
    left = netns.list_prefixed(names.cluster_prefix(name)) + [str(p) for p in process.find(name)]
    return left + [str(p) for p in (store.owner_file(name), store.lock_file(name)) if p.exists()]


@contextlib.contextmanager
def _cluster(root: Path, where: Path, pods: list[dict]) -> Iterator[Running]:
    name = unique_name("r")
    file, changed = where / f"{name}.yaml", where / f"{name}-more.yaml"
    file.write_text(cluster_yaml(name, pods=pods))
    changed.write_text(cluster_yaml(name, pods=[*pods, *_pods("extra")]))
    c = Running(name, file, changed, {"PODNET_STATE_DIR": str(root)})
    try:
        run_cli("up", str(file), env=c.env, check=True)
        yield c
    finally:
        c.cli("down", "-c", name)
        assert _gone(name) == []


# -- a damaged state file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A state directory on a file system of its own, small enough to fill."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (network namespaces); run `make test` as root")
    root = tmp_path_factory.mktemp("small-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "podnet-test", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


@pytest.fixture(scope="module")
def running(small_disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with _cluster(small_disk, tmp_path_factory.mktemp("specs"), _pods("a", "b")) as c:
        yield c


def _garbage(c: Running, path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _bad_value(c: Running, path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE alloc SET value = '10.244.0.0/33' WHERE kind = 'node_cidr' AND owner = 'node-1'")
    db.commit()
    db.close()


def _not_a_file(c: Running, path: Path) -> None:
    path.unlink()
    path.mkdir()


def _read_only(c: Running, path: Path) -> None:
    """The cluster's directory read-only (a read-only bind mount over it: the daemons' open logs
    keep the file system itself busy)."""
    where = str(path.parent)
    subprocess.run(["mount", "--bind", where, where], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", where], check=True)


def _full(c: Running, path: Path) -> None:
    with open(path.parent.parent / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)


def _mounted(where: Path) -> bool:
    """Whether something is mounted on ``where`` (a bind mount shares its parent's device)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(where) for line in f)


def _repair(c: Running, path: Path, saved: bytes) -> None:
    root = path.parent.parent
    if _mounted(path.parent):
        subprocess.run(["umount", str(path.parent)], check=True)
    (root / "filler").unlink(missing_ok=True)
    if path.is_dir():
        path.rmdir()
    for extra in path.parent.glob("state.db-*"):
        extra.unlink()
    path.write_bytes(saved)


DAMAGE: dict[str, Callable[[Running, Path], None]] = {
    "garbage": _garbage,
    "bad value": _bad_value,
    "not a file": _not_a_file,
    "read-only": _read_only,
    "full disk": _full,
}
UNREADABLE = {"garbage": "it is damaged", "bad value": "it is damaged", "not a file": "it is not a file"}
UNWRITABLE = {"read-only": "it is read-only", "full disk": "the disk is full"}


def _commands(c: Running) -> dict[str, tuple[str, ...]]:
    n = c.name
    return {
        "status": ("status",),
        "status -c": ("status", "-c", n, "-o", "json"),
        "up": ("up", str(c.changed)),
        "up --dry-run": ("up", "--dry-run", str(c.changed)),
        "exec": ("exec", "-c", n, "a", "--", "true"),
        "trace -c": ("trace", "-c", n, "a", "b"),
        "trace -f": ("trace", "-f", str(c.file), "a", "b"),
        "probe": ("probe", "-c", n, "--timeout", "0.5"),
        "routes": ("routes", "-c", n, "node-1"),
        "fault": ("fault", "-c", n),
        "diagram -c": ("diagram", "-c", n),
        "diagram -f": ("diagram", "-f", str(c.file)),
    }


READS = {"status", "status -c", "exec", "trace -c", "probe", "routes", "fault", "diagram -c"}
PLANS = {"trace -f", "diagram -f"}  # no root, no state needed: a fresh plan, said in one line


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_against_a_damaged_state_file_says_one_line(running: Running, damage: str) -> None:
    path = Path(running.env["PODNET_STATE_DIR"]) / running.name / "state.db"
    saved = path.read_bytes()
    before = json.loads(running.cli("up", "--dry-run", "-o", "json", str(running.file)).stdout)["details"]
    DAMAGE[damage](running, path)
    try:
        results = {what: running.cli(*args) for what, args in _commands(running).items()}
        extra_created = netns.exists(names.pod_netns(running.name, "default", "extra"))
    finally:
        _repair(running, path, saved)
    for what, proc in results.items():
        assert "Traceback" not in proc.stdout + proc.stderr, (what, proc.stderr)
        if what == "up" or (what in READS | {"up --dry-run"} and damage in UNREADABLE):
            said = one_line_error(proc)
            assert proc.returncode == 1 and f"state of cluster '{running.name}'" in said, (what, said)
            assert (UNREADABLE | UNWRITABLE)[damage] in said, (what, said)
        elif what in PLANS and damage in UNREADABLE:
            assert proc.returncode == 0, (what, proc.stderr)
            warning = proc.stderr.strip().splitlines()
            assert len(warning) == 1 and "planned afresh" in warning[0], (what, proc.stderr)
        else:  # the state can still be read: the command works
            assert proc.returncode == 0, (what, proc.stderr)
    assert not extra_created  # the failed `up` changed nothing: what an `up` would do is what it was
    assert json.loads(running.cli("up", "--dry-run", "-o", "json", str(running.file)).stdout)["details"] == before


def test_a_first_up_that_cannot_save_its_state_leaves_nothing(running: Running, tmp_path: Path) -> None:
    root = Path(running.env["PODNET_STATE_DIR"])
    name = unique_name("r")
    file = tmp_path / "new.yaml"
    file.write_text(cluster_yaml(name, pods=_pods("a")))
    _full(running, root / running.name / "state.db")
    try:
        said = one_line_error(running.cli("up", str(file)))
    finally:
        (root / "filler").unlink()
    assert "the disk is full" in said or "no space left" in said, said
    assert _gone(name) == [] and not (root / name).exists()


def test_down_removes_a_cluster_whose_state_is_damaged(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with _cluster(root, tmp_path, _pods("a")) as c:
        _garbage(c, root / c.name / "state.db")
        done = c.cli("down", "-c", c.name)
        assert done.returncode == 0 and "removed its state" in done.stdout, done.stderr
        assert _gone(c.name) == [] and not (root / c.name).exists()


# -- as a user who may read, not write ------------------------------------------------------------


def _python_for_nobody() -> list[str]:
    """An interpreter user nobody may run, of this Python's version, with podnet and its
    dependencies on its path (this one may live under /root)."""
    path = os.pathsep.join([str(REPO / "src"), sysconfig.get_paths()["purelib"]])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}", "/usr/bin/python3"):
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", f"PYTHONPATH={path}"]
        probe = subprocess.run([*argv, python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.decode().strip() == str(sys.version_info[:2]):
            return [*argv, python]
    pytest.fail(f"no Python {version} that user nobody may run (tried {sys.executable}, /usr/bin/python{version})")


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Path]:
    """A directory everyone may read (pytest's own temporary directories are root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="podnet-public-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_read_only_commands_work_for_a_user_who_may_not_write(public: Path) -> None:
    python = _python_for_nobody()
    root = public / "state"
    first = [{"name": "z", "node": "node-1"}, {"name": "a", "node": "node-1", "ports": [(80, "TCP")]}]
    with _cluster(root, public, [*first, {"name": "b", "node": "node-2"}]) as c:
        c.file.write_text(cluster_yaml(c.name, pods=[first[1], {"name": "b", "node": "node-2"}]))
        run_cli("up", str(c.file), env=c.env, check=True)  # a keeps the address a fresh plan would not give it

        def nobody(*args: str) -> subprocess.CompletedProcess:
            argv = [*python, "-m", "podnet", *args]
            return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **c.env}, timeout=120)

        assert nobody("--version").returncode == 0 and "podnet" in nobody("--help").stdout
        pods = {p["name"]: p["ip"] for p in json.loads(nobody("status", "-c", c.name, "-o", "json").stdout)["pods"]}
        listed = nobody("status")  # the only cluster here: its tables
        assert listed.returncode == 0 and pods["a"] in listed.stdout, listed.stderr
        planned = nobody("trace", "-f", str(c.file), "a", "b", "-o", "json")
        assert (planned.returncode, planned.stderr) == (0, ""), planned.stderr
        assert json.loads(planned.stdout)["packet"]["src_ip"] == pods["a"] == "10.244.0.3"  # the running cluster's
        assert nobody("diagram", "-f", str(c.file)).returncode == 0
        for args in (
            ("up", "--dry-run", str(c.file)),
            ("up", str(c.file)),
            ("trace", "-c", c.name, "a", "b"),
            ("probe", "-c", c.name),
            ("exec", "-c", c.name, "a", "--", "true"),
            ("routes", "-c", c.name, "node-1"),
            ("down", "-c", c.name),
            ("down", "--all"),
        ):
            assert "needs root" in one_line_error(nobody(*args)), args

        (root / c.name).chmod(0o700)  # the state directory closed to others
        planned = nobody("trace", "-f", str(c.file), "a", "b")
        warning = planned.stderr.strip().splitlines()
        assert planned.returncode == 0 and len(warning) == 1, planned.stderr
        assert "permission denied" in warning[0] and "planned afresh" in warning[0]
        assert "permission denied" in one_line_error(nobody("status", "-c", c.name))
        root.chmod(0o700)
        assert "permission denied" in one_line_error(nobody("status"))
        assert nobody("trace", "-f", str(c.file), "a", "b").returncode == 0
        root.chmod(0o755)
        assert_observed_equals_plan_in(c)


def assert_observed_equals_plan_in(c: Running) -> None:
    with _state_dir(c.env["PODNET_STATE_DIR"]):
        assert_observed_equals_plan(c.name)


@contextlib.contextmanager
def _state_dir(path: str) -> Iterator[None]:
    old = os.environ["PODNET_STATE_DIR"]
    os.environ["PODNET_STATE_DIR"] = path
    try:
        yield
    finally:
        os.environ["PODNET_STATE_DIR"] = old


# -- out of file descriptors ------------------------------------------------------------------------


def _with_open_files(soft: int, hard: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "podnet", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )


def test_up_raises_its_open_files_limit_and_says_so_in_one_line_when_it_cannot(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with _cluster(tmp_path / "state", tmp_path, []) as c:
        c.file.write_text(cluster_yaml(c.name, pods=_pods(*(f"p{i}" for i in range(30)))))
        for _ in range(2):  # and again, over what the first one left half done
            short = _with_open_files(24, 24, "up", str(c.file), env=c.env)
            said = one_line_error(short)
            assert short.returncode == 1 and "too many open files" in said.lower(), said
        done = _with_open_files(24, hard, "up", "-o", "json", str(c.file), env=c.env)  # the default soft limit, low
        assert done.returncode == 0, done.stderr
        assert_observed_equals_plan_in(c)


# -- several clusters -------------------------------------------------------------------------------


def test_status_lists_the_clusters_and_down_all_removes_this_state_directorys(tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    with (
        _cluster(here, tmp_path, _pods("a")) as one,
        _cluster(here, tmp_path, _pods("a", "b")) as two,
        _cluster(elsewhere, tmp_path, _pods("a")) as other,
    ):
        listed = {c["name"]: c for c in json.loads(one.cli("status", "-o", "json").stdout)["clusters"]}
        for c, pods in ((one, 2), (two, 3)):  # with the DNS pod
            assert listed[c.name] | {"namespaces": 0} == {
                "name": c.name,
                "state": "up",
                "namespaces": 0,
                "nodes": 2,
                "pods": pods,
                "state_dir": os.path.realpath(here),
                "here": True,
            }
            assert listed[c.name]["namespaces"] > 0
        assert listed[other.name]["state_dir"] == os.path.realpath(elsewhere) and not listed[other.name]["here"]
        table = one.cli("status")
        assert table.returncode == 0 and table.stdout.split()[:6] == [
            "CLUSTER",
            "STATE",
            "NAMESPACES",
            "NODES",
            "PODS",
            "STATE",
        ]
        assert one.name in table.stdout and two.name in table.stdout

        removed = json.loads(one.cli("down", "--all", "-o", "json").stdout)
        assert sorted(r["cluster"] for r in removed) == sorted([one.name, two.name])
        assert _gone(one.name) == [] and _gone(two.name) == []
        assert netns.list_prefixed(names.cluster_prefix(other.name))
        with _state_dir(str(elsewhere)):
            assert_observed_equals_plan(other.name)

"""The command line without a cluster: help, version, arguments refused while parsing, Ctrl-C
at any moment of start-up, the state file's damage reported as such, recovery read from a State.

No root needed (nothing here touches a namespace).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from podnet import store
from podnet.errors import StateError
from podnet.plan import plan
from podnet.recover import recover, recover_slots
from podnet.spec import load_text

from .conftest import REPO, cluster_yaml, run_cli

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def test_help_lists_the_commands_a_user_runs_and_hides_the_daemons() -> None:
    out = run_cli("--help", check=True).stdout
    assert "SUPPRESS" not in out
    assert "netexec-daemon" not in out and "dns-daemon" not in out
    for command in ("up", "down", "status", "exec", "trace", "probe", "diagram", "routes", "fault"):
        assert f"    {command} " in out, command


def test_the_podnet_command_starts_at_the_entry_point_that_handles_ctrl_c() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["podnet"] == "podnet.__main__:main"


def test_version() -> None:
    from podnet import __version__

    proc = run_cli("--version", check=True)
    assert proc.stdout.strip() == f"podnet {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ("trace", "-f", str(QUICKSTART), "shop/web-1", "shop/web-2", "--port", "70000"),
        ("trace", "-f", str(QUICKSTART), "shop/web-1", "shop/web-2", "--port", "-1"),
        ("trace", "-f", str(QUICKSTART), "shop/web-1", "shop/web-2", "--port", "0"),
        ("trace", "-c", "nosuch", "shop/web-1", "shop/web-2", "--port", "70000", "--verify"),
        ("diagram", "-f", str(QUICKSTART), "--trace", "shop/web-1", "shop/web-2", "--port", "65536"),
        ("probe", "-c", "nosuch", "--port", "99999"),
    ],
)
def test_a_port_out_of_range_is_refused_while_parsing(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "expected a port 1-65535" in proc.stderr and "Traceback" not in proc.stderr


def test_exec_without_a_command_is_bad_input(tmp_path: Path) -> None:
    proc = run_cli("exec", "-c", "nosuch", "web-1", env={"PODNET_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: nothing to run: give a command after --, e.g. podnet exec web-1 -- ip addr"


# -- Ctrl-C ---------------------------------------------------------------------------------------

# Installed by Python at start-up (sitecustomize), before podnet's entry point runs: when the
# module KILL_AT is first imported, send this process SIGINT, as a Ctrl-C at that moment would.
# With SWALLOW set, the import that receives it swallows the KeyboardInterrupt, as pyroute2's
# plugin loader does (a bare `except:` around each plugin's import).
SITECUSTOMIZE = textwrap.dedent(
    """
    import importlib.abc, os, signal, sys

    class _CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != os.environ["KILL_AT"]:
                return None
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(3):  # the handler runs between bytecodes: here, inside the try
                    pass
            except BaseException:
                if not os.environ.get("SWALLOW"):
                    raise
            return None

    sys.meta_path.insert(0, _CtrlC())
    """
)


def _interrupted(tmp_path: Path, module: str, *args: str, swallow: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "KILL_AT": module,
        "SWALLOW": "1" if swallow else "",
        "PODNET_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [sys.executable, "-m", "podnet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        # as at a terminal: a background job of a non-interactive shell ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("module", ["rich.console", "pydantic", "podnet.cluster", "yaml"])
def test_ctrl_c_while_the_cli_is_loading_exits_130_without_a_traceback(tmp_path: Path, module: str) -> None:
    proc = _interrupted(tmp_path, module, "status", "-c", "nosuch")
    assert (proc.returncode, proc.stderr) == (130, ""), proc.stderr


@pytest.mark.parametrize("swallow", [False, True])
def test_ctrl_c_during_a_command_exits_130_even_when_an_import_swallows_it(tmp_path: Path, swallow: bool) -> None:
    # trace -f imports its renderer once the command runs, after the CLI has loaded.
    args = ("trace", "-f", str(QUICKSTART), "shop/web-1", "shop/web-2")
    assert run_cli(*args, env={"PODNET_STATE_DIR": str(tmp_path / "state")}).returncode == 0
    proc = _interrupted(tmp_path, "podnet.trace.render", *args, swallow=swallow)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the state file -------------------------------------------------------------------------------


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PODNET_STATE_DIR", str(tmp_path))
    return tmp_path


def _saved(cluster: str, allocations: dict) -> Path:
    s = store.Store.writer(cluster)
    try:
        s.save(allocations, "spec", "file.yaml")
    finally:
        s.close()
    return store.state_file(cluster)


def _read(cluster: str) -> dict:
    s = store.Store.reader(cluster)
    assert s is not None
    try:
        return s.allocations()
    finally:
        s.close()


def test_a_state_file_that_is_not_a_database_is_reported_as_damaged(state_root: Path) -> None:
    path = _saved("c", {"pod_ip": {"default/a": "10.244.0.2"}})
    path.write_bytes(os.urandom(4096))
    with pytest.raises(
        StateError,
        match=r"cannot read the state of cluster 'c' .*: it is damaged \(file is not a database\); move it away",
    ):
        _read("c")


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("node_cidr", "10.244.0.0/33", "an IPv4 network"),
        ("pod_ip", "10.244.0.300", "an IPv4 address"),
        ("service_slot", "x", "a number"),
    ],
)
def test_a_stored_value_of_the_wrong_shape_is_reported_before_any_plan(
    state_root: Path, kind: str, value: str, expected: str
) -> None:
    path = _saved("c", {kind: {"owner-1": value}})
    assert path.exists()
    with pytest.raises(StateError, match=f"the stored {kind} of owner-1 is '{value}', not {expected}"):
        _read("c")


def test_a_state_file_that_is_a_directory_is_reported(state_root: Path) -> None:
    store.state_file("c").mkdir(parents=True)
    with pytest.raises(StateError, match="it is not a file"):
        _read("c")


def test_an_empty_state_file_has_no_allocations(state_root: Path) -> None:
    path = store.state_file("c")
    path.parent.mkdir()
    sqlite3.connect(path).close()
    assert _read("c") == {}


# -- recovery -------------------------------------------------------------------------------------


def test_recovery_reads_back_every_address_a_plan_put_in_the_kernel() -> None:
    """What recover() finds in a State is what the plan allocated: the planned State stands
    for the observed one here (the kernel test checks the real one)."""
    extra = """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 8080, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
"""
    text = cluster_yaml("rec", nodes=3, pods=[{"name": f"p{i}", "ports": [(80, "TCP")]} for i in range(5)])
    text = text.replace("kind: Pod\nmetadata: {name: p0,", "kind: Pod\nmetadata: {labels: {app: web}, name: p0,")
    # Planned with other allocations first, so that nothing found could be a fresh plan's choice.
    spec = load_text(text + extra, "rec.yaml")
    p = plan(
        spec, {"pod_node": {f"default/p{i}": "node-3" for i in range(2)}, "service_slot": {"default/web:TCP:80": "7"}}
    )
    got = recover(p.topology, p.state).allocations
    for kind in ("node_cidr", "underlay_ip", "pod_ip", "pod_node", "service_ip", "node_port"):
        # kube-dns's fixed ClusterIP is found too (the planner takes only what it allocates); a
        # Service without endpoints is in no map that names it: it is planned afresh
        wanted = {k: v for k, v in p.allocations[kind].items() if k != "default/empty"}
        assert {k: got[kind].get(k) for k in wanted} == wanted, kind
    assert "default/empty" not in got["service_ip"]
    assert p.allocations["node_port"] and p.allocations["service_ip"]
    slots = recover_slots(p.topology, p.state)
    with_endpoints = {k: v for k, v in p.allocations["service_slot"].items() if not k.startswith("default/empty:")}
    assert slots == with_endpoints and slots["default/web:TCP:80"] == "7" and "default/sticky:TCP:8080" in slots

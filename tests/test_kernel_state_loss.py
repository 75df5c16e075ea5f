"""State that is lost or shared: a running cluster whose state file is gone keeps its addresses,
a cluster name belongs to one state directory of the machine, and `down` tells the truth about
the state it could not remove. Kernel tests (root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from podnet import cluster as usecases
from podnet import names, store
from podnet.kernel import netns
from podnet.plan import plan
from podnet.spec import load_file
from podnet.store import cluster_dir
from tests.conftest import assert_observed_equals_plan, cluster_yaml, leftovers, one_line_error, run_cli


def _spec(name: str, pods: list[str], services: list[str]) -> str:
    """Pods placed by podnet (no nodeName), each with label app=<name>; a NodePort Service per entry."""
    text = cluster_yaml(name, pods=[{"name": p, "ports": [(80, "TCP")]} for p in pods])
    for p in pods:
        text = text.replace(
            f"metadata: {{name: {p}, namespace: default}}",
            f"metadata: {{name: {p}, namespace: default, labels: {{app: {p}}}}}",
        )
    for svc in services:
        text += f"""---
apiVersion: v1
kind: Service
metadata: {{name: svc-{svc}}}
spec:
  type: NodePort
  selector: {{app: {svc}}}
  ports: [{{port: 80}}]
"""
    return text


def _addresses(name: str) -> dict:
    """Where every pod runs and every Service answers, as status reports it."""
    data = usecases.status(name)
    return {
        "pods": {p["name"]: (p["node"], p["ip"]) for p in data["pods"]},
        "services": {s["name"]: (s["cluster_ip"], [p["node_port"] for p in s["ports"]]) for s in data["services"]},
    }


def _running_with_history(make_cluster):
    """A cluster whose allocations a fresh plan would not repeat: pods and Services were
    removed after the others were placed, so lower addresses and emptier nodes are free."""
    c = make_cluster(lambda n: _spec(n, ["a", "b", "c", "d"], ["a", "b", "d"]))
    c.up()
    c.write(_spec(c.name, ["b", "d"], ["b", "d"]))
    c.up()
    before = _addresses(c.name)
    fresh = plan(load_file(str(c.file)), {}).allocations
    assert {p: ip for p, (_, ip) in before["pods"].items()} != {k.split("/")[1]: v for k, v in fresh["pod_ip"].items()}
    assert before["services"]["svc-b"][0] != fresh["service_ip"]["default/svc-b"]
    return c, before


def _lose(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):  # with SQLite's -wal and -shm beside it
        p.unlink()


def test_a_cluster_whose_state_file_is_lost_keeps_its_addresses(make_cluster) -> None:
    c, before = _running_with_history(make_cluster)
    _lose(store.state_file(c.name))

    said = one_line_error(run_cli("status", "-c", c.name))
    assert "is running" in said and "state is lost" in said and "podnet up" in said and "podnet down" in said
    listed = json.loads(run_cli("status", "-o", "json", check=True).stdout)["clusters"]
    mine = next(x for x in listed if x["name"] == c.name)
    assert mine["state"] == "state lost" and mine["namespaces"] > 0

    dry = json.loads(run_cli("up", "--dry-run", "-o", "json", str(c.file), check=True).stdout)
    assert dry["changes"] == 0, dry["details"]
    up = run_cli("up", "-o", "json", str(c.file), check=True)
    result = json.loads(up.stdout)
    assert result["changes"] == 0, result["details"]
    assert result["recovered"]["pod_ip"] == 3  # b, d and the DNS pod
    assert "was lost" in up.stderr and "recovered" in up.stderr
    assert _addresses(c.name) == before
    assert_observed_equals_plan(c.name)
    assert c.curl("b", f"http://{before['pods']['d'][1]}/hostname") == "d"


def test_a_cluster_whose_state_directory_is_lost_keeps_its_addresses_and_daemons(make_cluster) -> None:
    c, before = _running_with_history(make_cluster)
    shutil.rmtree(cluster_dir(c.name))  # pidfiles and daemon configurations with it
    result = c.up()
    assert set(result["summary"]) == {"start_process"}, result["details"]  # the orphans are replaced
    assert _addresses(c.name) == before
    assert_observed_equals_plan(c.name)
    assert all(p["ready"] for p in c.status()["pods"])


# -- one state directory per cluster name ----------------------------------------------------------


def test_a_cluster_name_belongs_to_the_state_directory_that_brought_it_up(make_cluster, tmp_path: Path) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=[{"name": "a", "ports": [(80, "TCP")]}]))
    c.up()
    mine = os.environ["PODNET_STATE_DIR"]
    other = {"PODNET_STATE_DIR": str(tmp_path / "other")}
    for args in (
        ("up", str(c.file)),
        ("up", "--dry-run", str(c.file)),
        ("down", "-c", c.name),
        ("status", "-c", c.name),
        ("exec", "-c", c.name, "a", "--", "true"),
    ):
        said = one_line_error(run_cli(*args, env=other))
        assert f"belongs to the state directory {os.path.realpath(mine)}" in said, (args, said)
    assert not (tmp_path / "other" / c.name).exists()
    assert_observed_equals_plan(c.name)
    assert all(p["ready"] for p in c.status()["pods"])
    listed = json.loads(run_cli("status", "-o", "json", env=other, check=True).stdout)["clusters"]
    assert next(x for x in listed if x["name"] == c.name)["state_dir"] == os.path.realpath(mine)


def test_two_state_directories_racing_for_one_name_one_wins(make_cluster, tmp_path: Path) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=[{"name": "a", "ports": [(80, "TCP")]}]))
    dirs = [os.environ["PODNET_STATE_DIR"], str(tmp_path / "other")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "podnet", "up", str(c.file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PODNET_STATE_DIR": d},
        )
        for d in dirs
    ]
    try:
        done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in done)
        assert codes == [0, 1], done
        loser = next(err for code, _, err in done if code == 1)
        assert "belongs to the state directory" in loser and "File exists" not in loser, loser
        winner = dirs[next(i for i, (code, _, _) in enumerate(done) if code == 0)]
        assert store.owner(c.name) == Path(os.path.realpath(winner))
        again = run_cli("up", "-o", "json", str(c.file), env={"PODNET_STATE_DIR": winner}, check=True)
        assert json.loads(again.stdout)["changes"] == 0  # one cluster, one set of daemons
    finally:
        run_cli("down", "-c", c.name, env={"PODNET_STATE_DIR": dirs[1]})


def test_down_from_another_state_directory_is_refused_until_the_owners_state_is_gone(
    make_cluster, tmp_path: Path
) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=[{"name": "a", "ports": [(80, "TCP")]}]))
    c.up()
    other = {"PODNET_STATE_DIR": str(tmp_path / "other")}
    one_line_error(run_cli("down", "-c", c.name, env=other))
    assert netns.list_prefixed(names.cluster_prefix(c.name))
    shutil.rmtree(cluster_dir(c.name))  # the owner's state is gone: the name protects nothing
    gone = json.loads(run_cli("down", "-c", c.name, "-o", "json", env=other, check=True).stdout)
    assert gone["namespaces"] > 0 and gone["processes"] == 2
    assert leftovers(c.name) == []


# -- down tells the truth ---------------------------------------------------------------------------


def test_down_that_cannot_remove_the_state_says_so_and_fails(make_cluster) -> None:
    c = make_cluster(lambda n: cluster_yaml(n, pods=[{"name": "a", "ports": [(80, "TCP")]}]))
    c.up()
    state = store.state_file(c.name)
    subprocess.run(["chattr", "+i", str(state)], check=True)
    try:
        proc = run_cli("down", "-c", c.name)
        said = one_line_error(proc)
        assert "could not remove its state" in said and str(state) in said and "Operation not permitted" in said
        assert "removed its state" not in proc.stdout
        assert netns.list_prefixed(names.cluster_prefix(c.name)) == []
        again = run_cli("down", "-c", c.name, "-o", "json")
        assert again.returncode == 1
        assert json.loads(again.stdout)["state_removed"] is False
        assert store.owner(c.name) is not None  # the state is still there: so is its claim on the name
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert "removed its state" in run_cli("down", "-c", c.name, check=True).stdout
    assert leftovers(c.name) == []

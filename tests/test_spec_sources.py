"""A spec from several files, a directory or standard input, as ``kubectl apply -f`` reads them."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from podnet.errors import SpecError, UsageError
from podnet.spec import load_file, load_sources, load_stored, read_sources, stored_form
from tests.conftest import run_cli
from tests.test_spec import CLUSTER, line_of, pod_doc
from tests.test_spec_kubernetes import REAL_POD
from tests.test_spec_workloads import workload


def write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


def test_several_files_make_one_spec(tmp_path: Path) -> None:
    write(tmp_path, {"cluster.yaml": CLUSTER, "pods.yaml": pod_doc("a") + pod_doc("b")})
    spec = load_sources(read_sources([str(tmp_path / "cluster.yaml"), str(tmp_path / "pods.yaml")]))
    assert [p.key for p in spec.pods] == ["default/a", "default/b"]
    assert spec.file == str(tmp_path / "cluster.yaml")
    assert {p.file for p in spec.pods} == {str(tmp_path / "pods.yaml")}


def test_an_error_names_the_file_it_is_in(tmp_path: Path) -> None:
    pods = pod_doc("a") + pod_doc("b", node="node-9")
    write(tmp_path, {"cluster.yaml": CLUSTER, "pods.yaml": pods})
    with pytest.raises(SpecError) as exc:
        load_sources(read_sources([str(tmp_path / "cluster.yaml"), str(tmp_path / "pods.yaml")]))
    assert (exc.value.file, exc.value.line) == (str(tmp_path / "pods.yaml"), line_of(pods, "node-9"))


def test_a_directory_is_its_manifests_in_name_order(tmp_path: Path) -> None:
    pod_json = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "from-json"},
        "spec": {"containers": [{"name": "c"}]},
    }
    write(
        tmp_path,
        {
            "b-pods.yml": pod_doc("b"),
            "a-cluster.yaml": CLUSTER,
            "c-pod.json": json.dumps(pod_json, indent=2),
            "README.md": "not a manifest: [",
            "nested/d.yaml": "not read: kubectl needs -R for subdirectories [",
        },
    )
    spec = load_file(tmp_path)
    assert [p.key for p in spec.pods] == ["default/b", "default/from-json"]


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SpecError) as exc:
        load_file(tmp_path)
    assert exc.value.file == str(tmp_path)
    assert "no .yaml, .yml, .json files" in exc.value.message


def test_standard_input(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    sources = read_sources(
        [str(tmp_path / "cluster.yaml"), "-"], stdin=io.BytesIO(pod_doc("a", node="node-7").encode())
    )
    with pytest.raises(SpecError) as exc:
        load_sources(sources)
    assert exc.value.file == "<stdin>"
    with pytest.raises(UsageError):
        read_sources(["-", "-"], stdin=io.BytesIO(b""))


def test_exactly_one_cluster_across_the_files(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": CLUSTER, "b.yaml": pod_doc("a") + "---\n" + CLUSTER})
    with pytest.raises(SpecError) as exc:
        load_file(tmp_path)
    err = exc.value
    b = (tmp_path / "b.yaml").read_text()
    assert (err.file, err.line) == (str(tmp_path / "b.yaml"), line_of(b, "kind: Cluster"))
    assert f"the first is {tmp_path / 'a.yaml'}:1" in err.message
    write(tmp_path, {"b.yaml": pod_doc("a")})
    (tmp_path / "a.yaml").unlink()
    with pytest.raises(SpecError) as exc:
        load_file(tmp_path)
    assert "no Cluster document" in exc.value.message


def test_what_is_stored_loads_again(tmp_path: Path) -> None:
    write(tmp_path, {"cluster.yaml": CLUSTER, "web.yaml": workload("Deployment") + REAL_POD})
    sources = read_sources([str(tmp_path / "cluster.yaml"), str(tmp_path / "web.yaml")])
    text, file = stored_form(sources)
    again = load_stored(text, file)
    assert [p.key for p in again.pods] == [p.key for p in load_sources(sources).pods]
    assert {p.file for p in again.pods} == {str((tmp_path / "web.yaml").resolve())}


def test_one_file_is_stored_as_before(tmp_path: Path) -> None:
    """A single file keeps the stored form of earlier versions: its text and its resolved path."""
    (tmp_path / "c.yaml").write_text(CLUSTER + pod_doc("a"))
    assert stored_form(read_sources([str(tmp_path / "c.yaml")])) == (CLUSTER + pod_doc("a"), str(tmp_path / "c.yaml"))
    assert [p.key for p in load_stored(CLUSTER + pod_doc("a"), "/old/c.yaml").pods] == ["default/a"]


# --- the command line: errors before anything is touched ----------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_names_the_second_file_of_up(tmp_path: Path) -> None:
    pods = pod_doc("a", node="node-9")
    write(tmp_path, {"c.yaml": CLUSTER, "p.yaml": pods})
    state = tmp_path / "state"
    result = run_cli(
        "up", "-f", str(tmp_path / "c.yaml"), "-f", str(tmp_path / "p.yaml"), env={"PODNET_STATE_DIR": str(state)}
    )
    assert f"{tmp_path / 'p.yaml'}:{line_of(pods, 'node-9')}: spec.nodeName:" in one_line_error(result)
    assert not state.exists()


def test_cli_up_needs_a_file() -> None:
    assert "podnet up -f FILE" in one_line_error(run_cli("up"))


def test_cli_a_missing_file() -> None:
    assert "/no/such.yaml: cannot read file" in one_line_error(run_cli("up", "-f", "/no/such.yaml"))


def alias_bomb_file(tmp_path: Path) -> Path:
    from tests.test_spec import alias_bomb

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    return path


@pytest.mark.parametrize(
    "command", [("up", "--dry-run"), ("trace", "web", "web", "-f"), ("diagram", "-f")], ids=["up", "trace", "diagram"]
)
def test_cli_refuses_an_alias_bomb_at_once(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = alias_bomb_file(tmp_path)
    line = one_line_error(run_cli(*command, str(path)))
    assert f"{path}:" in line and "YAML aliases expand" in line


@pytest.mark.parametrize("kind", ["deep", "latin1"])
def test_cli_refuses_deep_and_non_utf8_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.yaml"
    if kind == "deep":
        path.write_text(CLUSTER + pod_doc("web") + "  overhead: " + "[" * 600 + "]" * 600 + "\n")
    else:
        path.write_bytes(CLUSTER.encode() + b"# caf\xe9\n")
    for command in (("up", "--dry-run"), ("trace", "web", "web", "-f")):
        line = one_line_error(run_cli(*command, str(path)))
        assert line.startswith(f"error: {path}:")

"""The CNI protocol of ``podnet-cni``, driven like a runtime drives it: env, stdin, stdout, exit code.

No root and no kernel: requests that pass the plugin's own checks go to a fake agent (a Unix
socket served by the test), or to no agent at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet.cni import install, shim
from podnet.cni.protocol import AddResult, result_problems

SHIM = Path(shim.__file__)


@pytest.fixture(scope="module")
def plugin() -> Iterator[str]:
    """podnet-cni as ``podnet cni install`` installs it."""
    with tempfile.TemporaryDirectory(prefix="podnet-cni-test-") as d:
        done = install.install("testnet", f"{d}/bin", f"{d}/conf", f"{d}/agent.sock")
        yield done["plugin"]


def run(plugin: str, command: str | None, conf: object = None, stdin: str | None = None, **env: str):
    """One plugin exec: (exit code, parsed stdout or None, raw stdout)."""
    full = {"PATH": "/usr/bin:/bin"}
    if command is not None:
        full["CNI_COMMAND"] = command
    if command in ("ADD", "DEL", "CHECK"):
        full.update(CNI_CONTAINERID="c0ffee", CNI_NETNS="/run/netns/nowhere", CNI_IFNAME="eth0", CNI_PATH="/x")
    full.update(env)
    full = {k: v for k, v in full.items() if v is not None}
    if stdin is None:
        stdin = json.dumps(conf if conf is not None else config())
    proc = subprocess.run([plugin], input=stdin, env=full, capture_output=True, text=True, timeout=30)
    try:
        parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        parsed = None
    return proc.returncode, parsed, proc.stdout


def config(version: str = "1.1.0", sock: str = "/nonexistent/podnet-test/agent.sock", **extra: object) -> dict:
    return {"cniVersion": version, "name": "testnet", "type": "podnet-cni", "agentSocket": sock, **extra}


def assert_error(result: tuple, code: int, *words: str) -> dict:
    rc, out, raw = result
    assert rc != 0, raw
    assert isinstance(out, dict), f"stdout is not one JSON object: {raw!r}"
    assert set(out) <= {"cniVersion", "code", "msg", "details"}, out
    assert {"cniVersion", "code", "msg"} <= set(out), out
    assert out["code"] == code, out
    text = out["msg"] + " " + out.get("details", "")
    for word in words:
        assert word in text, out
    return out


# --- VERSION ------------------------------------------------------------------------------


def test_version_lists_the_supported_versions(plugin: str) -> None:
    rc, out, _ = run(plugin, "VERSION", stdin="")
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    rc, out, _ = run(plugin, "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0 and out["cniVersion"] == "1.0.0"


def test_the_source_file_is_itself_the_plugin() -> None:
    """shim.py runs as the executable without podnet installed (standard library only)."""
    proc = subprocess.run(
        ["/usr/bin/python3", "-IS", str(SHIM)], env={"CNI_COMMAND": "VERSION"}, input="", capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == ["1.0.0", "1.1.0"]
    source = SHIM.read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "posix", "sys", "_json", "json", "_socket"}, imports


def test_no_command_prints_what_it_is_and_error_4(plugin: str) -> None:
    proc = subprocess.run([plugin], env={}, input="", capture_output=True, text=True)
    assert proc.returncode == 1
    assert "podnet-cni" in proc.stderr
    assert json.loads(proc.stdout)["code"] == 4


# --- errors from bad input ----------------------------------------------------------------------


def test_unknown_command(plugin: str) -> None:
    assert_error(run(plugin, "FROBNICATE"), 4, "CNI_COMMAND", "FROBNICATE")


@pytest.mark.parametrize(
    ("command", "missing"),
    [("ADD", "CNI_NETNS"), ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_IFNAME"), ("DEL", "CNI_CONTAINERID"),
     ("CHECK", "CNI_NETNS")],
)  # fmt: skip
def test_missing_environment_names_the_variable(plugin: str, command: str, missing: str) -> None:
    assert_error(run(plugin, command, **{missing: None}), 4, missing)


def test_del_needs_no_netns(plugin: str) -> None:
    # Everything but the agent is fine: it gets as far as "try again later".
    assert_error(run(plugin, "DEL", CNI_NETNS=None), 11)


@pytest.mark.parametrize("cid", ["-leading-dash", "has space", "slash/inside", "ü"])
def test_bad_container_id(plugin: str, cid: str) -> None:
    assert_error(run(plugin, "ADD", CNI_CONTAINERID=cid), 4, "CNI_CONTAINERID")


@pytest.mark.parametrize("ifname", ["a-name-much-too-long", ".", "..", "eth/0", "eth:0", "eth 0"])
def test_bad_interface_name(plugin: str, ifname: str) -> None:
    assert_error(run(plugin, "ADD", CNI_IFNAME=ifname), 4, "CNI_IFNAME")


def test_relative_netns_path(plugin: str) -> None:
    assert_error(run(plugin, "ADD", CNI_NETNS="run/netns/x"), 4, "CNI_NETNS")


def test_malformed_cni_args(plugin: str) -> None:
    assert_error(run(plugin, "ADD", CNI_ARGS="IgnoreUnknown=1;novalue"), 4, "CNI_ARGS", "novalue")


@pytest.mark.parametrize("text", ["{", "", "not json", '{"a": 1} trailing', "[1, 2]", '"string"'])
def test_configuration_that_is_not_a_json_object(plugin: str, text: str) -> None:
    assert_error(run(plugin, "ADD", stdin=text), 6)


def test_unreadable_stdin_is_an_io_failure(plugin: str) -> None:
    """stdin open for writing only: the read itself fails (EBADF), as a broken pipe would."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        proc = subprocess.run([plugin], stdin=fd, env=env, capture_output=True, text=True)
    finally:
        os.close(fd)
    assert_error((proc.returncode, json.loads(proc.stdout), proc.stdout), 5, "stdin")


@pytest.mark.parametrize("version", ["0.4.0", "0.3.1", "2.0.0", "1.2.0"])
def test_unsupported_version(plugin: str, version: str) -> None:
    out = assert_error(run(plugin, "ADD", config(version)), 1, version)
    assert out["cniVersion"] == "1.1.0"  # an error in a version the plugin speaks


def test_missing_version(plugin: str) -> None:
    conf = config()
    del conf["cniVersion"]
    assert_error(run(plugin, "ADD", conf), 1, "cniVersion")


def test_version_that_is_not_semver(plugin: str) -> None:
    assert_error(run(plugin, "ADD", config("one")), 6, "one")


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_1_1(plugin: str, command: str) -> None:
    assert_error(run(plugin, command, config("1.0.0")), 1, command, "1.1.0")


def test_errors_speak_the_configuration_s_version(plugin: str) -> None:
    out = assert_error(run(plugin, "ADD", config("1.0.0", bogus=1)), 2)
    assert out["cniVersion"] == "1.0.0"


@pytest.mark.parametrize(
    ("conf", "code", "words"),
    [
        ({"name": None}, 7, ["network name"]),
        ({"name": "bad name!"}, 7, ["name"]),
        ({"type": ""}, 7, ["type"]),
        ({"mtu": 9000}, 2, ["mtu", "9000"]),
        ({"ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}, 2, ["ipam", "host-local"]),
        ({"ipMasq": False}, 2, ["ipMasq"]),
        ({"ipMasq": "yes"}, 7, ["ipMasq"]),
        ({"dns": {"nameservers": "10.0.0.10"}}, 7, ["dns.nameservers"]),
        ({"dns": {"resolver": "x"}}, 2, ["dns.resolver"]),
        ({"args": []}, 7, ["args"]),
        ({"runtimeConfig": "x"}, 7, ["runtimeConfig"]),
        ({"agentSocket": "relative.sock"}, 7, ["agentSocket"]),
    ],
)
def test_bad_configuration(plugin: str, conf: dict, code: int, words: list[str]) -> None:
    full = config()
    for key, value in conf.items():
        if value is None:
            full.pop(key)
        else:
            full[key] = value
    assert_error(run(plugin, "ADD", full), code, *words)


def test_check_needs_prev_result(plugin: str) -> None:
    assert_error(run(plugin, "CHECK", config()), 7, "prevResult")


def test_gc_attachments_must_be_a_list_of_objects(plugin: str) -> None:
    assert_error(run(plugin, "GC", config(**{"cni.dev/valid-attachments": ["c1"]})), 7, "valid-attachments")


# --- no agent -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC"])
def test_no_agent_is_try_again_later(plugin: str, command: str) -> None:
    conf = config(prevResult={}) if command == "CHECK" else config()
    assert_error(run(plugin, command, conf), 11, "try again later")


def test_no_agent_means_status_not_available(plugin: str) -> None:
    assert_error(run(plugin, "STATUS", config()), 50, "not running")


# --- with a fake agent --------------------------------------------------------------------------


class FakeAgent:
    """A Unix socket that records what podnet-cni sends and answers what it is told to."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[dict] = []
        self.answer = b"0"
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.requests.append(json.loads(data))
                conn.sendall(self.answer)

    def close(self) -> None:
        self.srv.shutdown(socket.SHUT_RDWR)
        self.srv.close()
        self.thread.join(5)


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    with tempfile.TemporaryDirectory(prefix="podnet-cni-fake-") as d:
        agent = FakeAgent(f"{d}/agent.sock")
        yield agent
        agent.close()


def test_request_carries_the_parameters_and_the_configuration(plugin: str, fake_agent: FakeAgent) -> None:
    result = {"cniVersion": "1.1.0", "interfaces": [], "ips": []}
    fake_agent.answer = b"0" + json.dumps(result).encode()
    conf = config(sock=fake_agent.path, runtimeConfig={"portMappings": []}, args={"labels": {"a": "b"}})
    rc, out, _ = run(plugin, "ADD", conf, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web")
    assert rc == 0
    assert out == result  # printed as the agent gave it
    (req,) = fake_agent.requests
    assert req["command"] == "ADD"
    assert (req["containerID"], req["netns"], req["ifname"]) == ("c0ffee", "/run/netns/nowhere", "eth0")
    assert req["args"] == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web"}
    assert req["config"] == conf


def test_agent_errors_pass_through(plugin: str, fake_agent: FakeAgent) -> None:
    err = shim.CniError(101, "node-1: no address left in 10.244.0.0/24", "253 addresses")
    fake_agent.answer = b"1" + err.to_json("1.1.0").encode()
    assert_error(run(plugin, "ADD", config(sock=fake_agent.path)), 101, "no address left", "253")


def test_verbs_without_output_print_nothing(plugin: str, fake_agent: FakeAgent) -> None:
    for command, conf in [("DEL", config()), ("GC", config(**{"cni.dev/valid-attachments": []})),
                          ("STATUS", config()), ("CHECK", config(prevResult={}))]:  # fmt: skip
        conf["agentSocket"] = fake_agent.path
        rc, _, raw = run(plugin, command, conf)
        assert (rc, raw) == (0, ""), command
    assert [r["command"] for r in fake_agent.requests] == ["DEL", "GC", "STATUS", "CHECK"]


def test_an_agent_that_hangs_up_is_try_again_later(plugin: str, fake_agent: FakeAgent) -> None:
    fake_agent.answer = b""
    assert_error(run(plugin, "ADD", config(sock=fake_agent.path)), 11)


# --- the result ---------------------------------------------------------------------------------


def _result(version: str, default_route: bool = True, **kw) -> dict:
    r = AddResult("veth0123456789a", "0e:01:02:03:04:05", "eth0", "0a:58:0a:f4:00:02", "/run/netns/x", 1450,
                  "10.244.0.2/24", "10.244.0.1", default_route)  # fmt: skip
    return r.to_json(version, **kw)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_result_has_the_spec_s_shape(version: str) -> None:
    result = _result(version, dns={"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
    assert result_problems(result, version) == []
    assert result["ips"] == [{"address": "10.244.0.2/24", "gateway": "10.244.0.1", "interface": 1}]
    assert result["interfaces"][1]["sandbox"] == "/run/netns/x"
    assert "sandbox" not in result["interfaces"][0]  # the host end
    assert ("mtu" in result["interfaces"][1]) == (version == "1.1.0")  # new in 1.1.0
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]


def test_a_skipped_default_route_is_not_reported() -> None:
    assert "routes" not in _result("1.1.0", default_route=False)


def test_prev_result_is_kept_and_indexes_shift() -> None:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "192.168.0.2/24", "interface": 0}], "dns": {"nameservers": ["192.168.0.1"]}}  # fmt: skip
    result = _result("1.1.0", prev=prev)
    assert result_problems(result, "1.1.0") == []
    assert [i["name"] for i in result["interfaces"]] == ["net1", "veth0123456789a", "eth0"]
    assert result["ips"][1]["interface"] == 2
    assert result["dns"] == {"nameservers": ["192.168.0.1"]}


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda r: r.update(extra=1), "unknown key 'extra'"),
        (lambda r: r.update(cniVersion="1.0.0"), "cniVersion"),
        (lambda r: r["ips"][0].update(version="4"), "unknown key 'version'"),  # gone since 1.0.0
        (lambda r: r["ips"][0].update(interface=7), "not an index"),
        (lambda r: r["ips"][0].update(address="10.244.0.2"), "with prefix"),
        (lambda r: r["interfaces"][0].update(mac="zz"), "not a MAC"),
        (lambda r: r["routes"][0].update(gw="nope"), "not an address"),
        (lambda r: r.update(dns={"nameservers": "x"}), "dns.nameservers"),
    ],
)
def test_result_checker_finds_what_breaks_the_shape(mutate, problem: str) -> None:
    result = _result("1.1.0")
    mutate(result)
    assert any(problem in p for p in result_problems(result, "1.1.0")), result_problems(result, "1.1.0")


def test_interface_mtu_is_not_a_1_0_field() -> None:
    result = _result("1.1.0")
    result["cniVersion"] = "1.0.0"
    assert any("mtu" in p for p in result_problems(result, "1.0.0"))


# --- install --------------------------------------------------------------------------------------


def test_install_writes_an_executable_and_a_conflist(tmp_path: Path) -> None:
    done = install.install("mynet", str(tmp_path / "bin"), str(tmp_path / "conf"), "/run/x/agent.sock")
    assert os.access(done["plugin"], os.X_OK)
    conf = json.loads(Path(done["conflist"]).read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["cniVersions"] == ["1.0.0", "1.1.0"]
    assert conf["name"] == "mynet"
    assert conf["plugins"] == [{"type": "podnet-cni", "agentSocket": "/run/x/agent.sock"}]
    # The conflist's plugin entry, as a runtime would hand it over, passes the plugin's checks.
    plugin_conf = {"cniVersion": conf["cniVersion"], "name": conf["name"], **conf["plugins"][0]}
    assert_error(run(done["plugin"], "ADD", plugin_conf), 11)


def test_install_with_portmap_chains_it_and_stays_at_1_0(tmp_path: Path) -> None:
    done = install.install("mynet", str(tmp_path / "bin"), str(tmp_path / "conf"), shim.DEFAULT_SOCKET, portmap=True)
    conf = json.loads(Path(done["conflist"]).read_text())
    assert [p["type"] for p in conf["plugins"]] == ["podnet-cni", "portmap"]
    assert "cniVersions" not in conf and "agentSocket" not in conf["plugins"][0]


def test_cli_install(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "podnet", "cni", "install", "--network", "clinet", "--bin-dir", str(tmp_path / "b"),
         "--conf-dir", str(tmp_path / "c"), "-o", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["conflist"].endswith("10-podnet-clinet.conflist")
    bad = subprocess.run([sys.executable, "-m", "podnet", "cni", "install", "--network", "bad name",
                          "--bin-dir", str(tmp_path / "b"), "--conf-dir", str(tmp_path / "c")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "network name" in bad.stderr

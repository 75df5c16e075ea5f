#!/usr/bin/python3 -IS
"""podnet-cni: podnet's CNI plugin executable (CNI spec 1.1.0; accepts 1.0.0 configurations).

A container runtime runs this once per operation: the parameters in ``CNI_*`` environment
variables, the network configuration as JSON on stdin, the result (or an error) as JSON on
stdout. The plugin is thin on purpose: it checks the request the way the spec says (and
answers VERSION itself), then forwards it over a root-only Unix socket to ``podnet agent``,
the node daemon that owns the addresses, the netlink handles and the rules, and prints what
the agent answers. With no agent listening it answers error 11, "try again later".

This file is self-contained and uses the standard library only, so that ``podnet cni
install`` can copy it into a CNI bin directory as the executable itself. A runtime waits for
it on every container start, so it starts in a few milliseconds: it runs with ``-I -S`` and
uses the C accelerators of ``json`` directly (importing ``json`` itself pulls in ``re`` and
``enum``, which would double the start-up time).

The wire format to the agent: the request is one JSON object (the CNI parameters, and the
configuration exactly as read from stdin) written whole before the write side is shut down;
the answer is one status byte (``0`` success, ``1`` error) followed by the bytes to print:
the result JSON, nothing, or the error JSON.
"""

from __future__ import annotations

import posix  # not os: importing os costs a millisecond of the plugin's start-up
import sys

try:  # the C halves of the json module: decoding and string escaping without re/enum
    import _json

    class _Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> float:
            return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

    _scan = _json.make_scanner(_Context())
    _quote = _json.encode_basestring_ascii
except (ImportError, AttributeError):  # pragma: no cover - every CPython has _json
    import json as _fallback

    _scan = None
    _quote = _fallback.dumps

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/podnet/cni/agent.sock"
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
FORWARDED = ("ADD", "DEL", "CHECK", "GC", "STATUS")

# Error codes of the spec (1-99 are reserved to it) and podnet's own (100 and up).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: cannot serve ADD
NOT_AVAILABLE_LIMITED = 51  # STATUS: cannot serve ADD, and existing containers may be cut off
INTERNAL = 100  # the agent failed to do what was asked; the message says what and why
POOL_EXHAUSTED = 101  # no address left in the node's block
IFNAME_IN_USE = 102  # CNI_IFNAME already exists in the container's namespace
DRIFT = 103  # CHECK: something of the attachment is missing or wrong
AGENT_UNREACHABLE = 104  # the socket exists but podnet-cni may not use it, or the answer was garbled

# Which variables each verb needs (a table, as the reference skel has it). CNI_PATH is never
# required: podnet delegates to no other plugin.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
# The verbs each spec version knows.
MIN_VERSION = {"ADD": "0.1.0", "DEL": "0.1.0", "CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Configuration keys podnet accepts: the spec's well-known ones, what runtimes add, its own.
WELL_KNOWN = {
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",  # libcni sends both spellings of the GC list
    "disableCheck",
    "disableGC",
    "agentSocket",  # podnet: where its agent listens
}


class CniError(Exception):
    """An error of the CNI protocol: a code (the spec's, or podnet's from 100), a message, details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str = SPEC_VERSION) -> str:
        out = f'{{"cniVersion": {_quote(version)}, "code": {int(self.code)}, "msg": {_quote(self.msg)}'
        if self.details:
            out += f', "details": {_quote(self.details)}'
        return out + "}"


def loads(text: str) -> object:
    """Decode one JSON document (raises ValueError)."""
    if _scan is not None:
        start = len(text) - len(text.lstrip())
        try:
            value, end = _scan(text, start)
            if not text[end:].strip():
                return value
        except (StopIteration, ValueError, SystemError):
            pass  # the C scanner's own errors need the json package: let it say what is wrong
    import json

    return json.loads(text)


def version_key(version: str) -> tuple[int, int, int]:
    """Order semantic versions; raises ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(version)
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def _valid_name(value: str) -> bool:
    """The spec's rule for network names and container IDs: [a-zA-Z0-9][a-zA-Z0-9_.-]*."""
    if not value or not (value[0].isascii() and value[0].isalnum()):
        return False
    return all((c.isascii() and c.isalnum()) or c in "_.-" for c in value)


def check_ifname(name: str) -> None:
    if not name:
        raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME is empty")
    if len(name.encode()) > 15:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {name!r} is too long", "interface names have at most 15 bytes")
    if name in (".", ".."):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {name!r} is not an interface name")
    if any(c in "/:" or c.isspace() for c in name):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {name!r} contains '/', ':' or whitespace")


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K1=V1;K2=V2"."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE", f"CNI_ARGS={text}")
        out[key] = value
    return out


def _field_error(key: str, value: object, why: str, code: int = INVALID_CONFIG) -> CniError:
    return CniError(code, f"{key}={_short(value)}: {why}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_config(conf: dict, command: str) -> str:
    """Check the network configuration for ``command``; returns its cniVersion."""
    version = conf.get("cniVersion", "")
    if not isinstance(version, str):
        raise _field_error("cniVersion", version, "must be a string")
    if not version:
        # libcni reads a missing version as 0.1.0, which has none of today's result shape.
        raise CniError(
            INCOMPATIBLE_VERSION, "the configuration has no cniVersion", f"supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    try:
        key = version_key(version)
    except ValueError:
        raise CniError(DECODING_FAILURE, f"cniVersion {version!r} is not a semantic version") from None
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"podnet-cni supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    if key < version_key(MIN_VERSION[command]):
        raise CniError(
            INCOMPATIBLE_VERSION, f"CNI version {version} has no {command} (it needs {MIN_VERSION[command]})"
        )

    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "the configuration has no network name")
    if not _valid_name(name):
        raise _field_error("name", name, "a network name starts with a letter or digit, then letters, digits, _ . -")
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CniError(INVALID_CONFIG, "the configuration has no plugin type")

    for key_name in conf:
        if key_name not in WELL_KNOWN:
            raise CniError(
                UNSUPPORTED_FIELD, f"unsupported field {key_name}={_short(conf[key_name])} in the network configuration"
            )
    for obj in ("args", "capabilities", "runtimeConfig", "prevResult"):
        if obj in conf and not isinstance(conf[obj], dict):
            raise _field_error(obj, conf[obj], "must be an object")
    if "ipMasq" in conf:
        if not isinstance(conf["ipMasq"], bool):
            raise _field_error("ipMasq", conf["ipMasq"], "must be true or false")
        if not conf["ipMasq"]:
            raise _field_error(
                "ipMasq",
                False,
                "podnet's agent masquerades egress on every node; it cannot be turned off per network",
                UNSUPPORTED_FIELD,
            )
    if conf.get("ipam"):
        raise _field_error(
            "ipam",
            conf["ipam"],
            "podnet allocates addresses itself from the node's block; leave ipam out",
            UNSUPPORTED_FIELD,
        )
    if "dns" in conf:
        _check_dns(conf["dns"])
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _field_error("agentSocket", sock, "must be an absolute path")
    if command == "GC":
        for key_name in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            if key_name in conf:
                _check_attachments(key_name, conf[key_name])
    if command == "CHECK" and "prevResult" not in conf:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult, the result of the ADD it checks")
    return version


def _check_dns(dns: object) -> None:
    if not isinstance(dns, dict):
        raise _field_error("dns", dns, "must be an object")
    for key, value in dns.items():
        if key == "domain":
            ok = isinstance(value, str)
        elif key in ("nameservers", "search", "options"):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field dns.{key}={_short(value)}")
        if not ok:
            raise _field_error(
                f"dns.{key}", value, "must be a string" if key == "domain" else "must be a list of strings"
            )


def _check_attachments(key: str, value: object) -> None:
    if not isinstance(value, list):
        raise _field_error(key, value, "must be a list of {containerID, ifname}")
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise _field_error(key, item, "each attachment is an object with a containerID")
        if "ifname" in item and not isinstance(item["ifname"], str):
            raise _field_error(key, item, "ifname must be a string")


def parse_env(environ) -> tuple[str, dict]:
    """Check the CNI_* variables: returns (command, parameters)."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, "required environment variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_COMMAND: unknown command {command!r}", f"known: {', '.join(COMMANDS)}"
        )
    missing = [v for v in REQUIRED_ENV[command] if not environ.get(v)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required environment variables [{','.join(missing)}] missing")
    params = {
        "containerID": environ.get("CNI_CONTAINERID", ""),
        "netns": environ.get("CNI_NETNS", ""),
        "ifname": environ.get("CNI_IFNAME", ""),
        "args": parse_cni_args(environ.get("CNI_ARGS", "")),
        "path": environ.get("CNI_PATH", ""),
    }
    if command in ("ADD", "DEL", "CHECK"):
        if not _valid_name(params["containerID"]):
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_CONTAINERID {params['containerID']!r} has invalid characters",
                "a container ID starts with a letter or digit, then letters, digits, _ . -",
            )
        check_ifname(params["ifname"])
        if params["netns"] and not params["netns"].startswith("/"):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {params['netns']!r} is not an absolute path")
    return command, params


def parse_config(command: str, text: str) -> tuple[str, dict]:
    """Decode and check the configuration read from stdin: returns (cniVersion, configuration)."""
    try:
        conf = loads(text)
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"the network configuration on stdin is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object")
    return check_config(conf, command), conf


def version_answer(stdin: str) -> str:
    """VERSION: the versions podnet-cni speaks, in the version the caller asked in (if any)."""
    asked = SPEC_VERSION
    try:
        conf = loads(stdin) if stdin.strip() else {}
        if isinstance(conf, dict) and isinstance(conf.get("cniVersion"), str):
            version_key(conf["cniVersion"])
            asked = conf["cniVersion"]
    except ValueError:
        pass
    versions = ", ".join(_quote(v) for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": {_quote(asked)}, "supportedVersions": [{versions}]}}'


def encode_request(command: str, params: dict, raw_config: str) -> bytes:
    args = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in params["args"].items())
    head = (
        f'{{"command": {_quote(command)}, "containerID": {_quote(params["containerID"])}, '
        f'"netns": {_quote(params["netns"])}, "ifname": {_quote(params["ifname"])}, '
        f'"args": {{{args}}}, "path": {_quote(params["path"])}, "config": '
    )
    return (head + raw_config.strip() + "}").encode()


def forward(sock_path: str, payload: bytes, timeout: float, command: str) -> tuple[bool, bytes]:
    """Send one request to the agent; (success, bytes to print)."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
            raise CniError(
                code, "podnet agent is not running: try again later", f"{sock_path}: {exc.strerror}"
            ) from None
        except PermissionError as exc:
            raise CniError(
                AGENT_UNREACHABLE,
                "may not talk to the podnet agent (its socket is root-only)",
                f"{sock_path}: {exc.strerror}",
            ) from None
        s.sendall(payload)
        s.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        raise CniError(
            TRY_AGAIN_LATER, f"podnet agent did not answer within {timeout:g} s: try again later", sock_path
        ) from None
    except OSError as exc:
        raise CniError(
            TRY_AGAIN_LATER, "lost the podnet agent mid-request: try again later", f"{sock_path}: {exc}"
        ) from None
    finally:
        s.close()
    data = b"".join(chunks)
    if not data or data[:1] not in (b"0", b"1"):
        raise CniError(
            TRY_AGAIN_LATER, "the podnet agent closed the connection without an answer: try again later", sock_path
        )
    return data[:1] == b"0", data[1:]


def main(environ=None, stdin=None, stdout=None, stderr=None) -> int:
    """Run one CNI operation; returns the exit code. Streams are injectable for tests."""
    if environ is None:
        environ = {
            k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, v in posix.environ.items()
        }
    stdout = _Fd(1) if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    raw = ""
    try:
        if not environ.get("CNI_COMMAND"):
            stderr.write(f"podnet-cni: the CNI plugin of podnet; CNI versions {', '.join(SUPPORTED_VERSIONS)}\n")
        command, params = parse_env(environ)
        raw = _read(stdin)
        if command == "VERSION":
            stdout.write((version_answer(raw) + "\n").encode())
            return 0
        _, conf = parse_config(command, raw)
        timeout = 300.0 if command == "GC" else 120.0
        request = encode_request(command, params, raw)
        ok, body = forward(conf.get("agentSocket", DEFAULT_SOCKET), request, timeout, command)
    except CniError as exc:
        stdout.write((exc.to_json(error_version(raw)) + "\n").encode())
        return 1
    stdout.write(body)
    return 0 if ok else 1


class _Fd:
    """Writes straight to a file descriptor (sys.stdout may be None when the runtime closed fd 1)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[posix.write(self.fd, view) :]


def error_version(raw: str) -> str:
    """The version an error is reported in: the configuration's when podnet-cni speaks it."""
    try:
        conf = loads(raw)
    except ValueError:
        return SPEC_VERSION
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    return version if version in SUPPORTED_VERSIONS else SPEC_VERSION


def _read(stdin) -> str:
    """All of stdin (fd 0 unless a stream is given), as text."""
    try:
        if stdin is None:
            chunks = []
            while chunk := posix.read(0, 65536):
                chunks.append(chunk)
            data: bytes | str = b"".join(chunks)
        else:
            data = stdin.read()
    except (OSError, ValueError) as exc:
        raise CniError(IO_FAILURE, f"cannot read the network configuration from stdin: {exc}") from None
    if isinstance(data, bytes):
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise CniError(DECODING_FAILURE, f"the network configuration on stdin is not UTF-8: {exc}") from None
    return data


if __name__ == "__main__":
    sys.exit(main())

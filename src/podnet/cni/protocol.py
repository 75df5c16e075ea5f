"""The CNI result, by spec version, and a checker of its shape.

The shim (``podnet.cni.shim``) owns the wire-level protocol (error codes, versions, request
checks) because it must stand alone; this module holds what only the agent and the tests
need: building the ADD result, merging a ``prevResult`` when podnet is not first in a chain,
and :func:`result_problems`, which checks a result against the shape the spec defines.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnet.cni.shim import SPEC_VERSION, SUPPORTED_VERSIONS, CniError, version_key

__all__ = ["SPEC_VERSION", "SUPPORTED_VERSIONS", "AddResult", "CniError", "result_problems"]


@dataclass(frozen=True)
class AddResult:
    """What one ADD made: the host end, the container end, its address and default route."""

    host_if: str
    host_mac: str
    ifname: str
    mac: str
    sandbox: str
    mtu: int
    cidr: str  # "10.244.0.5/24"
    gateway: str
    default_route: bool  # False when the container already had one (from another network)

    def to_json(self, version: str, dns: dict | None = None, prev: dict | None = None) -> dict:
        host = {"name": self.host_if, "mac": self.host_mac}
        container = {"name": self.ifname, "mac": self.mac, "sandbox": self.sandbox}
        if version_key(version) >= (1, 1, 0):
            host["mtu"] = container["mtu"] = self.mtu
        prev = prev or {}
        interfaces = [*prev.get("interfaces", []), host, container]
        index = len(interfaces) - 1
        result: dict = {
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": [*prev.get("ips", []), {"address": self.cidr, "gateway": self.gateway, "interface": index}],
        }
        routes = list(prev.get("routes", []))
        if self.default_route:
            routes.append({"dst": "0.0.0.0/0", "gw": self.gateway})
        if routes:
            result["routes"] = routes
        dns = dns or prev.get("dns")
        if dns:
            result["dns"] = dns
        return result


# --- the shape of a result --------------------------------------------------------------------

_INTERFACE_KEYS = {
    "1.0.0": {"name", "mac", "sandbox"},
    "1.1.0": {"name", "mac", "mtu", "sandbox", "socketPath", "pciID"},
}
_ROUTE_KEYS = {"1.0.0": {"dst", "gw"}, "1.1.0": {"dst", "gw", "mtu", "advmss", "priority", "table", "scope"}}
_DNS_KEYS = {"nameservers", "domain", "search", "options"}


def result_problems(result: object, version: str) -> list[str]:
    """Everything in ``result`` that does not follow the spec's result for ``version`` (1.0.0, 1.1.0)."""
    if version not in SUPPORTED_VERSIONS:
        return [f"no result shape known for version {version}"]
    out: list[str] = []
    if not isinstance(result, dict):
        return ["the result is not a JSON object"]
    for key in result:
        if key not in ("cniVersion", "interfaces", "ips", "routes", "dns"):
            out.append(f"unknown key {key!r}")
    if result.get("cniVersion") != version:
        out.append(f"cniVersion {result.get('cniVersion')!r} is not the configuration's {version}")

    interfaces = result.get("interfaces") if isinstance(result.get("interfaces"), list) else []
    for where, iface in _objects(result, "interfaces", out):
        out += [f"{where}: unknown key {k!r}" for k in iface if k not in _INTERFACE_KEYS[version]]
        if not isinstance(iface.get("name"), str) or not iface.get("name"):
            out.append(f"{where}: name missing")
        if "mac" in iface and not _is_mac(iface["mac"]):
            out.append(f"{where}: mac {iface['mac']!r} is not a MAC address")
        if "sandbox" in iface and not isinstance(iface["sandbox"], str):
            out.append(f"{where}: sandbox is not a string")
        if "mtu" in iface and not (isinstance(iface["mtu"], int) and iface["mtu"] > 0):
            out.append(f"{where}: mtu {iface['mtu']!r} is not a positive integer")

    for where, ip in _objects(result, "ips", out):
        out += [f"{where}: unknown key {k!r}" for k in ip if k not in ("address", "gateway", "interface")]
        if not _is_cidr(ip.get("address")):
            out.append(f"{where}: address {ip.get('address')!r} is not an address with prefix")
        if "gateway" in ip and not _is_ip(ip["gateway"]):
            out.append(f"{where}: gateway {ip['gateway']!r} is not an address")
        if "interface" in ip and not (
            isinstance(ip["interface"], int)
            and not isinstance(ip["interface"], bool)
            and 0 <= ip["interface"] < len(interfaces)
        ):
            out.append(f"{where}: interface {ip['interface']!r} is not an index into interfaces")

    for where, route in _objects(result, "routes", out):
        out += [f"{where}: unknown key {k!r}" for k in route if k not in _ROUTE_KEYS[version]]
        if not _is_cidr(route.get("dst")):
            out.append(f"{where}: dst {route.get('dst')!r} is not a prefix")
        if "gw" in route and not _is_ip(route["gw"]):
            out.append(f"{where}: gw {route['gw']!r} is not an address")

    dns = result.get("dns")
    if dns is not None:
        if not isinstance(dns, dict):
            out.append("dns is not an object")
        else:
            out += [f"dns: unknown key {k!r}" for k in dns if k not in _DNS_KEYS]
            if "domain" in dns and not isinstance(dns["domain"], str):
                out.append("dns.domain is not a string")
            for k in ("nameservers", "search", "options"):
                if k in dns and not (isinstance(dns[k], list) and all(isinstance(v, str) for v in dns[k])):
                    out.append(f"dns.{k} is not a list of strings")
    return out


def _objects(result: dict, key: str, out: list[str]) -> list[tuple[str, dict]]:
    """The entries of list ``key`` that are JSON objects, with where they are; the others are
    reported in ``out``."""
    items = result.get(key, [])
    if not isinstance(items, list):
        out.append(f"{key} is not a list")
        return []
    found = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            found.append((f"{key}[{i}]", item))
        else:
            out.append(f"{key}[{i}] is not an object")
    return found


def _is_mac(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = value.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def _is_ip(value: object) -> bool:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return isinstance(value, str)


def _is_cidr(value: object) -> bool:
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        return False
    return True


def error_message(exc: CniError, version: str = SPEC_VERSION) -> bytes:
    return exc.to_json(version).encode() + b"\n"

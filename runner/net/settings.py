"""A container's network as Docker shows it: ``inspect``'s ``NetworkSettings`` and ``ps``'s PORTS,
from its record and the ``Network`` its supervisor recorded in ``state.json`` when it started (a
container that does not run has no address and no published port, as Docker's)."""

from __future__ import annotations

from typing import Any

from . import ports


def _running(state: dict[str, Any]) -> dict[str, Any] | None:
    record = state.get("Network")
    return record if state.get("Running") and isinstance(record, dict) else None


def network_settings(config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    mode = config["HostConfig"]["NetworkMode"]
    rec = _running(state) or {}
    pid = state.get("Pid") if state.get("Running") else None

    def get(key: str, default: Any = "") -> Any:
        return rec.get(key) or default

    endpoint = {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "MacAddress": get("MacAddress"),
        "DriverOpts": None,
        "NetworkID": config.get("NetworkID") or mode,
        "EndpointID": get("EndpointID"),
        "Gateway": get("Gateway"),
        "IPAddress": get("IPAddress"),
        "IPPrefixLen": get("IPPrefixLen", 0),
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": [config["Name"], config["Id"][:12]] if rec.get("Bridge") else None,
    }
    networks = {} if mode.startswith("container:") else {mode: endpoint}
    return {
        "Bridge": get("Bridge"),
        "SandboxID": "",
        "SandboxKey": f"/proc/{pid}/ns/net" if pid else "",
        "Ports": get("Ports", {}),
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": get("EndpointID"),
        "Gateway": get("Gateway"),
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": get("IPAddress"),
        "IPPrefixLen": get("IPPrefixLen", 0),
        "IPv6Gateway": "",
        "MacAddress": get("MacAddress"),
        "Networks": networks,
    }


def published(state: dict[str, Any]) -> dict[str, Any]:
    """``NetworkSettings.Ports`` of a running container ({} otherwise)."""
    rec = _running(state)
    return dict(rec.get("Ports") or {}) if rec else {}


def ps_ports(state: dict[str, Any]) -> str:
    return ports.ps_column(published(state))

"""``--add-host`` and ``--dns`` in a container's /etc/hosts and /etc/resolv.conf, over what its
network wrote there (``runner.net``): extra hosts appended as Docker appends them (``IP<TAB>NAME``,
``host-gateway`` as the address the network gave the host, ``host.containers.internal``'s, else
loopback), and ``--dns`` servers in place of the network's nameservers (its search and options
lines kept, as Docker keeps the host's).

*Caveats*: on a user network, the network rewrites /etc/hosts as peers come and go
(``runner.net.bridge.refresh_peers``), and the extra hosts are not written again then.
"""

from __future__ import annotations

from typing import Any

HOST_GATEWAY = "host-gateway"
HOST_NAME = "host.containers.internal"  # the name runner.net.etc gives the host


def _gateway(hosts: str) -> str:
    for line in hosts.splitlines():
        fields = line.split()
        if len(fields) > 1 and HOST_NAME in fields[1:]:
            return fields[0]
    return "127.0.0.1"


def extra_hosts(hosts: str, entries: list[str]) -> str:
    """``hosts`` (a file's text) with ``NAME:IP`` entries appended."""
    lines = hosts.splitlines()
    for entry in entries:
        name, _, address = entry.partition(":")
        lines.append(f"{_gateway(hosts) if address == HOST_GATEWAY else address}\t{name}")
    return "\n".join(lines) + "\n"


def nameservers(resolv: str, servers: list[str]) -> str:
    """``resolv`` (a file's text) with its nameserver lines replaced by ``servers``."""
    kept = [line for line in resolv.splitlines() if line.split()[:1] != ["nameserver"]]
    return "\n".join([f"nameserver {server}" for server in servers] + kept) + "\n"


def apply(config: dict[str, Any], hosts_path: str, resolv_path: str) -> None:
    """Write a container's ``ExtraHosts`` and ``Dns`` (its record's ``HostConfig``) into the files
    its network wrote (before they are bound into the container)."""
    hc = config.get("HostConfig") or {}
    for path, entries, change in (
        (hosts_path, hc.get("ExtraHosts"), extra_hosts),
        (resolv_path, hc.get("Dns"), nameservers),
    ):
        if entries:
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(change(text, list(entries)))

"""/etc/hosts and /etc/resolv.conf for a container, as Docker writes them: the host's resolvers
less the loopback ones (Docker's 8.8.8.8 and 8.8.4.4 if none is left); the container's own address
under its hostname; ``host.containers.internal`` for the host (podman's name); on a user network
each other container there under its name and short id (Docker answers those by DNS; strata
writes them into the file, and rewrites the file in place as peers come and go: it is bound into
the container by inode).
"""

from __future__ import annotations

import ipaddress
import os

DEFAULT_DNS = ["8.8.8.8", "8.8.4.4"]  # Docker's, when the host has only loopback resolvers
HOST_NAME = "host.containers.internal"


def host_resolv() -> str:
    try:
        with open("/etc/resolv.conf") as f:
            return f.read()
    except OSError:
        return ""


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_for_bridge(text: str) -> str:
    """The host's resolv.conf for a container in its own namespace: loopback resolvers (a
    systemd-resolved stub, dnsmasq on 127.0.0.1) cannot be reached from there."""
    lines = [
        line
        for line in text.splitlines()
        if not (line.split()[:1] == ["nameserver"] and len(line.split()) > 1 and _loopback(line.split()[1]))
    ]
    if not any(line.split()[:1] == ["nameserver"] for line in lines):
        lines += [f"nameserver {ip}" for ip in DEFAULT_DNS]
    return "\n".join(lines) + "\n"


def resolv_with(nameserver: str, text: str) -> str:
    """One resolver (pasta's DNS forwarder) and the host's search and options lines."""
    kept = [line for line in text.splitlines() if line.split()[:1] in (["search"], ["domain"], ["options"])]
    return "\n".join([f"nameserver {nameserver}", *kept]) + "\n"


def hosts(hostname: str, ip: str | None, host_ip: str | None, peers: list[tuple[str, str, str]]) -> str:
    """``ip``: the container's address (None: 127.0.1.1, as with no network); ``host_ip``: the
    host as the container reaches it; ``peers``: (address, name, id) of the other containers."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{ip or '127.0.1.1'}\t{hostname}"]
    if host_ip:
        lines.append(f"{host_ip}\t{HOST_NAME}")
    lines += [f"{address}\t{name} {cid[:12]}" for address, name, cid in peers]
    return "\n".join(lines) + "\n"


def rewrite(path: str, text: str) -> None:
    """Write ``text`` into the file at ``path`` in place (the same inode: it is bind-mounted into a
    running container). A file that is gone is left so."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        data = text.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)

"""Address leases on the host's bridges: ``/run/strata/net/leases/<bridge>/<address>``, one JSON file
per container endpoint, host-wide (store roots share the host's bridges, so they share these), taken
and given back under ``/run/strata/net/lock``. A lease says everything its endpoint made on the host
(the veth, the published ports), so whoever finds it stale can undo it all.

A lease is *live* while the supervisor of its container holds ``supervisor.lock`` (it does for its
whole life; the kernel lets go of a dead one's). A stale lease is a dead supervisor's: its container
is gone (PID 1 dies with the supervisor, and the namespace and eth0 with it), but its map elements,
and maybe a veth that the kernel has not finished destroying, are still there: ``runner.net.attach``
reclaims them. /run is a tmpfs: after a reboot no lease is left, nor any bridge or nftables table.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from store.root import write_json

RUN_DIR = "/run/strata/net"


@dataclass
class Lease:
    bridge: str
    ip: str
    container: str  # the container's directory (its supervisor.lock says whether the lease is live)
    id: str
    name: str
    hostname: str
    network: str  # the network's name (user networks list their peers in /etc/hosts)
    veth: str
    ports: list[dict[str, Any]] = field(default_factory=list)  # nft.PortElement fields

    @property
    def path(self) -> str:
        return os.path.join(RUN_DIR, "leases", self.bridge, self.ip)

    def live(self) -> bool:
        return supervised(self.container)

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        write_json(self.path, asdict(self), durable=False)

    def drop(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def supervised(container_dir: str) -> bool:
    """Does a supervisor hold that container's lock? (The same test as ``Container.supervised``,
    without the record: a lease outlives neither its container nor its supervisor for long.)"""
    try:
        fd = os.open(os.path.join(container_dir, "supervisor.lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def locked() -> Iterator[None]:
    """The host's network lock: every lease, bridge and nftables change is made holding it."""
    for d in (os.path.dirname(RUN_DIR), RUN_DIR):  # /run/strata is the zygote's too: 0700, not makedirs' 0755
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    fd = os.open(os.path.join(RUN_DIR, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def all_leases(bridge: str | None = None) -> list[Lease]:
    base = os.path.join(RUN_DIR, "leases")
    try:
        bridges = [bridge] if bridge else sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    out = []
    for b in bridges:
        try:
            names = sorted(os.listdir(os.path.join(base, b)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            try:
                with open(os.path.join(base, b, name)) as f:
                    out.append(Lease(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
    return out


def of_container(container_dir: str) -> list[Lease]:
    return [lease for lease in all_leases() if lease.container == container_dir]


def free_address(subnet: str, gateway: str, taken: set[str]) -> str | None:
    """The lowest address of ``subnet`` that is neither its gateway nor ``taken``."""
    net = ipaddress.IPv4Network(subnet)
    for host in net.hosts():
        text = str(host)
        if text != gateway and text not in taken:
            return text
    return None


def mac_for(ip: str) -> str:
    """A locally administered MAC from the address (as Docker's bridge gave): an address reused
    by the next container keeps its MAC, so no neighbour's ARP cache points at a dead one."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)

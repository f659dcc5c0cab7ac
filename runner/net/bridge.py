"""A container on a bridge network (root only): its lease, its veth pair, its published ports; and
the bridge itself. Every change is made holding the host's network lock (``leases.locked``).

    lease        an address of the network's subnet, written before the container's /etc/hosts
                 (which names it); stale leases of that bridge are reclaimed first
    connect      once PID 1 exists (its new network namespace): the bridge made if missing, the
                 veth pair ``veth<12 hex of the id>`` / ``eth0`` (made in PID 1's namespace
                 directly), eth0's address, MAC (from the address) and default route, the DNAT
                 elements, the peers' /etc/hosts
    disconnect   when the container has ended: the elements that still name it, the veth taken off
                 the bridge and down (the kernel deletes it with the namespace, at once: a delete
                 here would wait ~15 ms for RCU; deleted here if another container shares the
                 namespace, which then lives on), the lease, the peers' hosts
    reclaim      the same for a stale lease (a dead supervisor's), by whoever finds it

*Caveats*: one network per container (no ``network connect``); IPv4 only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict
from typing import Any

from . import etc, leases
from .errors import NetworkError
from .leases import Lease
from .netlink import Netlink
from .networks import Network
from .nft import Nft, PortElement
from .ports import Reservation


def veth_name(container_id: str) -> str:
    return f"veth{container_id[:11]}"  # 15 bytes: IFNAMSIZ's most


def _sysctl(path: str, value: str) -> None:
    with open(path, "r+") as f:
        if f.read().strip() != value:
            f.seek(0)
            f.write(value)


def ensure_bridge(nl: Netlink, nft: Nft, network: Network) -> int:
    """The network's bridge, up, with the gateway address, forwarding on and strata's table holding
    it (all idempotent: after a reboot, or someone's ``ip link del``, this makes them again)."""
    index = nl.index(network.bridge)
    if index is None:
        try:
            nl.add_bridge(network.bridge)
        except FileExistsError:  # made meanwhile by another store's strata (the lock is per host, but
            pass  # an older strata may not have taken it)
        index = nl.up(network.bridge)
    nl.add_address(index, network.interface)
    nl.up(network.bridge)
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    # DNAT of a port published on 127.0.0.1 sends loopback-sourced packets out of the bridge
    _sysctl(f"/proc/sys/net/ipv4/conf/{network.bridge}/route_localnet", "1")
    nft.ensure(network.bridge, network.subnet)
    return index


def remove_bridge(network: Network) -> None:
    """A user network goes: its bridge (by exact name) and its elements in strata's table."""
    with leases.locked(), Netlink.here() as nl, Nft() as nft:
        nl.delete(network.bridge)
        nft.forget_bridge(network.bridge, network.subnet)
        try:
            os.rmdir(os.path.join(leases.RUN_DIR, "leases", network.bridge))
        except OSError:  # none was ever leased there (or, at worst, a lease still is)
            pass


def _elements(lease: Lease) -> list[PortElement]:
    return [PortElement(**p) for p in lease.ports]


def reclaim(lease: Lease, nl: Netlink, nft: Nft, delete: bool = True) -> None:
    """Undo what a lease's endpoint made (the caller holds the lock); ``delete`` false: the veth is
    only taken off the bridge (its namespace is going, and the veth with it)."""
    nft.unpublish(_elements(lease))
    if delete:
        nl.delete(lease.veth)
    else:
        nl.detach(lease.veth)
    lease.drop()


def refresh_peers(network: Network) -> None:
    """Rewrite the /etc/hosts of every live container on a user network: each lists the others.
    (The default ``bridge`` network gives no names, as Docker's.)"""
    if network.builtin:
        return
    live = [lease for lease in leases.all_leases(network.bridge) if lease.live()]
    for lease in live:
        peers = [(p.ip, p.name, p.id) for p in live if p.id != lease.id]
        etc.rewrite(os.path.join(lease.container, "hosts"), etc.hosts(lease.hostname, lease.ip, network.gateway, peers))


class BridgeEndpoint:
    def __init__(
        self, network: Network, container_dir: str, cid: str, name: str, hostname: str, reservation: Reservation
    ) -> None:
        self.network = network
        self.reservation = reservation
        self.lease: Lease | None = None
        self.fields: dict[str, Any] = {
            "container": container_dir,
            "id": cid,
            "name": name,
            "hostname": hostname,
            "network": network.name,
            "veth": veth_name(cid),
        }
        self.connected = False

    def take_lease(self) -> Lease:
        with leases.locked():
            stale = []
            taken = set()
            for lease in leases.all_leases(self.network.bridge):
                if lease.live() and lease.container != self.fields["container"]:
                    taken.add(lease.ip)
                else:
                    stale.append(lease)
            if stale:
                with Netlink.here() as nl, Nft() as nft:
                    for lease in stale:
                        reclaim(lease, nl, nft)
            ip = leases.free_address(self.network.subnet, self.network.gateway, taken)
            if ip is None:
                raise NetworkError(f"no free address left on network {self.network.name} ({self.network.subnet})")
            self.lease = Lease(bridge=self.network.bridge, ip=ip, **self.fields)
            self.lease.save()
        return self.lease

    @property
    def peers(self) -> list[tuple[str, str, str]]:
        if self.network.builtin or self.lease is None:
            return []
        return [
            (p.ip, p.name, p.id) for p in leases.all_leases(self.network.bridge) if p.id != self.lease.id and p.live()
        ]

    def elements(self) -> list[PortElement]:
        assert self.lease is not None
        return [
            PortElement(p.proto, "" if p.host_ip == "0.0.0.0" else p.host_ip, p.host_port, self.lease.ip, p.port)
            for p in self.reservation.published
        ]

    def connect(self, pid: int) -> None:
        lease = self.lease
        assert lease is not None
        netns = f"/proc/{pid}/ns/net"
        with leases.locked(), Netlink.here() as nl, Nft() as nft:
            self.connected = True  # from here on, disconnect has something to undo
            master = ensure_bridge(nl, nft, self.network)
            nl.delete(lease.veth)  # an earlier run's, if the kernel has not destroyed it yet
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                nl.add_veth(lease.veth, "eth0", fd, leases.mac_for(lease.ip), master)
            finally:
                os.close(fd)
            with Netlink.inside(netns) as inner:
                index = inner.up("eth0")
                prefix = ipaddress.IPv4Network(self.network.subnet).prefixlen
                inner.add_address(index, ipaddress.IPv4Interface(f"{lease.ip}/{prefix}"))
                inner.add_default_route(index, ipaddress.IPv4Address(self.network.gateway))
            elements = self.elements()
            lease.ports = [asdict(e) for e in elements]
            lease.save()  # before the elements: a lease always names what may be in the table
            nft.publish(elements)
            refresh_peers(self.network)

    def disconnect(self, shared: bool = False) -> None:
        """Undo it all; safe to call whatever was done, and again. ``shared``: other containers are
        in the namespace (``--network container:``), which outlives this one: its veth is deleted."""
        self.reservation.close()
        if self.lease is None:
            return
        with leases.locked():
            if self.connected:
                with Netlink.here() as nl, Nft() as nft:
                    reclaim(self.lease, nl, nft, delete=shared)
            else:
                self.lease.drop()
            refresh_peers(self.network)
        self.lease = None

    def record(self) -> dict[str, Any]:
        """What the state keeps for inspect and ps."""
        assert self.lease is not None
        return {
            "Network": self.network.name,
            "NetworkID": self.network.id,
            "Bridge": self.network.bridge,
            "IPAddress": self.lease.ip,
            "IPPrefixLen": ipaddress.IPv4Network(self.network.subnet).prefixlen,
            "Gateway": self.network.gateway,
            "MacAddress": leases.mac_for(self.lease.ip),
            "EndpointID": self.lease.veth,
        }

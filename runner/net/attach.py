"""What the supervisor calls: a container's network from its record's ``HostConfig.NetworkMode``.

    plan        before anything is forked: the network looked up, host ports reserved, an address
                leased; bad values (an unknown network, a port in use) fail here, nothing left
    write_etc   /etc/hosts and /etc/resolv.conf (which name the address)
    connect     once PID 1 exists and waits (its new network namespace): the veth pair or pasta
    record      what ``state.json`` keeps (``inspect``'s NetworkSettings, ``ps``'s PORTS)
    disconnect  when the container has ended (or failed to start): all of it undone

Modes: ``none`` (a loopback only), ``host`` (the host's namespace), ``container:ID`` (that running
container's namespace, joined by path: ``netns``), ``bridge`` (root: the default bridge; rootless:
pasta), a user network's name (root). ``reclaim`` undoes what a dead supervisor's start left,
``leftovers`` lists it for ``system check``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import etc, leases, ports
from .bridge import BridgeEndpoint, refresh_peers
from .bridge import reclaim as reclaim_lease
from .errors import NetworkError
from .netlink import Netlink
from .networks import Networks
from .nft import Nft, foreign_forward_drop, port_elements
from .pasta import DNS_FORWARD, PastaEndpoint

if TYPE_CHECKING:
    from ..containers import Container


class Endpoint:
    def __init__(
        self,
        mode: str,
        inner: BridgeEndpoint | PastaEndpoint | None = None,
        netns: str | None = None,
        joined: Container | None = None,
    ) -> None:
        self.mode = mode
        self.inner = inner
        self.netns = netns  # container:NAME: the namespace PID 1 joins
        self.joined = joined
        self.sharers: Callable[[], bool] = lambda: False  # do other containers share the namespace?

    @property
    def needs_pid(self) -> bool:
        """Is there anything to connect once PID 1's namespace exists?"""
        return self.inner is not None

    def write_etc(self, hostname: str, hosts_path: str, resolv_path: str) -> None:
        inner = self.inner
        if self.joined is not None:  # Docker shares the other container's files; strata copies them
            for src, dst in ((self.joined.path("hosts"), hosts_path), (self.joined.path("resolv.conf"), resolv_path)):
                with open(src) as f, open(dst, "w") as out:
                    out.write(f.read())
            return
        if isinstance(inner, BridgeEndpoint):
            assert inner.lease is not None
            hosts = etc.hosts(hostname, inner.lease.ip, inner.network.gateway, inner.peers)
            resolv = etc.resolv_for_bridge(etc.host_resolv())
        elif isinstance(inner, PastaEndpoint):
            hosts = etc.hosts(hostname, None, inner.gateway or None, [])
            resolv = etc.resolv_with(DNS_FORWARD, etc.host_resolv())
        else:
            hosts = etc.hosts(hostname, None, None, [])
            resolv = etc.host_resolv() if self.mode == "host" else ""
        with open(hosts_path, "w") as f:
            f.write(hosts)
        with open(resolv_path, "w") as f:
            f.write(resolv)

    def connect(self, pid: int) -> None:
        """``pid``: a process in the container's user and network namespaces (the container's init,
        whose namespaces PID 1 has: PID 1 itself is not dumpable until it execs, so an ordinary
        user's pasta could not open its /proc/PID/ns)."""
        if self.inner is not None:
            self.inner.connect(pid)

    def record(self, config: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"Mode": self.mode}
        published: list[ports.Published] = []
        if self.inner is not None:
            out.update(self.inner.record())
            published = self.inner.reservation.published
        out["Ports"] = ports.settings_ports(config, published) if self.inner is not None else {}
        return out

    def disconnect(self) -> str:
        """Undo it all (safe whatever was done, and again); what failed, or ''."""
        try:
            if isinstance(self.inner, BridgeEndpoint):
                self.inner.disconnect(shared=self.sharers())
            elif self.inner is not None:
                self.inner.disconnect()
        except (OSError, NetworkError) as e:
            return f"cannot remove the container's network: {e}"
        return ""


def plan(root: str, container: Container) -> Endpoint:
    """The endpoint of a start: ``NetworkError`` (nothing reserved, nothing leased) if it cannot be."""
    from ..containers import Containers

    config = container.config
    mode = config["HostConfig"]["NetworkMode"]
    rootless = os.geteuid() != 0
    if mode in ("none", "host"):
        return Endpoint(mode)
    if mode.startswith("container:"):
        other = Containers(root).get(mode.split(":", 1)[1])
        state = other.state()
        if not state.get("Running") or not state.get("Pid"):
            raise NetworkError(f"cannot join the network namespace of container {other.name}: it is not running")
        return Endpoint("container", netns=f"/proc/{state['Pid']}/ns/net", joined=other)
    if rootless:
        if mode not in ("bridge", "pasta"):
            raise NetworkError(
                f"network {mode}: rootless containers have bridge (through pasta), none, host and container:NAME"
            )
        return Endpoint("pasta", PastaEndpoint(ports.reserve(config)))
    networks = Networks(root)
    network = networks.by_id(config.get("NetworkID") or "") or networks.get(mode)
    if network.driver != "bridge":
        raise NetworkError(f"network {network.name} is not a bridge network")
    reservation = ports.reserve(config)
    endpoint = BridgeEndpoint(
        network, container.dir, container.id, container.name, config["Config"]["Hostname"], reservation
    )
    try:
        endpoint.take_lease()
    except BaseException:
        reservation.close()
        raise
    out = Endpoint(mode, endpoint)
    out.sharers = lambda: any(
        c.config["HostConfig"]["NetworkMode"] == f"container:{container.id}" and c.state().get("Running")
        for c in Containers(root).all()
    )
    return out


def reclaim(container: Container) -> None:
    """What a dead supervisor left of this container's network (the caller holds the container's
    supervisor lock, so any lease of it is a dead supervisor's): the leases' veths, DNAT elements and
    the leases themselves, and the peers' /etc/hosts. (Rootless: pasta died with the supervisor.)"""
    if os.geteuid() != 0:
        return
    mine = leases.of_container(container.dir)
    if not mine:
        return
    with leases.locked(), Netlink.here() as nl, Nft() as nft:
        for lease in mine:
            reclaim_lease(lease, nl, nft)
    by_name = {n.name: n for n in Networks(os.path.dirname(os.path.dirname(container.dir))).all()}
    for lease in mine:
        if lease.network in by_name:
            with leases.locked():
                refresh_peers(by_name[lease.network])


def leftovers(root: str) -> list[str]:
    """Lines for ``system check`` of the store at ``root``: its containers' stale leases (a dead
    supervisor's endpoint) and published ports that no lease names; a foreign ``policy drop`` on the
    forward hook. (Leases are host-wide: another store's are that store's to report, and those of a
    store that is gone, which nobody can ``rm`` any more, are reclaimed here.)"""
    if os.geteuid() != 0 or not os.path.isdir(leases.RUN_DIR):
        return []
    lines = []
    known: set[tuple[str, int, str]] = set()
    ours = os.path.join(os.path.realpath(root), "containers") + os.sep
    orphans = []
    for lease in leases.all_leases():
        known.update((p["host_ip"], p["host_port"], p["proto"]) for p in lease.ports)
        if not os.path.isdir(lease.container) and not lease.live():
            orphans.append(lease)
        elif not os.path.realpath(lease.container).startswith(ours):
            continue
        elif not lease.live():
            lines.append(
                f"leftover network endpoint of container {lease.name} ({lease.id[:12]}): {lease.ip} on "
                f"{lease.bridge}, {lease.veth}: `strata rm` or start it to clean up"
            )
    if orphans:
        with leases.locked(), Netlink.here() as nl, Nft() as nft:
            for lease in orphans:
                reclaim_lease(lease, nl, nft)
    try:
        with Nft() as nft:
            for e in port_elements(nft.table()):
                if (e.host_ip, e.host_port, e.proto) not in known:
                    lines.append(
                        f"leftover published port {e.host_ip or '0.0.0.0'}:{e.host_port}/{e.proto} -> "
                        f"{e.ip}:{e.port} in table ip strata (no container holds it)"
                    )
            for chain in foreign_forward_drop(nft):
                lines.append(
                    f"warning: chain {chain} drops forwarded packets by policy: published ports and "
                    "outbound traffic of containers may be dropped there"
                )
    except NetworkError as e:
        lines.append(f"cannot read strata's nftables table: {e}")
    return lines

"""Network records: ``ROOT/networks/<id>.json`` for user networks (``strata network create``), and the
three Docker has built in: ``bridge`` (strata's default: the bridge ``strata0`` on 10.66.0.0/16),
``host`` and ``none``. A user network is a bridge of its own, ``br-<12 hex of its id>``, on a /24
that overlaps no route of the host (chosen from 10.67.0.0 up unless ``--subnet`` says).

The bridges are the host's and outlive nothing but a reboot: ``network create`` makes a user
network's, ``bridge.ensure_bridge`` (re)makes a network's at each start that needs it,
``bridge.remove_bridge`` deletes it (by its exact name). Names are unique per store root (``networks/lock``); bridge names and subnets are
unique per host, as the host's routes are what a new subnet is checked against.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from store.images import now
from store.root import write_json

from .errors import NetworkError, NoSuchNetwork

DEFAULT_BRIDGE = "strata0"
DEFAULT_SUBNET = "10.66.0.0/16"
USER_POOL = ipaddress.IPv4Network("10.67.0.0/16"), ipaddress.IPv4Network("10.99.0.0/16")  # /24s from, to
BUILTIN = ("bridge", "host", "none")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass
class Network:
    name: str
    id: str
    driver: str  # bridge | host | null
    subnet: str = ""
    gateway: str = ""
    bridge: str = ""
    created: str = "0001-01-01T00:00:00Z"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        """The gateway with the subnet's prefix: the bridge's own address."""
        return ipaddress.IPv4Interface(f"{self.gateway}/{ipaddress.IPv4Network(self.subnet).prefixlen}")

    def inspect(self, endpoints: dict[str, Any]) -> dict[str, Any]:
        """Docker's ``network inspect`` object; ``endpoints``: the containers on it."""
        return {
            "Name": self.name,
            "Id": self.id,
            "Created": self.created,
            "Scope": "local",
            "Driver": self.driver,
            "EnableIPv6": False,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [{"Subnet": self.subnet, "Gateway": self.gateway}] if self.subnet else [],
            },
            "Internal": False,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": endpoints,
            "Options": {"com.docker.network.bridge.name": self.bridge} if self.bridge else {},
            "Labels": self.labels,
        }


def _builtin(name: str) -> Network:
    nid = hashlib.sha256(f"strata network {name}".encode()).hexdigest()
    if name == "bridge":
        subnet = ipaddress.IPv4Network(DEFAULT_SUBNET)
        return Network(name, nid, "bridge", str(subnet), str(subnet.network_address + 1), DEFAULT_BRIDGE)
    return Network(name, nid, "host" if name == "host" else "null")


def host_routes() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes (main table, /proc/net/route), default route aside."""
    out = []
    try:
        with open("/proc/net/route") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    for row in rows:
        fields = row.split()
        if len(fields) < 8:
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen:
            out.append(net)
    return out


class Networks:
    """The networks of a store root."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "networks")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def user(self) -> list[Network]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if not n.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.dir, n)) as f:
                    out.append(Network(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def all(self) -> list[Network]:
        return [_builtin(n) for n in BUILTIN] + self.user()

    def get(self, ref: str) -> Network:
        """By name, full id or unique id prefix (Docker's order)."""
        every = self.all()
        for n in every:
            if ref in (n.name, n.id):
                return n
        matches = [n for n in every if n.id.startswith(ref)] if re.fullmatch(r"[0-9a-f]+", ref) else []
        if len(matches) == 1:
            return matches[0]
        raise NoSuchNetwork(f"network {ref} not found")

    def by_id(self, nid: str) -> Network | None:
        return next((n for n in self.all() if n.id == nid), None)

    def create(self, name: str, subnet: str | None, gateway: str | None, labels: dict[str, str]) -> Network:
        """A user network's record, its subnet checked or chosen; the caller makes its bridge."""
        if not _NAME.match(name):
            raise NetworkError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if name in ("pasta", "default"):  # --network's own words
            raise NetworkError(f"{name} is a reserved network name")
        with self._locked():
            if any(n.name == name for n in self.all()):
                raise NetworkError(f"network with name {name} already exists")
            taken = [ipaddress.IPv4Network(n.subnet) for n in self.all() if n.subnet] + host_routes()
            net = _subnet(subnet, taken) if subnet else _free_subnet(taken)
            gw = _gateway(net, gateway)
            nid = secrets.token_hex(32)
            network = Network(name, nid, "bridge", str(net), str(gw), f"br-{nid[:12]}", now(), labels)
            write_json(os.path.join(self.dir, f"{nid}.json"), asdict(network))
            return network

    def remove(self, network: Network) -> None:
        try:
            os.unlink(os.path.join(self.dir, f"{network.id}.json"))
        except FileNotFoundError:
            pass


def _subnet(text: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise NetworkError(f"invalid subnet {text}: an IPv4 network as 10.1.2.0/24 is wanted") from None
    if net.prefixlen > 30:
        raise NetworkError(f"invalid subnet {text}: too small for containers (at most /30)")
    for other in taken:
        if net.overlaps(other):
            raise NetworkError(f"invalid subnet {text}: it overlaps {other}, in use on this host")
    return net


def _free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    first, last = USER_POOL
    for net in ipaddress.summarize_address_range(first.network_address, last.broadcast_address):
        for candidate in net.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    raise NetworkError(f"no free /24 left in {first.network_address}-{last.broadcast_address}: give --subnet")


def _gateway(net: ipaddress.IPv4Network, text: str | None) -> ipaddress.IPv4Address:
    if not text:
        return net.network_address + 1
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError:
        raise NetworkError(f"invalid gateway {text}") from None
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise NetworkError(f"no matching subnet for gateway {text}")
    return gw

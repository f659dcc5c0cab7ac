"""Published ports: ``-p`` specs as Docker's CLI reads them (go-connections ``nat.ParsePortSpec``),
the host ports a start reserves, and Docker's ways of showing them (``ps``'s PORTS, ``strata port``).

A container's record holds Docker's shapes: ``HostConfig.PortBindings`` (``{"80/tcp": [{"HostIp":
"", "HostPort": "8080"}]}``; an empty HostPort: any free port; ``A-B``: the first free one of that
range) and ``Config.ExposedPorts``; ``-P`` publishes every exposed port that has no binding. At
each start the supervisor *reserves* each host port: a socket bound to it (TCP: bound, not
listening; UDP: bound) that it keeps until the container ends. Nothing else on the host can take
the port meanwhile, a second container asking for it is refused at once, and a dead supervisor's
ports are free again (the kernel closes its sockets), which is what tells strata that a DNAT
element still naming such a port is a leftover. *Caveats*: IPv4 only (an IPv6 host address is
refused); sctp is not supported.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from .errors import NetworkError, PortInUse

PROTOCOLS = ("tcp", "udp")


def _range(text: str, what: str) -> tuple[int, int]:
    """``N`` or ``N-M`` (Docker's ParsePortRange): the bounds, each 0..65535."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
        if not (low.isdigit() and (not sep or high.isdigit())) or not 0 <= first <= last <= 65535:
            raise ValueError
    except ValueError:
        raise NetworkError(f"invalid {what}: {text}") from None
    return first, last


def parse(spec: str) -> list[tuple[str, dict[str, str]]]:
    """One ``-p`` value, ``[IP:][HOST:]CTR[/PROTO]`` with ranges (``8000-8001:80-81``), as Docker's
    CLI parses it: ``(CTR/PROTO, {"HostIp": ..., "HostPort": ...})`` per container port.
    ``NetworkError`` with Docker's words for a bad one."""
    rest, _, proto = spec.rpartition("/") if "/" in spec else (spec, "", "tcp")
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise NetworkError(f"invalid proto: {proto}" if proto != "sctp" else "sctp ports are not supported")
    if rest.startswith("[") or rest.count(":") > 2:
        raise NetworkError(f"invalid port specification {spec!r}: IPv6 host addresses are not supported")
    parts = rest.split(":")
    ip, host, ctr = (["", ""] + parts)[-3:] if len(parts) < 3 else parts
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise NetworkError(f"invalid IP address: {ip}") from None
    if not ctr:
        raise NetworkError(f"no port specified: {spec}<empty>")
    first, last = _range(ctr, "containerPort")
    if first == 0:
        raise NetworkError(f"invalid containerPort: {ctr}")
    count = last - first + 1
    if host:
        host_first, host_last = _range(host, "hostPort")
        if count > 1 and host_last - host_first + 1 != count:
            raise NetworkError(f"invalid ranges specified for container and host Ports: {ctr} and {host}")
    out = []
    for i in range(count):
        if host and count > 1:
            host_port = str(host_first + i)
        else:
            host_port = host  # "", "8080" or a range to pick one free port from
        out.append((f"{first + i}/{proto}", {"HostIp": ip, "HostPort": host_port}))
    return out


def bindings(specs: list[str]) -> dict[str, list[dict[str, str]]]:
    """``HostConfig.PortBindings`` from the ``-p`` values."""
    out: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        for key, binding in parse(spec):
            if binding not in out.setdefault(key, []):
                out[key].append(binding)
    return out


def split_key(key: str) -> tuple[int, str]:
    """``80/tcp`` -> (80, "tcp"); a key without a protocol is tcp (images say ``EXPOSE 80``)."""
    port, _, proto = key.partition("/")
    return int(port), (proto or "tcp").lower()


def wanted(config: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The bindings a start publishes: ``PortBindings``, and with ``PublishAllPorts`` every exposed
    port without one, on any free host port."""
    hc = config["HostConfig"]
    out = {k: list(v) for k, v in (hc.get("PortBindings") or {}).items()}
    if hc.get("PublishAllPorts"):
        for key in sorted(config["Config"].get("ExposedPorts") or {}, key=split_key):
            port, proto = split_key(key)
            out.setdefault(f"{port}/{proto}", [{"HostIp": "", "HostPort": ""}])
    return out


@dataclass(frozen=True)
class Published:
    """One published port of a running container: host address (0.0.0.0: any) and port, to the
    container's port."""

    proto: str
    host_ip: str
    host_port: int
    port: int


class Reservation:
    """The sockets that hold a start's host ports (``reserve``); ``close`` lets them go."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.published: list[Published] = []

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


def _bind(proto: str, ip: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        s.bind((ip, port))
    except OSError:
        s.close()
        raise
    return s


def reserve(config: dict[str, Any]) -> Reservation:
    """Bind every host port the container publishes (``wanted``); a port in use, or an address that
    is not the host's, is a ``NetworkError`` with nothing left bound."""
    held = Reservation()
    try:
        for key, entries in sorted(wanted(config).items(), key=lambda kv: split_key(kv[0])):
            port, proto = split_key(key)
            for entry in entries:
                ip = entry.get("HostIp") or "0.0.0.0"
                low, high = _range(entry.get("HostPort") or "0", "hostPort")
                s = None
                for candidate in range(low, high + 1):
                    try:
                        s = _bind(proto, ip, candidate)
                        break
                    except OSError as e:
                        if e.errno == errno.EADDRINUSE and candidate < high:
                            continue
                        if e.errno == errno.EADDRINUSE:
                            shown = f"{low}-{high}" if high > low else str(low)
                            raise PortInUse(f"Bind for {ip}:{shown} failed: port is already allocated") from None
                        if e.errno == errno.EADDRNOTAVAIL:
                            raise NetworkError(
                                f"cannot publish port {key} on {ip}: not an address of this host"
                            ) from None
                        raise NetworkError(f"cannot publish port {key} on {ip}:{candidate}: {e.strerror}") from None
                assert s is not None
                held.sockets.append(s)
                held.published.append(Published(proto, ip, s.getsockname()[1], port))
    except BaseException:
        held.close()
        raise
    return held


# -- how Docker shows them ------------------------------------------------------------------------
def settings_ports(config: dict[str, Any], published: list[Published]) -> dict[str, Any]:
    """``NetworkSettings.Ports``: each exposed or published port, its host bindings or None."""
    out: dict[str, Any] = {}
    for key in config["Config"].get("ExposedPorts") or {}:
        port, proto = split_key(key)
        out[f"{port}/{proto}"] = None
    for p in published:
        key = f"{p.port}/{p.proto}"
        out[key] = (out.get(key) or []) + [{"HostIp": p.host_ip, "HostPort": str(p.host_port)}]
    return dict(sorted(out.items(), key=lambda kv: split_key(kv[0])))


def from_settings(ports: dict[str, Any]) -> list[Published]:
    out = []
    for key, entries in (ports or {}).items():
        port, proto = split_key(key)
        for e in entries or []:
            out.append(Published(proto, e["HostIp"], int(e["HostPort"]), port))
    return out


def ps_column(ports: dict[str, Any]) -> str:
    """Docker's PORTS column: ``0.0.0.0:8080->80/tcp``, consecutive ports of one address and
    protocol as ranges (``0.0.0.0:8080-8081->80-81/tcp``), exposed-only ports as ``80/tcp``."""
    published = sorted(from_settings(ports), key=lambda p: (p.host_ip, p.proto, p.port))
    groups: list[list[Published]] = []
    for p in published:
        last = groups[-1][-1] if groups else None
        if (
            last
            and (last.host_ip, last.proto) == (p.host_ip, p.proto)
            and p.port == last.port + 1
            and p.host_port == last.host_port + 1
        ):
            groups[-1].append(p)
        else:
            groups.append([p])

    def span(a: int, b: int) -> str:
        return f"{a}-{b}" if b != a else str(a)

    shown = [
        (
            g[0].port,
            g[0].proto,
            f"{g[0].host_ip}:{span(g[0].host_port, g[-1].host_port)}->{span(g[0].port, g[-1].port)}/{g[0].proto}",
        )
        for g in groups
    ]
    bare = [
        (port, proto, f"{port}/{proto}")
        for key, entries in (ports or {}).items()
        if not entries
        for port, proto in [split_key(key)]
    ]
    return ", ".join(text for _, _, text in sorted(shown + bare, key=lambda t: (t[0], t[1])))


def port_lines(ports: dict[str, Any], only: str | None = None) -> list[str]:
    """``strata port``'s lines: ``80/tcp -> 0.0.0.0:8080`` (``only``: that port's, as ``0.0.0.0:8080``)."""
    if only is not None:
        port, proto = split_key(only)
        return [f"{p.host_ip}:{p.host_port}" for p in from_settings(ports) if (p.port, p.proto) == (port, proto)]
    return [
        f"{p.port}/{p.proto} -> {p.host_ip}:{p.host_port}"
        for p in sorted(from_settings(ports), key=lambda p: (p.port, p.proto, p.host_port))
    ]

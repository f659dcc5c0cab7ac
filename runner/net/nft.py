"""strata's own nftables table, ``table ip strata``, through libnftables (ctypes: no ``nft`` process
per change). Nothing here reads or writes any other table: a host's own rules stay its own.

The table (made, and its fixed chains rewritten, in one transaction by ``ensure``)::

    set bridges, subnets                 strata's bridges and their subnets
    map tcp_ports, udp_ports             host port -> container address . port   (-p PORT:CTR)
    map tcp_addr_ports, udp_addr_ports   host address . port -> ...              (-p IP:PORT:CTR)
    map isolation                        bridge -> jump iso_<bridge>: no traffic between networks
    chain prerouting, output (dstnat)    fib daddr type local jump hostports: the DNAT maps
    chain postrouting (srcnat)           masquerade what leaves a subnet for elsewhere, and the
                                         DNATed traffic from loopback (route_localnet) or a subnet
                                         (hairpin), so that the answer comes back the same way
    chain forward (filter)               DNATed traffic passes; then the isolation map

A published port is one map element, keyed by the host port: added when the container starts and
deleted (by key, only while it still points at that container) when it ends. Who may add a key is
decided outside nftables: the container's supervisor holds a socket bound to that host port
(``runner.net.ports``), so an element whose key nobody holds is a dead supervisor's, replaced when
the port is next published. Other tables' base chains on the same hooks still see every packet:
one with ``policy drop`` on forward drops whatever this one accepts (``foreign_forward_drop``).
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any

from .errors import NetworkError

TABLE = "strata"
PORT_MAPS = {
    ("tcp", False): "tcp_ports",
    ("udp", False): "udp_ports",
    ("tcp", True): "tcp_addr_ports",
    ("udp", True): "udp_addr_ports",
}
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON

_STATIC = """\
add table ip strata
add set ip strata bridges { type ifname; }
add set ip strata subnets { type ipv4_addr; flags interval; }
add map ip strata tcp_ports { type inet_service : ipv4_addr . inet_service; }
add map ip strata udp_ports { type inet_service : ipv4_addr . inet_service; }
add map ip strata tcp_addr_ports { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
add map ip strata udp_addr_ports { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
add map ip strata isolation { type ifname : verdict; }
add chain ip strata hostports
add chain ip strata prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip strata output { type nat hook output priority -100; policy accept; }
add chain ip strata postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain ip strata forward { type filter hook forward priority filter; policy accept; }
flush chain ip strata hostports
flush chain ip strata prerouting
flush chain ip strata output
flush chain ip strata postrouting
flush chain ip strata forward
add rule ip strata hostports dnat ip to ip daddr . tcp dport map @tcp_addr_ports
add rule ip strata hostports dnat ip to tcp dport map @tcp_ports
add rule ip strata hostports dnat ip to ip daddr . udp dport map @udp_addr_ports
add rule ip strata hostports dnat ip to udp dport map @udp_ports
add rule ip strata prerouting fib daddr type local jump hostports
add rule ip strata output fib daddr type local jump hostports
add rule ip strata postrouting ct status dnat ip saddr 127.0.0.0/8 oifname @bridges masquerade
add rule ip strata postrouting ct status dnat ip saddr @subnets oifname @bridges masquerade
add rule ip strata postrouting ip saddr @subnets oifname != @bridges masquerade
add rule ip strata forward ct status dnat accept
add rule ip strata forward iifname vmap @isolation
"""


@dataclass(frozen=True)
class PortElement:
    """One published port as the maps hold it."""

    proto: str  # tcp | udp
    host_ip: str  # "" (any address of the host) or an IPv4 address
    host_port: int
    ip: str  # the container's address
    port: int  # and port

    @property
    def map(self) -> str:
        return PORT_MAPS[(self.proto, bool(self.host_ip))]

    @property
    def key(self) -> str:
        return f"{self.host_ip} . {self.host_port}" if self.host_ip else str(self.host_port)

    def text(self) -> str:
        return f"{{ {self.key} : {self.ip} . {self.port} }}"


def _load() -> ctypes.CDLL | None:
    """libnftables, loaded when this module is imported (the zygote imports it: its forks start with
    the library mapped, a millisecond or two a container start would spend otherwise)."""
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_LIB = _load()


class Nft:
    """A libnftables context; ``run`` takes nft's own syntax, one transaction per call."""

    def __init__(self) -> None:
        if _LIB is None:
            raise NetworkError("nftables is not installed (Debian: apt-get install nftables)")
        lib = self.lib = _LIB
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, script: str, as_json: bool = False) -> str:
        self.lib.nft_ctx_output_set_flags(self.ctx, _OUTPUT_JSON if as_json else 0)
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
        out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            first = next((line for line in err.splitlines() if line.startswith("Error")), err.strip() or "failed")
            raise NetworkError(f"nftables: {first}")
        return out

    def table(self) -> list[dict[str, Any]]:
        """strata's table as libnftables' JSON objects (empty if there is no table)."""
        if not self._exists():
            return []
        objects: list[dict[str, Any]] = json.loads(self.run(f"list table ip {TABLE}", as_json=True))["nftables"]
        return objects

    def _exists(self) -> bool:
        listed = json.loads(self.run("list tables ip", as_json=True) or '{"nftables": []}')["nftables"]
        return any(o.get("table", {}).get("name") == TABLE for o in listed)

    # -- what strata puts in its table --------------------------------------------------------------
    def ensure(self, bridge: str, subnet: str) -> None:
        """The table with its fixed chains (rewritten: idempotent), and ``bridge`` with its subnet
        and isolation chain, in one transaction."""
        chain = isolation_chain(bridge)
        self.run(
            _STATIC + f"add chain ip strata {chain}\nflush chain ip strata {chain}\n"
            f'add rule ip strata {chain} oifname != "{bridge}" oifname @bridges drop\n'
            f'add element ip strata isolation {{ "{bridge}" : jump {chain} }}\n'
            f'add element ip strata bridges {{ "{bridge}" }}\n'
            f"add element ip strata subnets {{ {subnet} }}\n"
        )

    def forget_bridge(self, bridge: str, subnet: str) -> None:
        """A network goes: its bridge's elements and isolation chain (whichever are there)."""
        objects = self.table()
        script = []
        if _has_element(objects, "isolation", bridge):
            script.append(f'delete element ip strata isolation {{ "{bridge}" }}')
        if _has_element(objects, "bridges", bridge):
            script.append(f'delete element ip strata bridges {{ "{bridge}" }}')
        if _has_element(objects, "subnets", subnet):
            script.append(f"delete element ip strata subnets {{ {subnet} }}")
        if any(o.get("chain", {}).get("name") == isolation_chain(bridge) for o in objects):
            script.append(f"delete chain ip strata {isolation_chain(bridge)}")
        if script:
            self.run("\n".join(script) + "\n")

    def publish(self, elements: list[PortElement]) -> None:
        """Add the elements; one already there under the same key is a dead container's (its port
        is no longer held) and is replaced. One transaction."""
        if not elements:
            return
        present = {(e.map, e.key) for e in port_elements(self.table())}
        script = [f"delete element ip strata {e.map} {{ {e.key} }}" for e in elements if (e.map, e.key) in present]
        script += [f"add element ip strata {e.map} {e.text()}" for e in elements]
        self.run("\n".join(script) + "\n")

    def unpublish(self, elements: list[PortElement]) -> list[PortElement]:
        """Delete those of the elements that are there as given (a key since given to another
        container stays); the ones deleted."""
        if not elements:
            return []
        present = set(port_elements(self.table()))
        gone = [e for e in elements if e in present]
        if gone:
            self.run("\n".join(f"delete element ip strata {e.map} {{ {e.key} }}" for e in gone) + "\n")
        return gone


def isolation_chain(bridge: str) -> str:
    return "iso_" + bridge.replace("-", "_")


def _has_element(objects: list[dict[str, Any]], name: str, value: str) -> bool:
    for o in objects:
        kind = o.get("set") or o.get("map")
        if kind and kind.get("name") == name:
            for elem in kind.get("elem") or []:
                key = elem[0] if isinstance(elem, list) else elem
                if isinstance(key, dict) and "prefix" in key:
                    key = f"{key['prefix']['addr']}/{key['prefix']['len']}"
                if key == value:
                    return True
    return False


def port_elements(objects: list[dict[str, Any]]) -> list[PortElement]:
    """The published ports in strata's table (``Nft.table()``'s JSON)."""
    out = []
    for o in objects:
        m = o.get("map")
        if not m or m.get("name") not in PORT_MAPS.values():
            continue
        proto = m["name"].split("_")[0]
        for key, value in m.get("elem") or []:
            ip, port = value["concat"]
            if isinstance(key, dict):
                host_ip, host_port = key["concat"]
            else:
                host_ip, host_port = "", key
            out.append(PortElement(proto, host_ip, int(host_port), ip, int(port)))
    return out


def foreign_forward_drop(nft: Nft) -> list[str]:
    """Base chains of other tables on the forward hook whose policy is drop: they drop what strata's
    table lets through (netavark#977, moby#50566). ``family table chain`` each."""
    objects = json.loads(nft.run("list chains", as_json=True) or '{"nftables": []}')["nftables"]
    return [
        f"{c['family']} {c['table']} {c['name']}"
        for o in objects
        if (c := o.get("chain"))
        and c.get("hook") == "forward"
        and c.get("policy") == "drop"
        and c.get("table") != TABLE
    ]

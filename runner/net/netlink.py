"""rtnetlink, the little of it a bridge network needs: links (bridge, veth pair with its peer made in
another namespace), addresses, routes; by name or index, in this namespace or in another one's
(``Netlink.inside``). Plain ``AF_NETLINK`` sockets: no ``ip`` process per step (each costs ~2 ms).

Every request asks for an acknowledgement; a refusal raises ``OSError`` with the kernel's errno.
Not thread-safe: one socket, one request at a time. *Caveats*: IPv4 only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

from .. import syscalls as sc

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/veth.h
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE = 20, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_OIF, RTA_GATEWAY = 4, 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFNAMSIZ = 16  # with its NUL: a name has at most 15 bytes


def _attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    data = struct.pack("HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise OSError(errno.EINVAL, f"invalid interface name {name!r}")
    return _attr(IFLA_IFNAME, raw + b"\0")


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    # struct ifinfomsg: family, pad, type, index, flags, change
    return struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


class Netlink:
    """A NETLINK_ROUTE socket of one network namespace (this process's, or another's: ``inside``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    @classmethod
    def here(cls) -> Netlink:
        return cls(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE))

    @classmethod
    def inside(cls, netns: str) -> Netlink:
        """A socket of the namespace at ``netns`` (``/proc/PID/ns/net``): this thread enters it only to
        make the socket, which stays bound to it (needs CAP_SYS_ADMIN there and here)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(target, sc.CLONE_NEWNET)
            try:
                return cls.here()
            finally:
                sc.setns(own, sc.CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(own)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[bytes]:
        """Send one message; the payloads of the answers (before the acknowledgement)."""
        self.seq += 1
        header = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(header + body)
        answers: list[bytes] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("IHHII", data, offset)
                payload = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return answers
                answers.append(payload)

    # -- links ------------------------------------------------------------------------------------
    def index(self, name: str) -> int | None:
        """The index of the link ``name``, or None if there is none."""
        try:
            (payload, *_) = self._request(RTM_GETLINK, 0, _ifinfo() + _name(name))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return int(struct.unpack_from("BxHiII", payload)[2])

    def link_attrs(self, name: str) -> dict[int, bytes] | None:
        try:
            (payload, *_) = self._request(RTM_GETLINK, 0, _ifinfo() + _name(name))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return dict(_attrs(payload[16:]))

    def mac(self, name: str) -> str:
        attrs = self.link_attrs(name) or {}
        return ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b""))

    def add_bridge(self, name: str) -> None:
        """A bridge ``name``, down; EEXIST if that name is taken."""
        info = _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge"))
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + _name(name) + info)

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, peer_mac: str, master: int) -> None:
        """A veth pair: ``name`` here, up, enslaved to the link ``master``; ``peer`` made directly in
        the namespace of ``peer_netns_fd`` with the MAC ``peer_mac`` (down: configured there)."""
        peer_info = (
            _ifinfo()
            + _name(peer)
            + _attr(IFLA_NET_NS_FD, struct.pack("I", peer_netns_fd))
            + _attr(IFLA_ADDRESS, mac_bytes(peer_mac))
        )
        info = _attr(
            IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        )
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + _name(name) + info)
        index = self.index(name)
        assert index is not None
        self._request(RTM_NEWLINK, 0, _ifinfo(index, up=True) + _attr(IFLA_MASTER, struct.pack("I", master)))

    def up(self, name: str) -> int:
        """Bring the link up; its index."""
        index = self.index(name)
        if index is None:
            raise OSError(errno.ENODEV, f"no interface {name}")
        self._request(RTM_NEWLINK, 0, _ifinfo(index, up=True))
        return index

    def detach(self, name: str) -> bool:
        """Take the link ``name`` off its bridge and down (a fraction of a millisecond, where a
        delete waits ~15 ms for RCU); false if there is none."""
        index = self.index(name)
        if index is None:
            return False
        body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, 0, IFF_UP) + _attr(IFLA_MASTER, struct.pack("I", 0))
        try:
            self._request(RTM_NEWLINK, 0, body)
        except OSError as e:
            # The namespace at the other end died in between, and the kernel took the pair along.
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def delete(self, name: str) -> bool:
        """Delete the link ``name`` (a veth takes its peer along); false if there was none."""
        try:
            self._request(RTM_DELLINK, 0, _ifinfo() + _name(name))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses and routes ---------------------------------------------------------------------
    def add_address(self, index: int, interface: ipaddress.IPv4Interface) -> None:
        """``interface`` (address/prefix) on the link ``index``, with its broadcast; an address it
        has already is fine."""
        net = interface.network
        body = struct.pack("BBBBI", socket.AF_INET, net.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, interface.ip.packed) + _attr(IFA_ADDRESS, interface.ip.packed)
        if net.prefixlen < 31:
            body += _attr(IFA_BROADCAST, net.broadcast_address.packed)
        try:
            self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)
        except FileExistsError:
            pass

    def add_default_route(self, index: int, gateway: ipaddress.IPv4Address) -> None:
        body = struct.pack(
            "BBBBBBBBI", socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
        )
        body += _attr(RTA_GATEWAY, gateway.packed) + _attr(RTA_OIF, struct.pack("I", index))
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

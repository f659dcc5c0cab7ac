"""FUSE passthrough (Linux 6.9): the kernel reads, writes and maps an open file through a backing
file of ours, and no READ or WRITE of it reaches the daemon. This module owns the backing ids
registered on the session's /dev/fuse fd (ioctl FUSE_DEV_IOC_BACKING_OPEN and _CLOSE) and the
kernel's rules for which open may have one (an open's answer); not the fds themselves (``fdcache``).

The kernel's rules (fs/fuse/iomode.c, backing.c): an inode open through a backing file takes every
other open of it through that same backing file, and an inode open without one (through the FUSE
page cache) takes no backing file until its last close; otherwise the open fails with EIO. So the
opens of a node go one way until the last RELEASE: the first open registers the node's file (the
one its fd reads or writes now) and later ones share that id; an upper file's id is closed at the
last RELEASE (the kernel keeps its own reference while the file is open), a lower file's is kept
(below). A backing file needs CAP_SYS_ADMIN in the initial user namespace (EPERM otherwise:
passthrough goes off for the mount) and must not be on a stacked filesystem (ELOOP, for a lower on
overlayfs: that node is opened without one).

A lower file's id outlives its last RELEASE: it is *idle*, kept for the node's next open, which
then costs no BACKING_OPEN and no BACKING_CLOSE (a read of every file in /usr, twice over, opens
each file twice). Lower files never change, so an idle id serves while the node still shows that
file (the next open checks: a node copied up since gets a new id, and the stale one is closed); the
``idle_cap`` most recently released are kept, the kernel holding a reference to each file, until
the kernel forgets the node. An upper file's id is not kept: an idle one would keep a deleted file's
blocks allocated.

Caveats:
  - A setuid file (setgid and group-executable: what a write by a caller without CAP_FSETID drops)
    is opened through the page cache; made so while open through a backing file (a chmod), it keeps
    the bits through that open's writes.
  - A lower file open through its backing file cannot change backing while it stays open (the
    kernel refuses another). So when an open finds the node copied up since (an open for writing
    copies it up), the copy gets an inode number of its own and the open answers ESTALE: the kernel
    looks the name up again and opens the copy (``clashes``, ``UnionFS.open``). The opens made
    before keep reading the lower data, as kernel overlayfs's do; the name's inode number changes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3

from .inodes import Node
from .upper import without_suidgid

# linux/fuse.h: _IOW(229, 1, struct fuse_backing_map {int32 fd; uint32 flags; uint64 padding}) and
# _IOW(229, 2, uint32_t)
BACKING_OPEN = 0x4010E501
BACKING_CLOSE = 0x4004E502
_CAP_SYS_ADMIN = 21
_FIRST = (6, 9)  # the first Linux with FUSE_PASSTHROUGH


def usable() -> bool:
    """May this process register backing files at all (it is asked before mounting, as the mount
    then keeps the kernel's OPEN, which passthrough needs): CAP_SYS_ADMIN in the initial user
    namespace, on a Linux that has FUSE_PASSTHROUGH. The kernel may still refuse (an LSM, a
    kernel built without it): then the opens go through the page cache."""
    try:
        release = tuple(int(part) for part in os.uname().release.split(".")[:2])
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
        with open("/proc/self/uid_map") as f:
            initial = f.read().split() == ["0", "0", "4294967295"]
    except (OSError, ValueError, StopIteration):
        return False
    return release >= _FIRST and bool(caps & 1 << _CAP_SYS_ADMIN) and initial


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@dataclass
class _Opens:
    """The opens of one node the kernel has not released yet, and the backing file they share."""

    count: int
    backing: int  # its id; 0: they go through the page cache
    identity: tuple[int, int]  # (st_dev, st_ino) of the backing file
    lower: bool  # a lower file's: its id is kept idle after the last RELEASE


class Passthrough:
    """The backing files of a mount that asked for FUSE_PASSTHROUGH; ``dev_fd()`` is the session's
    /dev/fuse fd, or -1 where the kernel did not take the flag (``pyfuse3.passthrough_fd``)."""

    def __init__(self, dev_fd: Callable[[], int], stat: Callable[[Node], os.stat_result], idle_cap: int) -> None:
        self._dev_fd = dev_fd
        self._stat = stat  # a node's attributes as the mount shows them (from its fd)
        self.idle: OrderedDict[int, tuple[int, tuple[int, int]]] = OrderedDict()  # ino: (id, identity)
        self.idle_cap = idle_cap
        self.dev_fd: int | None = None  # asked at the first open: the kernel has answered INIT then
        self.on = True  # until the kernel refuses us (-1: it did not take the flag; EPERM)
        self.opens: dict[int, _Opens] = {}
        # once a file has been read or written around the FUSE page cache, what that cache holds
        # of it may be stale: a later page-cache open (a refused backing file) must not keep it
        self.registered = False

    def clashes(self, node: Node, fd: int) -> bool:
        """Is ``node`` open through a backing file other than ``fd``, the file an open of it now
        reads or writes: a lower file's, the node copied up since (see Caveats)?"""
        opens = self.opens.get(node.ino)
        return opens is not None and opens.backing != 0 and _identity(fd) != opens.identity

    def file_info(self, node: Node, fd: int, lower: bool = False) -> pyfuse3.FileInfo:
        """The answer to an open of ``node`` (``fd``: the file it shows now, which an open for
        writing writes; ``clashes`` said no; ``lower``: a lower file, read): with a backing id, or
        through the page cache. Each open answered must be ``released``."""
        opens = self.opens.get(node.ino)
        if opens is not None:  # the kernel takes every open of it the same way (see above)
            opens.count += 1
            return self._info(node.ino, opens.backing)
        if self.dev_fd is None:
            self.dev_fd = self._dev_fd()
            self.on = self.dev_fd >= 0
        st = self._stat(node)  # (from fd, which the node has now)
        # the backing file: the node's own (st says which) or, for a metacopy, its lower file
        identity = (st.st_dev, st.st_ino) if fd == node.fd else _identity(fd)
        backing = 0
        # a write by a caller without CAP_FSETID must drop setuid/setgid, which only a WRITE
        # reaching the daemon says (FUSE_HANDLE_KILLPRIV_V2): such files go through the page cache
        if self.on and without_suidgid(st.st_mode) is None:
            backing = self._idle_id(node.ino, identity) or self._register(fd)
        self.opens[node.ino] = _Opens(1, backing, identity, lower)
        return self._info(node.ino, backing)

    def _idle_id(self, ino: int, identity: tuple[int, int]) -> int:
        """The idle id kept for ``ino`` if it is still of the file ``identity`` (then no longer
        idle); else 0 (a stale one is closed)."""
        kept = self.idle.get(ino)
        if kept is not None and kept[1] == identity:
            del self.idle[ino]
            return kept[0]
        self.forget(ino)  # (a stale one: the node shows another file now)
        return 0

    def _info(self, ino: int, backing: int) -> pyfuse3.FileInfo:
        if backing:
            self.registered = True
            return pyfuse3.FileInfo(fh=ino, keep_cache=False, backing_id=backing)
        return pyfuse3.FileInfo(fh=ino, keep_cache=not self.registered)

    def released(self, ino: int) -> None:
        opens = self.opens.get(ino)
        if opens is None:
            return
        opens.count -= 1
        if opens.count <= 0:
            del self.opens[ino]
            if not opens.backing:
                return
            if not opens.lower:
                self._close(opens.backing)
                return
            self.idle[ino] = (opens.backing, opens.identity)
            if len(self.idle) > self.idle_cap:
                self._close(self.idle.popitem(last=False)[1][0])

    def forget(self, ino: int) -> None:
        """Close the idle id of node ``ino``, if it has one: the kernel forgot the node (memory
        pressure, say), and its id goes with its fds rather than keep the lower file pinned."""
        kept = self.idle.pop(ino, None)
        if kept is not None:
            self._close(kept[0])

    def _register(self, fd: int) -> int:
        try:
            return int(fcntl.ioctl(self.dev_fd or -1, BACKING_OPEN, bytearray(struct.pack("=iIQ", fd, 0, 0))))
        except OSError as e:  # ELOOP (a stacked filesystem), EMFILE...: this open goes through the page cache
            if e.errno == errno.EPERM:
                self.on = False  # not ours to have: every open goes through the page cache from now
            return 0

    def _close(self, backing: int) -> None:
        try:
            fcntl.ioctl(self.dev_fd or -1, BACKING_CLOSE, bytearray(struct.pack("=I", backing)))
        except OSError:
            pass  # the connection is going (the kernel drops every id with it)

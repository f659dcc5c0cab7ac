"""The backing fds of file nodes: the most recently used stay open, pinned ones outside that cap.

A FUSE file handle is the file's inode number, whether the kernel opened it (stock pyfuse3) or sent no
OPEN at all (``enable_no_open``; then no RELEASE comes either), so the real fds belong to the nodes.
The ``cap`` most recently used stay open (least recent closed first); an upper file about to lose a
name is *pinned*: it gets an fd, outside the cap, that it keeps until the kernel forgets the inode,
which it does only after the last close (the name may have been the one the node knew it by).
A metacopy's reads come from the lower file holding its data (``data_fd``), whose fd the node
keeps beside its own until the data is copied up. No FUSE types here.

A lower file is opened O_NOATIME where this process may (``copydata.open_lower``): where a layer
is not on a private noatime mount (``layers``), this process's reads move no atime in it either
(a passthrough read is the kernel's, which does not heed the flag: see ``layers``).

The cap is 8192 (at most a quarter of the open-file limit: ``mount._fd_budget``): a read of every
file in a Debian /usr opens 4671, and an LRU smaller than a repeated scan keeps nothing of it. Each
cached fd, and each idle backing id of ``passthrough`` (a lower file open when it was registered:
the one the cached fd has, or one the cache has closed since), keeps a lower file's dentry and
inode in memory, but no longer than the kernel keeps the node: under memory pressure it forgets
nodes, and their fds and ids go with them (``UnionFS.forget``).
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

from .copydata import open_lower
from .errors import oserror
from .inodes import Node
from .layers import LayerSet
from .metacopy import DataPlaces

CAP = 8192  # backing fds kept open (the most recently used), besides those of pinned files: see above


class FdCache:
    def __init__(self, layers: LayerSet, cap: int = CAP) -> None:
        self.layers = layers
        self.cap = cap
        self.lru: OrderedDict[int, Node] = OrderedDict()  # nodes with a cached fd, least recent first
        self.places = DataPlaces(layers)

    def fd(self, node: Node, write: bool = False) -> int:
        """An fd on the file ``node`` shows; read-write with ``write`` (it is in the upper then)."""
        fd = node.fd
        if fd >= 0 and (node.fd_writable or not write):
            if node.ino in self.lru:  # not if pinned
                self.lru.move_to_end(node.ino)
            return fd
        if node.unlinked and node.layer == self.layers.upper:
            raise oserror(errno.EBADF, node.name)  # kept read-only: the daemon may not write it
        with self.layers.at(node.layer, node.rel) as (dfd, name):
            if write or node.layer == self.layers.upper:
                fd = os.open(name, (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            else:
                fd = open_lower(name, dfd)
        self.keep(node, fd, write)
        return fd

    def data_fd(self, node: Node) -> int:
        """An fd to read the data of the file ``node`` from: its own, or for a metacopy the lower
        file holding its data (``DataPlaces.data_location``)."""
        if node.data is None or (found := self.places.data_location(node)) is None:
            return self.fd(node)
        if node.data_fd < 0:
            with self.layers.at(*found) as (dfd, name):
                node.data_fd = open_lower(name, dfd)
            self.fd(node)  # in the cache, which closes both
        return node.data_fd

    def data_copied(self, node: Node) -> None:
        """The metacopy ``node`` has its data now (or wants none: truncated to zero)."""
        node.data = None
        if node.data_fd >= 0:
            os.close(node.data_fd)
            node.data_fd = -1

    def keep(self, node: Node, fd: int, writable: bool, cached: bool | None = None) -> None:
        """Give ``node`` the fd (closing its old one), in the cache unless ``cached`` is false
        (by default: unless the node is unlinked)."""
        if node.fd >= 0:
            os.close(node.fd)
        node.fd, node.fd_writable = fd, writable
        if cached is None:
            cached = not node.unlinked
        if not cached:
            self.lru.pop(node.ino, None)
            return
        self.lru[node.ino] = node
        self.lru.move_to_end(node.ino)
        while len(self.lru) > self.cap:
            _, old = self.lru.popitem(last=False)
            os.close(old.fd)
            old.fd = -1
            if old.data_fd >= 0:
                os.close(old.data_fd)
                old.data_fd = -1

    def relinked(self, node: Node) -> None:
        """A pinned node found again under a name: its fd is an ordinary cached one again."""
        self.lru[node.ino] = node

    def drop(self, node: Node) -> None:
        if node.fd >= 0:
            os.close(node.fd)
            node.fd = -1
        if node.data_fd >= 0:
            os.close(node.data_fd)
            node.data_fd = -1
        self.lru.pop(node.ino, None)

    def pin(self, node: Node) -> None:
        """Before an upper file loses a name: keep an fd on it, out of the cache, until the kernel
        forgets it. With no OPEN sent there is no knowing whether the kernel holds it open, and
        the name may have been the one the node knew it by (a hard link's other name works)."""
        self.lru.pop(node.ino, None)
        if node.fd >= 0 and node.fd_writable:
            return
        with self.layers.at(node.layer, node.rel) as (dfd, name):
            try:
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                writable = True
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.ETXTBSY, errno.EROFS):
                    raise
                fd, writable = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd), False
        self.keep(node, fd, writable, cached=False)

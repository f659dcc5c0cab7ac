"""Our inode numbers and the nodes the kernel holds: identity -> number, lookup counts, forget.

Every object gets a number of ours, keyed by the identity (st_dev, st_ino) of the real object that
shows; a copy-up records the new upper object as an alias of the original, so numbers stay stable
for the life of the mount, are unique across layers, and hard links share one. An object this mount
creates gets a fresh number even when the upper filesystem reuses the st_ino of one that is gone:
the kernel may still hold the old one (a process's cwd in a removed directory), and a number it
holds must never name a new object (it would answer ESTALE, or show the old inode's pages). Numbers
are never reused, so every generation is 0. A node is forgotten at lookup count 0 (the kernel
forgets nothing it holds open); the identity map is kept. No FUSE types here; the backing fds are
``fdcache``'s.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import oserror
from .layers import LayerSet, Resolved
from .metacopy import UNCHECKED

Identity = tuple[int, int]
ROOT = 1  # FUSE's root inode number (pyfuse3.ROOT_INODE)


@dataclass(eq=False)
class Node:
    ino: int
    parent: Node | None
    name: str
    layer: int  # the layer the object shows from (the top-most one for a directory)
    dir_layers: list[int]  # for a directory: the layers merging into it, top-most first
    is_dir: bool
    lookups: int = 0
    fd: int = -1  # a file's backing fd, kept for reads and writes (see fdcache)
    fd_writable: bool = False
    unlinked: bool = False  # its last name is gone; a file keeps its fd until the kernel forgets it
    last: os.stat_result | None = None
    listing: list[Any] | None = None  # a lower-only directory's entries, resolved once (see listing)
    # a directory whose upper holds no whiteouts: this daemon made it (mkdir, copy-up) and has put
    # none in it since, so a name created in it has no whiteout to remove
    no_whiteouts: bool = False
    # a file whose data is elsewhere: (layer, path) of the lower file a metacopy names (see
    # ``metacopy``), None when it is its own, ``metacopy.UNCHECKED`` while its record is unread
    data: tuple[int, str] | None = None
    data_fd: int = -1  # an fd on that lower file, for reads (see fdcache)

    @property
    def rel(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class InodeTable:
    """The nodes by number, and the numbers by identity. ``relinked(node)`` is told when an unlinked
    node is found again under a name (its fd goes back into the cache)."""

    def __init__(self, layers: LayerSet, relinked: Callable[[Node], None]) -> None:
        self.layers = layers
        self._relinked = relinked
        root_dirs = layers.root_dirs()
        self.root = Node(ROOT, None, "", root_dirs[0], root_dirs, True, lookups=1)
        self.nodes: dict[int, Node] = {ROOT: self.root}
        self.inos: dict[Identity, int] = {}
        self.aliases: dict[Identity, Identity] = {}
        self._next_ino = itertools.count(ROOT + 1)

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise oserror(errno.ESTALE) from None

    def identity(self, st: os.stat_result) -> Identity:
        """The object's identity: its own (st_dev, st_ino), or the original's if it is a copy-up."""
        ident = (st.st_dev, st.st_ino)
        return self.aliases.get(ident, ident)

    def ino(self, st: os.stat_result) -> int:
        ident = self.identity(st)
        ino = self.inos.get(ident)
        if ino is None:
            ino = self.inos[ident] = next(self._next_ino)
        return ino

    def fresh(self, st: os.stat_result) -> int:
        """A new number for an object just created: whatever had its (st_dev, st_ino) before is
        gone, copy-up alias and all, and the kernel may still hold its number."""
        ident = (st.st_dev, st.st_ino)
        self.aliases.pop(ident, None)
        ino = self.inos[ident] = next(self._next_ino)
        return ino

    def alias(self, new: Identity, old: os.stat_result) -> None:
        """``new`` (a copy-up) is the object ``old`` was."""
        self.aliases[new] = self.identity(old)

    def remember(self, parent: Node, name: str, res: Resolved) -> Node:
        """The node for a resolved name (found again or new), pointing at this name."""
        ino = self.ino(res.st)
        node = self.nodes.get(ino)
        if node is None:
            node = self.nodes[ino] = Node(ino, parent, name, res.layer, res.dir_layers, res.is_dir)
            if res.layer in self.layers.metacopy_layers and res.st.st_size and stat.S_ISREG(res.st.st_mode):
                node.data = UNCHECKED  # a metacopy, maybe: its record is read when its data is wanted
        else:
            node.parent, node.name, node.layer = parent, name, res.layer
            node.dir_layers, node.is_dir = res.dir_layers, res.is_dir
            if node.unlinked:  # found again under another name
                node.unlinked = False
                if node.fd >= 0:
                    self._relinked(node)
        node.last = res.st
        return node

    def stat(self, node: Node) -> os.stat_result:
        """The node's object, stat'ed now (from its fd when it has one)."""
        if node.fd >= 0:  # the very file, whatever became of the name the node knows it by
            node.last = self.layers.view_fd(os.fstat(node.fd), node.fd)
            return node.last
        if node.unlinked and node.last is not None:
            return node.last
        found = self.layers.lstat(node.layer, node.rel)
        if found is None:
            raise oserror(errno.ENOENT, node.rel)
        node.last = found
        return found

    def forget(self, ino: int, n: int) -> Node | None:
        """The kernel dropped ``n`` lookups of ``ino``: the node, if that was its last (it is gone
        from the table then, and the caller frees what it held)."""
        node = self.nodes.get(ino)
        if node is None or ino == ROOT:
            return None
        node.lookups -= n
        if node.lookups > 0:
            return None
        del self.nodes[ino]
        return node

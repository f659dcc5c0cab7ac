"""Merged directory listings for readdir: the open directory handles, and the listing each takes.

A listing starts with ``.`` and ``..``, as on every local filesystem and kernel overlayfs (``ls -a``,
and programs that count on them). A handle takes its listing when read from offset 0 (first read or rewinddir) and answers later
offsets from it, so entries that stay are never repeated or skipped. A directory with no upper part
cannot change, so its listing is resolved once, with the attributes readdirplus answers with, and
kept on its node (``Node.listing``) until it gets an upper part (a copy-up drops it).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import pyfuse3

from .attrs import attr
from .inodes import InodeTable, Node
from .layers import LayerSet, Resolved

# A listed name: (name, its bytes, and for a lower-only directory, resolved once: where it shows and
# the attributes readdirplus answers with)
Listed = tuple[str, bytes, Resolved | None, pyfuse3.EntryAttributes | None]
DOTS = 2  # every listing starts with "." and "..", with their attributes


@dataclass
class DirHandle:
    node: Node
    # the listing, taken when reading from offset 0
    entries: list[Listed] = field(default_factory=list)


class Listings:
    def __init__(self, layers: LayerSet, inodes: InodeTable) -> None:
        self.layers = layers
        self.inodes = inodes
        self.handles: dict[int, DirHandle] = {}
        self._next_fh = itertools.count(1)

    def open(self, node: Node) -> int:
        fh = next(self._next_fh)
        self.handles[fh] = DirHandle(node)
        return fh

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def lower_only(self, node: Node) -> bool:
        """Can nothing in this directory change (it has no upper part)?"""
        return self.layers.upper not in node.dir_layers

    def take(self, handle: DirHandle) -> None:
        """Take ``handle``'s listing now (a read from offset 0)."""
        parent = handle.node
        if self.lower_only(parent):
            if parent.listing is None:
                listing = self._dots(parent)
                for n in self.layers.listdir(parent.dir_layers, parent.rel):
                    if (r := self.layers.resolve(parent.dir_layers, parent.rel, n)) is not None:
                        listing.append(
                            (n, os.fsencode(n), r, attr(r.st, self.inodes.ino(r.st), False, len(r.dir_layers) > 1))
                        )
                parent.listing = listing
            handle.entries = parent.listing  # never changed in place: replaced if the dir changes
        else:
            handle.entries = self._dots(parent)
            handle.entries += [
                (n, os.fsencode(n), None, None) for n in self.layers.listdir(parent.dir_layers, parent.rel)
            ]

    def _dots(self, node: Node) -> list[Listed]:
        """ "." and "..", as readdir lists them (the kernel uses only their numbers and types)."""
        up = node.parent or node
        return [
            (".", b".", None, attr(node.last or self.inodes.stat(node), node.ino)),
            ("..", b"..", None, attr(up.last or self.inodes.stat(up), up.ino)),
        ]

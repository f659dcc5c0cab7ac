"""A name moving or going: rename(2) with renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE, as kernel
overlayfs does them, and what an object's losing a name means for its node (unlink's case too). No
FUSE types: parents are ``Node``s, names ``str``, flags renameat2(2)'s; the handler checks the new
name's spelling. Copies are ``copyup``'s, markers and the renameat2 call ``upper``'s.

Caveats:
  - A directory with lower parts is neither renamed nor exchanged: EXDEV (kernel overlayfs without
    ``redirect_dir`` does the same; ``mv`` falls back to copying). Files rename and exchange freely.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable

from . import whiteout
from .errors import oserror
from .fdcache import FdCache
from .inodes import InodeTable, Node
from .journal import Journal
from .layers import LayerSet, Resolved, join
from .upper import RENAME_EXCHANGE, Upper

RENAME_NOREPLACE = 1  # renameat2(2); pyfuse3.RENAME_NOREPLACE and RENAME_EXCHANGE are the same numbers

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "Renames"]


class Renames:
    """Renames in one union. ``up`` is None on a read-only union (a rename answers EROFS once the
    names are checked, as before any change); ``copy_up(node)`` and ``upper_dir(node)`` are the
    filesystem's copy-up steps (see ``copyup.CopyUps``)."""

    def __init__(
        self,
        layers: LayerSet,
        inodes: InodeTable,
        fds: FdCache,
        up: Upper | None,
        journal: Journal | None,
        copy_up: Callable[[Node], Awaitable[object]],
        upper_dir: Callable[[Node], None],
    ) -> None:
        self.layers = layers
        self.inodes = inodes
        self.fds = fds
        self.up = up
        self.journal = journal
        self.copy_up = copy_up
        self.upper_dir = upper_dir

    # -- a name going -----------------------------------------------------------------------------
    def losing(self, res: Resolved) -> Node | None:
        """Before ``res`` loses a name (unlink, rename over it): its node, if the kernel knows one,
        with its fd pinned when it is an upper file (the kernel may hold it open)."""
        node = self.inodes.nodes.get(self.inodes.ino(res.st))
        if node is not None and res.layer == self.layers.upper and stat.S_ISREG(res.st.st_mode):
            self.fds.pin(node)
        return node

    def lost(self, node: Node | None, res: Resolved) -> None:
        """After: it had no other name, so its node is unlinked, and a crash cannot show it again
        (its journal note goes)."""
        if res.st.st_nlink > 1:
            return
        if node is not None:
            node.unlinked = True
        if res.layer == self.layers.upper and self.journal is not None and stat.S_ISREG(res.st.st_mode):
            self.journal.drop(res.st.st_ino)

    # -- a name moving ----------------------------------------------------------------------------
    def _writable(self) -> Upper:
        if self.up is None:
            raise oserror(errno.EROFS)
        return self.up

    async def rename(self, old_parent: Node, old: str, new_parent: Node, new: str, flags: int = 0) -> None:
        """Move ``old`` in ``old_parent`` to ``new`` in ``new_parent``, replacing what is there as
        rename(2) does (``RENAME_NOREPLACE``: EEXIST instead; ``RENAME_EXCHANGE``: swap the two).
        The source is copied up first; a name it leaves that a lower layer has gets a whiteout
        first (a crash leaves the source showing, never gone); a directory landing where a lower
        one was is made opaque. Renaming an object onto one of its own names does nothing."""
        src = self.layers.resolve(old_parent.dir_layers, old_parent.rel, old)
        if src is None:
            raise oserror(errno.ENOENT, old)
        dst = self.layers.resolve(new_parent.dir_layers, new_parent.rel, new)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise oserror(errno.ENOENT, new)
            await self.exchange(old_parent, old, src, new_parent, new, dst)
            return
        if dst is not None and flags & RENAME_NOREPLACE:
            raise oserror(errno.EEXIST, new)
        up = self._writable()
        upper = up.layer
        if src.is_dir and src.dir_layers != [upper]:
            raise oserror(errno.EXDEV, old)  # a directory with lower parts: mv copies it instead
        if dst is not None:
            if self.inodes.ino(dst.st) == self.inodes.ino(src.st):
                return  # the same object (hard links or same name): nothing to do
            if dst.is_dir and not src.is_dir:
                raise oserror(errno.EISDIR, new)
            if src.is_dir and not dst.is_dir:
                raise oserror(errno.ENOTDIR, new)
            if dst.is_dir and self.layers.listdir(dst.dir_layers, join(new_parent.rel, new)):
                raise oserror(errno.ENOTEMPTY, new)
        node = self.inodes.remember(old_parent, old, src)
        await self.copy_up(node)
        self.upper_dir(new_parent)
        new_rel = join(new_parent.rel, new)
        if dst is not None and dst.is_dir and dst.dir_layers[0] == upper:
            up.clear_markers(new_rel)  # an empty directory: only markers are left in it
        needs_opaque = src.is_dir and up.lower_has(new_parent, new)
        gone = self.losing(dst) if dst is not None else None
        if up.lower_has(old_parent, old):
            up.make_whiteout(old_parent, old)  # first: a crash leaves the source showing
        with self.layers.at(upper, join(old_parent.rel, old)) as (sfd, s), self.layers.at(upper, new_rel) as (dfd, d):
            try:
                os.rename(s, d, src_dir_fd=sfd, dst_dir_fd=dfd)
            except (NotADirectoryError, IsADirectoryError):
                if dst is not None or not up.clear_overlay_whiteout(new_rel):
                    raise
                os.rename(s, d, src_dir_fd=sfd, dst_dir_fd=dfd)  # a directory over a 0/0 whiteout
        up.drop_whiteout(new_parent, new)
        if needs_opaque:
            up.marker(join(new_rel, whiteout.OPAQUE))
        if dst is not None:
            self.lost(gone, dst)
        node.parent, node.name = new_parent, new
        if src.is_dir:
            node.dir_layers = [upper]

    async def exchange(self, a_parent: Node, a: str, a_res: Resolved, b_parent: Node, b: str, b_res: Resolved) -> None:
        """RENAME_EXCHANGE of two resolved names, as kernel overlayfs: both copied up, then swapped
        in the upper in one step; a directory with lower parts gives EXDEV, as a rename of it does;
        a directory that lands on a name a lower dir has is made opaque."""
        up = self._writable()
        if any(r.is_dir and r.dir_layers != [up.layer] for r in (a_res, b_res)):
            raise oserror(errno.EXDEV, a)
        if self.inodes.ino(a_res.st) == self.inodes.ino(b_res.st):
            return
        a_node, b_node = self.inodes.remember(a_parent, a, a_res), self.inodes.remember(b_parent, b, b_res)
        await self.copy_up(a_node)
        await self.copy_up(b_node)
        a_rel, b_rel = join(a_parent.rel, a), join(b_parent.rel, b)
        a_opaque = a_res.is_dir and up.lower_has(b_parent, b)
        b_opaque = b_res.is_dir and up.lower_has(a_parent, a)
        up.exchange(a_rel, b_rel)
        if a_opaque:
            up.marker(join(b_rel, whiteout.OPAQUE))
        if b_opaque:
            up.marker(join(a_rel, whiteout.OPAQUE))
        a_node.parent, a_node.name, b_node.parent, b_node.name = b_parent, b, a_parent, a

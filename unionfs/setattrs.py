"""setattr(2) on a union: a change of size, owner, mode or times of an object, copied up first
(its metadata alone where the change needs no data), made in the upper by fd where the object has
one (an unlinked file has no name left) or by name; owners and modes go to an xattr where the mount
keeps them there (``owners``); and the setuid/setgid bits a write, truncation or chown by a caller
without CAP_FSETID drops, which this daemon (holding CAP_FSETID) must drop itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable

import pyfuse3

from . import owners
from .attrs import new_times
from .copyup import Change, CopyUps
from .fdcache import FdCache
from .inodes import InodeTable, Node
from .journal import Journal
from .layers import LayerSet
from .upper import without_suidgid


class AttrChanges:
    """The changes of one union. ``copyups`` is None on a read-only union; ``copy_up`` and
    ``copy_meta`` are the filesystem's copy-up steps (they answer EROFS there)."""

    def __init__(
        self,
        layers: LayerSet,
        inodes: InodeTable,
        fds: FdCache,
        journal: Journal | None,
        copyups: CopyUps | None,
        copy_up: Callable[..., Awaitable[object]],
        copy_meta: Callable[..., Awaitable[bool]],
        owners_xattr: bool,
    ) -> None:
        self.layers = layers
        self.journal = journal
        self.copyups = copyups
        self.owners_xattr = owners_xattr
        self._stat = inodes.stat
        self._fd = fds.fd
        self._copy_up = copy_up
        self._copy_meta = copy_meta

    async def setattr(self, node: Node, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> None:
        """setattr(2)'s changes of ``node``: size (a copy-up with its data, unless to zero), owner,
        mode, times, and the setuid bits a caller without CAP_FSETID loses; a lower object is
        copied up first (metadata alone where the data is not needed: see ``copyup``)."""
        if fields.update_size:
            await self._copy_up(node, data=attr.st_size != 0)
            fd = self._fd(node, write=True)
            if self.journal is not None and self.journal.notes and self.copyups is not None:
                await self.copyups.before_shrinking(fd, attr.st_size)
            os.ftruncate(fd, attr.st_size)
        set_times = fields.update_atime or fields.update_mtime
        chown, chmod = fields.update_uid or fields.update_gid, fields.update_mode
        # what a copy-up made for this change can be given itself: the times, the mode (not before a chown)
        change = Change(
            (attr.st_atime_ns, attr.st_mtime_ns) if fields.update_atime and fields.update_mtime else None,
            stat.S_IMODE(attr.st_mode) if chmod and not chown and not self.owners_xattr else None,
        )
        if not fields.update_size and await self._copy_meta(node, change):
            set_times, chmod = set_times and change.times is None, chmod and change.perm is None
        uid, gid = self.layers.host_ids(
            attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1
        )
        if self.owners_xattr and (chown or chmod):
            self._set_owner_xattr(node, attr, fields)
            chown = chmod = False
        if node.fd >= 0:  # a file with an fd, as every unlinked one has: no path walk (and no name needed)
            fd = node.fd
            if chown:
                os.fchown(fd, uid, gid)
            if chmod:
                os.fchmod(fd, stat.S_IMODE(attr.st_mode))
            if set_times:
                os.utime(fd, ns=new_times(attr, fields, lambda: os.fstat(fd)))
        else:
            with self.layers.at(node.layer, node.rel) as (dfd, name):
                if chown:
                    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                if chmod:
                    kind = (
                        node.last.st_mode if node.last is not None else self._stat(node).st_mode
                    )  # a name keeps its type
                    if not stat.S_ISLNK(kind):
                        os.chmod(name, stat.S_IMODE(attr.st_mode), dir_fd=dfd)
                if set_times:
                    times = new_times(attr, fields, lambda: os.stat(name, dir_fd=dfd, follow_symlinks=False))
                    os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
        if getattr(fields, "kill_suidgid", False):
            self.drop_suidgid(node)

    def _set_owner_xattr(self, node: Node, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> None:
        """chown and chmod where owners live in the xattr: the override changes; an object that
        cannot hold one keeps its real owner (and takes the chmod itself)."""
        st = self._stat(node)
        uid = attr.st_uid if fields.update_uid else st.st_uid
        gid = attr.st_gid if fields.update_gid else st.st_gid
        mode = stat.S_IFMT(st.st_mode) | stat.S_IMODE(attr.st_mode if fields.update_mode else st.st_mode)

        def write(path: str, real: os.stat_result) -> None:
            if owners.can_hold(real.st_mode):
                owners.write(path, uid, gid, mode, st.st_rdev)
            elif fields.update_mode and not stat.S_ISLNK(real.st_mode):
                os.chmod(path, stat.S_IMODE(mode))

        if node.fd >= 0:  # (an unlinked file has no name left)
            write(f"/proc/self/fd/{node.fd}", os.fstat(node.fd))
        else:
            with self.layers.at(node.layer, node.rel) as (dfd, name):
                write(f"/proc/self/fd/{dfd}/{name}", os.stat(name, dir_fd=dfd, follow_symlinks=False))

    def drop_suidgid(self, node: Node) -> None:
        """What the kernel asks when a caller without CAP_FSETID writes, truncates or chowns a
        file (see ``upper.without_suidgid``): this daemon holds CAP_FSETID, so the upper's kernel
        keeps the bits for it. The file is in the upper already."""
        st = self._stat(node)
        mode = without_suidgid(st.st_mode)
        if mode is not None and self.owners_xattr:
            owners.write(f"/proc/self/fd/{self._fd(node, write=True)}", st.st_uid, st.st_gid, mode)
        elif mode is not None:
            os.fchmod(self._fd(node, write=True), mode)

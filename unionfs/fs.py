"""The pyfuse3 Operations of the union filesystem: the FUSE handlers, in kernel-op order, and the
little glue between them (entries, names, the read-only check). What they stand on has a module each:
``inodes`` (our inode numbers), ``attrs`` (what the kernel is told), ``fdcache`` (backing fds),
``listing`` (readdir's listings), ``upper`` (markers, owners, setuid bits), ``copyup`` (copies and
their scheduling), ``rename`` (names moving and going: renameat2's flags), ``setattrs`` (setattr's
changes), ``layers`` (resolution).

Files: a file handle is the file's inode number (see ``fdcache``). As root on our pyfuse3 an open
file is read and written by the kernel through a backing file (``passthrough``); else (``NO_OPEN``)
open answers ENOSYS, no OPEN or RELEASE comes, and a lower file is copied up by its first change.

Caveats:
  - Renaming or exchanging a directory that exists in a lower layer gives EXDEV (see ``rename``).
  - Copying up one name of a hard-linked lower file breaks that link on disk (kernel overlayfs without
    ``index`` does the same); this mount keeps showing one inode until it is unmounted.
  - Reads and writes (without passthrough) run on the trio loop; copy-ups over 1 MiB, or whose data is
    not all in the page cache (or must be fsynced: see ``journal``), and fsync run in worker threads
    (the journal's syncfs in a thread of its own). A read that must wait for the disk holds up other
    requests meanwhile.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence

import pyfuse3
import trio

from . import metacopy, owners, whiteout
from .attrs import attr, negative
from .copyup import Copier, CopyUps, read_only, read_only_copy
from .errors import fuse_boundary, oserror
from .fdcache import CAP as FD_CACHE
from .fdcache import FdCache
from .inodes import InodeTable, Node
from .journal import flush_delay
from .layers import LayerSet, Resolved, join
from .listing import DOTS, Listings
from .passthrough import Passthrough
from .rename import Renames
from .setattrs import AttrChanges
from .upper import Upper

_WRITE = os.O_WRONLY | os.O_RDWR
_HOLES = 0x02 | 0x10  # FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE: data below may go
_FS_ENCODING = sys.getfilesystemencoding()
_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.", *metacopy.PRIVATE_XATTRS)

__all__ = ["DIR_CACHE", "FD_CACHE", "NO_OPEN", "PASSTHROUGH", "UnionFS"]


def _name(raw: bytes) -> str:
    return raw.decode(_FS_ENCODING, "surrogateescape")  # os.fsdecode's answer, a call less on every lookup


# A pyfuse3 that lets opendir answer with a FileInfo (our unionfs/patches/0001-*) can ask the
# kernel to keep listings in its page cache: a directory changes only through this mount, and the
# kernel drops a listing itself when it sends a change to that directory.
DIR_CACHE = hasattr(pyfuse3.FileInfo(), "cache_readdir")
# And one that lets open answer ENOSYS (our 0003) spares the kernel's OPEN and RELEASE.
NO_OPEN = hasattr(pyfuse3.Operations, "enable_no_open")
# And one that can ask for FUSE_PASSTHROUGH (our 0006): opens read and written by the kernel itself.
PASSTHROUGH = hasattr(pyfuse3, "passthrough_fd")


class UnionFS(pyfuse3.Operations):
    enable_writeback_cache = False
    enable_symlink_cache = True  # symlinks never change: the kernel may keep readlink's answers
    # With our pyfuse3, the kernel leaves dropping setuid/setgid bits to us and says when
    # (kill_suidgid, SetattrFields.kill_suidgid): no GETATTR before each chown, and no
    # security.capability question before every write to a file found without one.
    enable_killpriv_v2 = True

    def __init__(
        self,
        lowers: Sequence[str],
        upper: str | None = None,
        work: str | None = None,
        volatile: bool = False,
        no_open: bool = False,
        fd_cache: int = FD_CACHE,
        owners_xattr: bool = False,
        raw: bool = False,
        uids: owners.IdMap | None = None,
        gids: owners.IdMap | None = None,
        fsync: bool = True,
        passthrough: bool = False,
        metacopy: bool = False,
    ) -> None:
        super().__init__()
        self.enable_passthrough = int(passthrough)  # max_stack_depth 1; needs OPEN: no no_open then
        self.enable_no_open = no_open and not passthrough  # open answers ENOSYS; writes copy up then
        if raw and (upper is not None or len(lowers) != 1):
            raise ValueError("raw shows one layer, read-only: one lowerdir and no upperdir")
        self.layers = LayerSet(upper, list(lowers), owners_xattr, raw, uids, gids)  # see ``owners``, ``LayerSet``
        self.owners_xattr = owners_xattr
        self._internal = _INTERNAL_XATTRS + ((owners.XATTR,) if owners_xattr else ())  # hidden, refused
        self.upper = self.layers.upper
        self.volatile = volatile or not fsync  # fsync and fsyncdir do nothing (overlayfs's volatile, fsync=0)
        self.fds = FdCache(self.layers, fd_cache)
        self.inodes = InodeTable(self.layers, self.fds.relinked)
        self.passthrough = Passthrough(pyfuse3.passthrough_fd, self.inodes.stat, fd_cache) if passthrough else None
        self.root = self.inodes.root
        self.nodes = self.inodes.nodes
        self.listings = Listings(self.layers, self.inodes)
        self.dirs = self.listings.handles
        self.copier = Copier(self.layers, work, sync=not volatile) if upper is not None and work is not None else None
        self._journal = self.copier.journal if self.copier is not None else None
        self.up = Upper(self.layers) if self.copier is not None else None
        self.copyups = CopyUps(self.copier, self.inodes, self.fds, metacopy) if self.copier is not None else None
        # the hot paths call these directly (bound once here, not looked up through two objects)
        self._node = self.inodes.node
        self._ino = self.inodes.ino
        self._remember = self.inodes.remember
        self._stat = self.inodes.stat
        self._fd = self.fds.fd
        self._data_fd = self.fds.data_fd  # a metacopy's is the lower file's (``metacopy``)
        self._attr = attr
        self._upper_dir: Callable[[Node], None] = self.copyups.upper_dir if self.copyups else read_only
        self._copy_up: Callable[..., Awaitable[object]] = self.copyups.copy_up if self.copyups else read_only_copy
        self._copy_meta: Callable[..., Awaitable[bool]] = self.copyups.copy_meta if self.copyups else read_only_copy
        self.renames = Renames(
            self.layers, self.inodes, self.fds, self.up, self._journal, self._copy_meta, self._upper_dir
        )
        self.changes = AttrChanges(
            self.layers,
            self.inodes,
            self.fds,
            self._journal,
            self.copyups,
            self._copy_up,
            self._copy_meta,
            owners_xattr,
        )
        self._losing = self.renames.losing
        self._lost = self.renames.lost
        self.initialised = trio.Event()  # set as the kernel's INIT is answered

    def init(self) -> None:
        """pyfuse3 calls this while it answers the kernel's INIT; the reply goes out right after, before
        any task waiting on ``initialised`` runs."""
        self.initialised.set()

    def close(self) -> None:
        for node in self.nodes.values():
            self.fds.drop(node)
        if self.copier:
            self.copier.close()
        self.layers.close()

    # -- entries and names ------------------------------------------------------------------------
    def _resolve(self, parent: Node, name: str) -> Resolved | None:
        return self.layers.resolve(parent.dir_layers, parent.rel, name, parent.no_whiteouts)

    def _node_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._attr(self._stat(node), node.ino, node.unlinked, len(node.dir_layers) > 1)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self._node_attr(node)

    def _found(self, parent: Node, name: str, res: Resolved) -> pyfuse3.EntryAttributes:
        """The kernel's entry for a name just resolved: one lookup more on its node, and the stat
        resolving took (as fresh as another would be, and a syscall less for an upper entry)."""
        node = self._remember(parent, name, res)
        node.lookups += 1
        return self._attr(res.st, node.ino, False, len(res.dir_layers) > 1)

    def _check_name(self, name: str) -> None:
        if whiteout.is_special(name):
            raise oserror(errno.EINVAL, name)  # whiteout spellings are reserved, as in fuse-overlayfs
        if len(os.fsencode(name)) > 255:
            raise oserror(errno.ENAMETOOLONG, name)

    def _writable(self) -> Upper:
        if self.up is None:
            raise oserror(errno.EROFS)
        return self.up

    def _parent_st(self, parent: Node) -> os.stat_result:
        return parent.last or self._stat(parent)  # every change to it goes through us and refreshes it

    async def _prepare_new(self, parent_ino: int, raw: bytes) -> tuple[Node, str, Upper, str]:
        parent = self._node(parent_ino)
        name = _name(raw)
        self._check_name(name)
        up = self._writable()
        self._upper_dir(parent)
        return parent, name, up, join(parent.rel, name)

    def _finish_new(self, parent: Node, name: str) -> pyfuse3.EntryAttributes:
        """The entry of an object just made: a fresh number (see ``inodes``), one lookup."""
        res = self._resolve(parent, name)
        if res is None:
            raise oserror(errno.EIO, name)
        self.inodes.fresh(res.st)
        return self._found(parent, name, res)

    # -- handlers, in kernel-op order -------------------------------------------------------------
    @fuse_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        sname = _name(name)
        if sname == ".":
            return self._entry(parent)
        if sname == "..":
            return self._entry(parent.parent or self.root)
        res = self._resolve(parent, sname)
        if res is None:
            return negative()
        return self._found(parent, sname, res)

    @fuse_boundary
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            node = self.inodes.forget(ino, n)
            if node is not None:  # the kernel holds no open file on a node it forgets
                self.fds.drop(node)
                if self.copyups is not None:
                    self.copyups.forget(ino)
                if self.passthrough is not None:
                    self.passthrough.forget(ino)

    @fuse_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._node_attr(self._node(inode))

    @fuse_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        await self.changes.setattr(node, attr, fields)  # see ``setattrs``
        return self._node_attr(node)

    @fuse_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        with self.layers.at(node.layer, node.rel) as (fd, name):
            return os.fsencode(os.readlink(name, dir_fd=fd))

    @fuse_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):  # a create (see create), or mknod(2) of a file
            node, st = await self._new_file(parent_inode, name, mode, ctx)
            return self._attr(st, node.ino)
        parent, sname, up, rel = await self._prepare_new(parent_inode, name)
        up.make(rel, lambda fd, n: os.mknod(n, mode, rdev, dir_fd=fd))
        up.own(rel, self._parent_st(parent), ctx.uid, ctx.gid, False)
        up.drop_whiteout(parent, sname)
        return self._finish_new(parent, sname)

    @fuse_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, sname, up, rel = await self._prepare_new(parent_inode, name)
        _, whited = up.make(rel, lambda fd, n: os.mkdir(n, mode & 0o7777, dir_fd=fd))
        up.own(rel, self._parent_st(parent), ctx.uid, ctx.gid, True)
        if up.drop_whiteout(parent, sname) or whited:
            up.marker(join(rel, whiteout.OPAQUE))  # mkdir over a whiteout: hide what was below
        entry = self._finish_new(parent, sname)
        self.nodes[entry.st_ino].no_whiteouts = True
        return entry

    def _existing(self, parent_inode: int, raw: bytes) -> tuple[Node, str, Resolved]:
        parent = self._node(parent_inode)
        name = _name(raw)
        res = self._resolve(parent, name)
        if res is None:
            raise oserror(errno.ENOENT, name)
        return parent, name, res

    @fuse_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, sname, res = self._existing(parent_inode, name)
        if res.is_dir:
            raise oserror(errno.EISDIR, sname)
        up = self._writable()
        upper = up.layer
        self._upper_dir(parent)
        node = self._losing(res)
        # whiteout first: a crash in between leaves the upper file showing, never the lower one
        if up.lower_has(parent, sname):
            up.make_whiteout(parent, sname)
        if res.layer == upper:
            with self.layers.at(upper, join(parent.rel, sname)) as (fd, n):
                os.unlink(n, dir_fd=fd)
        self._lost(node, res)

    @fuse_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, sname, res = self._existing(parent_inode, name)
        if not res.is_dir:
            raise oserror(errno.ENOTDIR, sname)
        rel = join(parent.rel, sname)
        if self.layers.listdir(res.dir_layers, rel):
            raise oserror(errno.ENOTEMPTY, sname)
        up = self._writable()
        self._upper_dir(parent)
        if up.lower_has(parent, sname):
            up.make_whiteout(parent, sname)
        if res.dir_layers[0] == up.layer:
            up.clear_markers(rel)  # only whiteouts and the opaque marker are left
            with self.layers.at(up.layer, rel) as (fd, n):
                os.rmdir(n, dir_fd=fd)
        node = self.nodes.get(self._ino(res.st))
        if node is not None:
            node.unlinked = True

    @fuse_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, sname, up, rel = await self._prepare_new(parent_inode, name)
        up.make(rel, lambda fd, n: os.symlink(os.fsdecode(target), n, dir_fd=fd))
        up.own(rel, self._parent_st(parent), ctx.uid, ctx.gid, False)
        up.drop_whiteout(parent, sname)
        return self._finish_new(parent, sname)

    @fuse_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        new = _name(name_new)
        self._check_name(new)
        await self.renames.rename(old_parent, _name(name_old), new_parent, new, flags)  # see ``rename``

    @fuse_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.is_dir:
            raise oserror(errno.EPERM)
        await self._copy_meta(node)  # a hard link is a change to the file: copy it up first
        parent, sname, up, rel = await self._prepare_new(new_parent_inode, new_name)
        with self.layers.at(up.layer, node.rel) as (sfd, s):
            up.make(rel, lambda fd, n: os.link(s, n, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False))
        up.drop_whiteout(parent, sname)
        res = self._resolve(parent, sname)
        assert res is not None
        linked = self._remember(parent, sname, res)
        return self._entry(linked)

    @fuse_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.enable_no_open:
            # The kernel takes this for success and sends no OPEN or RELEASE for files again. It
            # checks permissions itself (default_permissions), turns O_TRUNC into a setattr and
            # computes O_APPEND offsets; a lower file is copied up at its first write.
            raise oserror(errno.ENOSYS)
        node = self._node(inode)
        write = bool(flags & _WRITE or flags & os.O_TRUNC)
        if write:
            await self._copy_up(node, data=not flags & os.O_TRUNC)
            if flags & os.O_TRUNC:
                os.ftruncate(self._fd(node, write=True), 0)
        if self.passthrough is None:
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)
        fd = self._fd(node, write=True) if write else self._data_fd(node)
        if self.passthrough.clashes(node, fd):  # open through the lower file, which it no longer shows
            self.inodes.fresh(self.inodes.stat(node))  # the copy's own number: the kernel looks again
            raise oserror(errno.ESTALE, node.name)  # (and the opens of node go on reading the lower data)
        return self.passthrough.file_info(node, fd, lower=not write and (node.layer != self.upper or fd != node.fd))

    @fuse_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # Inline: a FUSE read is at most 1 MiB and nearly always a page-cache hit (lowers are hot,
        # and keep_cache means a file's pages come through here only once). preadv(RWF_NOWAIT) with
        # a thread for misses was tried twice: 3x slower on sequential reads with 128 KiB requests,
        # and 2x with 1 MiB ones even when no read missed (the daemon's system time went from 0.16 s
        # to 0.41 s on a 512 MiB file).
        return os.pread(self._data_fd(self._node(fh)), size, off)

    @fuse_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._node(fh)
        if node.layer != self.upper or node.data is not None:  # no OPEN was sent: the first write copies up
            await self._copy_up(node)
        return os.pwrite(self._fd(node, write=True), buf, off)

    @fuse_boundary
    async def kill_suidgid(self, fh: int) -> None:
        """The write that follows comes from a caller without CAP_FSETID (see ``setattrs``)."""
        node = self._node(fh)
        await self._copy_up(node)
        self.changes.drop_suidgid(node)

    @fuse_boundary
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) (mode 0, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE...: what the upper filesystem
        takes) on the file's copy-up."""
        node = self._node(fh)
        await self._copy_up(node)
        fd = self._fd(node, write=True)
        if mode & _HOLES and self.copyups is not None:
            await self.copyups.make_durable(fd)
        Upper.fallocate(fd, mode, offset, length)

    @fuse_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.layers.paths[0])
        data = pyfuse3.StatvfsData()
        for key in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(data, key, getattr(sv, key))
        return data

    @fuse_boundary
    async def release(self, fh: int) -> None:
        if self.passthrough is not None:  # (the fd stays with the node: see _fd)
            self.passthrough.released(fh)

    @fuse_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.volatile:
            return
        node = self._node(fh)
        fd = os.dup(self._fd(node))  # the cache may close its own meanwhile
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
            if self._journal is not None and self._journal.notes and node.layer == self.upper:
                self._journal.drop(os.fstat(fd).st_ino)  # its data is on disk: nothing to recover
        finally:
            os.close(fd)

    def flush_journal(self) -> None:
        """From now on, write noted copy-ups out (syncfs) once the kernel would have written them
        back by itself, and drop their notes (see ``journal``)."""
        if self._journal is not None:
            self._journal.flush_every(flush_delay())

    @fuse_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        fh = self.listings.open(self._node(inode))
        if DIR_CACHE:
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    @fuse_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        parent = handle.node
        lower_only = self.upper not in parent.dir_layers  # then nothing in it can change
        if start_id == 0:  # a listing from the start (first read or rewinddir): take it now
            self.listings.take(handle)
        # Offsets index that listing: entries that stay are never repeated or skipped.
        for i in range(start_id, len(handle.entries)):
            name, raw, res, listed = handle.entries[i]
            if i < DOTS:  # "." and "..": answered as listed, and the kernel takes no lookup of them
                assert listed is not None
                if not pyfuse3.readdir_reply(token, raw, listed, i + 1):
                    break
                continue
            if res is None or listed is None or not lower_only:
                res = self._resolve(parent, name)
                if res is None:
                    continue  # removed since the listing was taken
                node = self._remember(parent, name, res)
                attr = self._attr(res.st, node.ino, False, len(res.dir_layers) > 1)
            else:  # a lower-only directory: the entry was resolved when first listed and cannot change
                attr = listed
                found = self.nodes.get(attr.st_ino)
                node = (
                    found
                    if found is not None and found.parent is parent and found.name == name
                    else self._remember(parent, name, res)
                )
            if not pyfuse3.readdir_reply(token, raw, attr, i + 1):
                break
            node.lookups += 1

    @fuse_boundary
    async def releasedir(self, fh: int) -> None:
        self.listings.release(fh)

    @fuse_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self.volatile:
            return
        handle = self.dirs[fh]
        layer, rel = handle.node.layer, handle.node.rel

        def sync() -> None:
            with self.layers.at(layer, rel) as (fd, name):
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)

        await trio.to_thread.run_sync(sync)

    async def _xattr_change(self, inode: int, name: bytes, change: Callable[[str, str], None]) -> None:
        """set/removexattr: refuse the overlay's own keys, copy up, then ``change(path, key)``."""
        key = os.fsdecode(name)
        if key.startswith(self._internal):
            raise oserror(errno.EPERM, key)
        node = self._node(inode)
        await self._copy_meta(node)
        with self.layers.at(node.layer, node.rel) as (fd, n):
            change(f"/proc/self/fd/{fd}/{n}", key)

    @fuse_boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._xattr_change(inode, name, lambda path, key: os.setxattr(path, key, value, follow_symlinks=False))

    @fuse_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        if key.startswith(self._internal):
            raise oserror(errno.ENODATA, key)
        node = self._node(inode)
        if node.fd >= 0:  # the kernel asks for security.capability before every write: no path walk
            return os.getxattr(node.fd, key)
        with self.layers.at(node.layer, node.rel) as (fd, n):
            return os.getxattr(f"/proc/self/fd/{fd}/{n}", key, follow_symlinks=False)

    @fuse_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        node = self._node(inode)
        if node.fd >= 0:
            names = os.listxattr(node.fd)
        else:
            with self.layers.at(node.layer, node.rel) as (fd, n):
                names = os.listxattr(f"/proc/self/fd/{fd}/{n}", follow_symlinks=False)
        return [os.fsencode(k) for k in names if not k.startswith(self._internal)]

    @fuse_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._xattr_change(inode, name, lambda path, key: os.removexattr(path, key, follow_symlinks=False))

    @fuse_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.enable_no_open:
            # The kernel then makes files with MKNOD, and its open after that sends nothing (no
            # OPEN, so no RELEASE at the last close either): one request less per file created.
            # It still knows the opener created the file (FMODE_CREATED): no permission check.
            raise oserror(errno.ENOSYS)
        node, st = await self._new_file(parent_inode, name, mode, ctx)
        if self.passthrough is None:
            return pyfuse3.FileInfo(fh=node.ino, keep_cache=True), self._attr(st, node.ino)
        return self.passthrough.file_info(node, node.fd), self._attr(st, node.ino)

    async def _new_file(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> tuple[Node, os.stat_result]:
        """A new empty file (create, or mknod of a file), its fd kept for the writes to come; its
        node (looked up once) and stat."""
        parent, sname, up, rel = await self._prepare_new(parent_inode, name)
        real, _ = up.make(
            rel,
            lambda fd, n: os.open(
                n, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_IMODE(mode), dir_fd=fd
            ),
        )
        try:
            st = self.layers.view_fd(up.own_file(real, mode, self._parent_st(parent), ctx.uid, ctx.gid), real)
            up.drop_whiteout(parent, sname)
        except BaseException:
            os.close(real)
            raise
        self.inodes.fresh(st)
        node = self._remember(parent, sname, Resolved(up.layer, st, []))
        self.fds.keep(node, real, True)
        node.lookups += 1
        return node, st

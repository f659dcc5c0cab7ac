"""The pyfuse3 Operations of the union filesystem: only the FUSE handlers and the inode table.

Inodes: every object gets our own inode number, keyed by the identity (st_dev, st_ino) of the real
object that shows; a copy-up records the new upper object as an alias of the original, so numbers stay
stable for the life of the mount, are unique across layers, and hard links (in a layer, or made
through the mount) share one number. Nodes are forgotten at lookup count 0 (the kernel forgets
nothing it holds open); the identity -> number map is kept.

Files: a file handle is the file's inode number. On our pyfuse3 (``NO_OPEN``) open answers ENOSYS,
after which the kernel sends no OPEN and no RELEASE for files; it checks permissions itself
(default_permissions), sends O_TRUNC as a setattr and computes O_APPEND offsets, and a lower file is
copied up by its first write, truncation or other change rather than by an open for writing. The
backing fds belong to the nodes: the most recently used ``fd_cache`` stay open, and a file whose last
name goes keeps its fd (taken just before) until the kernel forgets it.

Caching: lower layers never change under a mount and this process is the only writer of the upper,
so the kernel may keep entries, attributes, negative lookups and file pages for a long time.

Caveats:
  - Renaming a directory that exists in a lower layer gives EXDEV (as kernel overlayfs without
    ``redirect_dir``; ``mv`` falls back to copying). Files rename freely. RENAME_EXCHANGE: EINVAL.
  - Copying up one name of a hard-linked lower file breaks that link on disk (kernel overlayfs without
    ``index`` does the same); this mount keeps showing one inode until it is unmounted.
  - ``.`` and ``..`` are not listed by readdir (the kernel answers them).
  - Reads and writes run on the trio loop (page-cache speed); copy-ups over 1 MiB, or whose data is
    not all in the page cache (or must be fsynced: see ``journal``), and fsync run in worker threads
    (the journal's syncfs in a thread of its own). A read that must wait for the disk holds up other
    requests meanwhile.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from . import whiteout
from .copyup import Copier, WouldBlock, remove_entry
from .errors import fuse_boundary, oserror
from .journal import flush_delay
from .layers import LayerSet, Resolved, join

Identity = tuple[int, int]
TIMEOUT = 1e6
_WRITE = os.O_WRONLY | os.O_RDWR
_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.")
_INLINE_COPY = 1 << 20  # with -o volatile, copy-ups of files up to this size run on the event loop


@dataclass(eq=False)
class Node:
    ino: int
    parent: Node | None
    name: str
    layer: int  # the layer the object shows from (the top-most one for a directory)
    dir_layers: list[int]  # for a directory: the layers merging into it, top-most first
    is_dir: bool
    lookups: int = 0
    fd: int = -1  # a file's backing fd, kept for reads and writes (see UnionFS._fd)
    fd_writable: bool = False
    unlinked: bool = False  # its last name is gone; a file keeps its fd until the kernel forgets it
    last: os.stat_result | None = None
    listing: list[Listed] | None = None  # a lower-only directory's entries, resolved once
    # a directory whose upper holds no whiteouts: this daemon made it (mkdir, copy-up) and has put
    # none in it since, so a name created in it has no whiteout to remove
    no_whiteouts: bool = False

    @property
    def rel(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


# A listed name: (name, its bytes, and for a lower-only directory, resolved once: where it shows and
# the attributes readdirplus answers with)
Listed = tuple[str, bytes, Resolved | None, pyfuse3.EntryAttributes | None]


@dataclass
class DirHandle:
    node: Node
    # the listing, taken when reading from offset 0
    entries: list[Listed] = field(default_factory=list)


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


# A pyfuse3 that lets opendir answer with a FileInfo (our patch, unionfs/pyfuse3.patch) can ask the
# kernel to keep listings in its page cache: a directory changes only through this mount, and the
# kernel drops a listing itself when it sends a change to that directory.
DIR_CACHE = hasattr(pyfuse3.FileInfo(), "cache_readdir")
# And one that lets open answer ENOSYS (our patch again) spares the kernel's OPEN and RELEASE.
NO_OPEN = hasattr(pyfuse3.Operations, "enable_no_open")
FD_CACHE = 1024  # backing fds kept open (the most recently used), besides those of unlinked files


class UnionFS(pyfuse3.Operations):
    enable_writeback_cache = False
    enable_symlink_cache = True  # symlinks never change: the kernel may keep readlink's answers
    # With our pyfuse3, the kernel leaves dropping setuid/setgid bits to us and says when
    # (kill_suidgid, SetattrFields.kill_suidgid): no GETATTR before each chown, and no
    # security.capability question before every write to a file found without one.
    enable_killpriv_v2 = True

    def __init__(self, lowers: Sequence[str], upper: str | None = None, work: str | None = None,
                 volatile: bool = False, no_open: bool = False, fd_cache: int = FD_CACHE) -> None:
        super().__init__()
        self.enable_no_open = no_open  # open answers ENOSYS; writes copy up when they come
        self.layers = LayerSet(upper, list(lowers))
        self.upper = self.layers.upper
        self.copier = Copier(self.layers, work, sync=not volatile) if upper is not None and work is not None else None
        self._journal = self.copier.journal if self.copier is not None else None
        self.volatile = volatile  # fsync and fsyncdir do nothing, as under overlayfs's volatile
        self.as_root = os.geteuid() == 0
        root_dirs = self.layers.root_dirs()
        self.root = Node(pyfuse3.ROOT_INODE, None, "", root_dirs[0], root_dirs, True, lookups=1)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: self.root}
        self.inos: dict[Identity, int] = {}
        self.aliases: dict[Identity, Identity] = {}
        self._next_ino = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.dirs: dict[int, DirHandle] = {}
        self._dir_fh = itertools.count(1)
        self._copy_locks: dict[int, trio.Lock] = {}
        self._fd_lru: OrderedDict[int, Node] = OrderedDict()  # nodes with a cached fd, least recent first
        self._fd_cache = fd_cache
        self.initialised = trio.Event()  # set as the kernel's INIT is answered

    def init(self) -> None:
        """pyfuse3 calls this while it answers the kernel's INIT; the reply goes out right after, before
        any task waiting on ``initialised`` runs."""
        self.initialised.set()

    def close(self) -> None:
        for node in self.nodes.values():
            self._drop_fd(node)
        if self.copier:
            self.copier.close()
        self.layers.close()

    # -- the inode table --------------------------------------------------------------------------
    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise oserror(errno.ESTALE) from None

    def _identity(self, st: os.stat_result) -> Identity:
        """The object's identity: its own (st_dev, st_ino), or the original's if it is a copy-up."""
        ident = (st.st_dev, st.st_ino)
        return self.aliases.get(ident, ident)

    def _ino(self, st: os.stat_result) -> int:
        ident = self._identity(st)
        ino = self.inos.get(ident)
        if ino is None:
            ino = self.inos[ident] = next(self._next_ino)
        return ino

    def _attr(self, st: os.stat_result, ino: int, unlinked: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = st.st_mode
        e.st_nlink = 0 if unlinked else st.st_nlink  # an unlinked file kept open has no names
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _resolve(self, parent: Node, name: str) -> Resolved | None:
        return self.layers.resolve(parent.dir_layers, parent.rel, name)

    def _remember(self, parent: Node, name: str, res: Resolved) -> Node:
        """The node for a resolved name (found again or new), pointing at this name."""
        ino = self._ino(res.st)
        node = self.nodes.get(ino)
        if node is None:
            node = self.nodes[ino] = Node(ino, parent, name, res.layer, res.dir_layers, res.is_dir)
        else:
            node.parent, node.name, node.layer = parent, name, res.layer
            node.dir_layers, node.is_dir = res.dir_layers, res.is_dir
            if node.unlinked:  # found again under another name
                node.unlinked = False
                if node.fd >= 0:
                    self._fd_lru[ino] = node
        node.last = res.st
        return node

    def _stat(self, node: Node) -> os.stat_result:
        if node.fd >= 0:  # the very file, whatever became of the name the node knows it by
            node.last = os.fstat(node.fd)
            return node.last
        if node.unlinked and node.last is not None:
            return node.last
        found = self.layers.lstat(node.layer, node.rel)
        if found is None:
            raise oserror(errno.ENOENT, node.rel)
        node.last = found
        return found

    def _node_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._attr(self._stat(node), node.ino, node.unlinked)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self._node_attr(node)

    def _check_name(self, name: str) -> None:
        if whiteout.is_special(name):
            raise oserror(errno.EINVAL, name)  # whiteout spellings are reserved, as in fuse-overlayfs
        if len(os.fsencode(name)) > 255:
            raise oserror(errno.ENAMETOOLONG, name)

    def _writable(self) -> int:
        if self.upper is None or self.copier is None:
            raise oserror(errno.EROFS)
        return self.upper

    # -- backing fds ------------------------------------------------------------------------------
    # A file handle is the file's inode number, whether the kernel opened it (stock pyfuse3) or sent
    # no OPEN at all (enable_no_open, then the kernel sends no RELEASE either). The real fds belong
    # to the nodes: the ``fd_cache`` most recently used stay open, and an unlinked file keeps its fd
    # until the kernel forgets the inode, which it does only after the last close.
    def _fd(self, node: Node, write: bool = False) -> int:
        """An fd on the file ``node`` shows; read-write with ``write`` (it is in the upper then)."""
        fd = node.fd
        if fd >= 0 and (node.fd_writable or not write):
            if node.ino in self._fd_lru:  # not if pinned
                self._fd_lru.move_to_end(node.ino)
            return fd
        if node.unlinked and node.layer == self.upper:
            raise oserror(errno.EBADF, node.name)  # kept read-only: the daemon may not write it
        with self.layers.at(node.layer, node.rel) as (dfd, name):
            fd = os.open(name, (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        self._keep_fd(node, fd, write)
        return fd

    def _keep_fd(self, node: Node, fd: int, writable: bool, cached: bool | None = None) -> None:
        """Give ``node`` the fd (closing its old one), in the cache unless ``cached`` is false
        (by default: unless the node is unlinked)."""
        if node.fd >= 0:
            os.close(node.fd)
        node.fd, node.fd_writable = fd, writable
        if cached is None:
            cached = not node.unlinked
        if not cached:
            self._fd_lru.pop(node.ino, None)
            return
        self._fd_lru[node.ino] = node
        self._fd_lru.move_to_end(node.ino)
        while len(self._fd_lru) > self._fd_cache:
            _, old = self._fd_lru.popitem(last=False)
            os.close(old.fd)
            old.fd = -1

    def _drop_fd(self, node: Node) -> None:
        if node.fd >= 0:
            os.close(node.fd)
            node.fd = -1
        self._fd_lru.pop(node.ino, None)

    def _losing_name(self, res: Resolved) -> Node | None:
        """Before ``res`` loses a name (unlink, rename over it): its node, if the kernel knows one,
        with its fd pinned when it is an upper file (the kernel may hold it open)."""
        node = self.nodes.get(self._ino(res.st))
        if node is not None and res.layer == self.upper and stat.S_ISREG(res.st.st_mode):
            self._pin(node)
        return node

    def _lost_name(self, node: Node | None, res: Resolved) -> None:
        """After: it had no other name, so its node is unlinked, and a crash cannot show it again
        (its journal note goes)."""
        if res.st.st_nlink > 1:
            return
        if node is not None:
            node.unlinked = True
        if res.layer == self.upper and self._journal is not None and stat.S_ISREG(res.st.st_mode):
            self._journal.drop(res.st.st_ino)

    def _pin(self, node: Node) -> None:
        """Before an upper file loses a name: keep an fd on it, out of the cache, until the kernel
        forgets it. With no OPEN sent there is no knowing whether the kernel holds it open, and
        the name may have been the one the node knew it by (a hard link's other name works)."""
        self._fd_lru.pop(node.ino, None)
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
        self._keep_fd(node, fd, writable, cached=False)

    # -- copy-up ----------------------------------------------------------------------------------
    def _upper_dir(self, node: Node) -> None:
        """Make sure the directory ``node`` exists in the upper (parents first). A directory's copy
        has no data and runs here, with no await: nothing else can start copying it meanwhile."""
        upper = self._writable()
        if node.dir_layers and node.dir_layers[0] == upper:
            return
        assert node.parent is not None and self.copier is not None
        self._upper_dir(node.parent)
        old = self._stat(node)
        new, _ = self.copier.copy(node.dir_layers[0], node.rel, node.parent.rel, node.name)
        self.aliases[new] = self._identity(old)
        node.dir_layers = [upper, *node.dir_layers]
        node.listing = None  # it can change now
        node.layer = upper
        node.no_whiteouts = True  # a new, empty directory

    async def _copy_up(self, node: Node, data: bool = True) -> None:
        upper = self._writable()
        if node.is_dir:
            self._upper_dir(node)
            return
        if node.layer == upper:
            return
        assert node.parent is not None and self.copier is not None
        if not node.unlinked:
            self._upper_dir(node.parent)
        lock = self._copy_locks.get(node.ino)
        if lock is not None and lock.locked():  # a worker thread is copying it: that copy will do
            async with lock:
                pass
            if node.layer == upper:
                return
        # Long copies, the rare ones with data to fsync and those whose data must be read from
        # the disk go to a worker thread: they must not stall the other requests. The others cost
        # less than a thread hop and run here, with no await, so no other request can start
        # copying the same file meanwhile.
        old = self._stat(node)
        if not data or (old.st_size <= _INLINE_COPY and not self.copier.must_fsync(node.layer, node.rel)):
            copy, done = self._copy_job(node, data, old, nowait=True)
            try:
                result = copy()
            except WouldBlock:
                pass  # its data is not all in the page cache: a thread's job
            else:
                done(result)
                return
        async with self._copy_lock(node):
            if node.layer != upper:
                copy, done = self._copy_job(node, data, self._stat(node))
                done(await trio.to_thread.run_sync(copy))

    def _copy_job(self, node: Node, data: bool, old: os.stat_result,
                  nowait: bool = False) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        """The copy-up of a lower file whose stat is ``old``: the copy (it blocks) and what to
        note, on the loop, of its result."""
        assert node.parent is not None and self.copier is not None
        copier, layer, rel, prel, name = self.copier, node.layer, node.rel, node.parent.rel, node.name
        if node.unlinked:  # written after its name went (no OPEN was sent): a copy only its fd names
            def kept(fd: int) -> None:
                self._keep_fd(node, fd, True)
                node.layer = self._writable()
            return lambda: copier.copy_orphan(layer, rel, nowait), kept

        def copied(new_and_fd: tuple[Identity, int]) -> None:
            new, fd = new_and_fd
            self.aliases[new] = self._identity(old)
            node.layer = self._writable()
            self._keep_fd(node, fd, True)  # the copy's (the lower file's is closed): no open to come
        return lambda: copier.copy(layer, rel, prel, name, data, nowait), copied

    def _copy_lock(self, node: Node) -> trio.Lock:
        lock = self._copy_locks.get(node.ino)
        if lock is None:
            lock = self._copy_locks[node.ino] = trio.Lock()
        return lock

    # -- whiteouts --------------------------------------------------------------------------------
    def _lower_has(self, parent: Node, name: str) -> bool:
        """Would ``name`` show from a lower layer if the upper had nothing for it?"""
        lowers = [layer for layer in parent.dir_layers if layer != self.upper]
        return bool(lowers) and self.layers.resolve(lowers, parent.rel, name) is not None

    def _marker(self, rel: str) -> None:
        """An empty file in the upper: a whiteout or an opaque-directory marker (OCI spelling)."""
        with self.layers.at(self._writable(), rel) as (fd, name):
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o000, dir_fd=fd))

    def _make_whiteout(self, parent: Node, name: str) -> None:
        parent.no_whiteouts = False
        self._marker(join(parent.rel, whiteout.whiteout_name(name)))

    def _drop_whiteout(self, parent: Node, name: str) -> bool:
        upper = self._writable()
        if parent.no_whiteouts:
            return False
        if len(os.fsencode(whiteout.whiteout_name(name))) > 255:
            return False  # such a whiteout cannot exist (nor be made: unlink then says ENAMETOOLONG)
        with self.layers.at(upper, join(parent.rel, whiteout.whiteout_name(name))) as (fd, wname):
            try:
                os.unlink(wname, dir_fd=fd)
                return True
            except FileNotFoundError:
                return False

    def _new_gid(self, parent: Node, ctx: pyfuse3.RequestContext) -> tuple[int, bool]:
        """The group a new object in ``parent`` gets (a setgid directory's own, else the caller's),
        and whether the directory is setgid."""
        pst = parent.last or self._stat(parent)  # every change to it goes through us and refreshes it
        setgid = bool(pst.st_mode & stat.S_ISGID)
        return (pst.st_gid if setgid else ctx.gid), setgid

    def _own_file(self, real: int, mode: int, parent: Node, ctx: pyfuse3.RequestContext) -> os.stat_result:
        """A new file, open at ``real``, belongs to the caller (see ``_own``); its stat. A chown
        that would change nothing is not made, and one that is made keeps the setuid bits asked
        for (a chown drops them)."""
        st = os.fstat(real)
        if not self.as_root:
            return st
        gid, _ = self._new_gid(parent, ctx)
        if (st.st_uid, st.st_gid) != (ctx.uid, gid):
            os.fchown(real, ctx.uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(real, stat.S_IMODE(mode))
            st = os.fstat(real)
        return st

    def _own(self, upper: int, rel: str, parent: Node, ctx: pyfuse3.RequestContext, is_dir: bool) -> None:
        """New objects belong to the caller; a setgid directory passes on its group (and, to
        directories, the bit), as the kernel does."""
        if not self.as_root:
            return
        gid, setgid = self._new_gid(parent, ctx)
        with self.layers.at(upper, rel) as (fd, name):
            os.chown(name, ctx.uid, gid, dir_fd=fd, follow_symlinks=False)
            if is_dir and setgid:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_ISGID, dir_fd=fd)

    async def _prepare_new(self, parent_ino: int, raw: bytes) -> tuple[Node, str, int, str]:
        parent = self._node(parent_ino)
        name = _name(raw)
        self._check_name(name)
        upper = self._writable()
        self._upper_dir(parent)
        return parent, name, upper, join(parent.rel, name)

    def _found(self, parent: Node, name: str, res: Resolved) -> pyfuse3.EntryAttributes:
        """The kernel's entry for a name just resolved: one lookup more on its node, and the stat
        resolving took (as fresh as another would be, and a syscall less for an upper entry)."""
        node = self._remember(parent, name, res)
        node.lookups += 1
        return self._attr(res.st, node.ino)

    def _finish_new(self, parent: Node, name: str) -> pyfuse3.EntryAttributes:
        res = self._resolve(parent, name)
        if res is None:
            raise oserror(errno.EIO, name)
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
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # a negative entry the kernel may cache
            negative.entry_timeout = TIMEOUT
            return negative
        return self._found(parent, sname, res)

    @fuse_boundary
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            node = self.nodes.get(ino)
            if node is None or ino == pyfuse3.ROOT_INODE:
                continue
            node.lookups -= n
            if node.lookups <= 0:  # the kernel holds no open file on a node it forgets
                self._drop_fd(node)
                del self.nodes[ino]
                self._copy_locks.pop(ino, None)

    @fuse_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._node_attr(self._node(inode))

    @fuse_boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        truncating_to_zero = fields.update_size and attr.st_size == 0
        await self._copy_up(node, data=not truncating_to_zero)
        upper = self._writable()
        if fields.update_size:
            fd = self._fd(node, write=True)
            if self._journal is not None and self._journal.notes:
                await self._before_shrinking(fd, attr.st_size)
            os.ftruncate(fd, attr.st_size)
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if node.fd >= 0:  # a file with an fd, as every unlinked one has: no path walk (and no name needed)
            fd = node.fd
            if fields.update_uid or fields.update_gid:
                os.fchown(fd, uid, gid)
            if fields.update_mode:
                os.fchmod(fd, stat.S_IMODE(attr.st_mode))
            if fields.update_atime or fields.update_mtime:
                os.utime(fd, ns=self._new_times(attr, fields, lambda: os.fstat(fd)))
        else:
            with self.layers.at(upper, node.rel) as (dfd, name):
                if fields.update_uid or fields.update_gid:
                    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                if fields.update_mode:
                    kind = node.last.st_mode if node.last is not None else self._stat(node).st_mode  # a name keeps its type
                    if not stat.S_ISLNK(kind):
                        os.chmod(name, stat.S_IMODE(attr.st_mode), dir_fd=dfd)
                if fields.update_atime or fields.update_mtime:
                    times = self._new_times(attr, fields, lambda: os.stat(name, dir_fd=dfd, follow_symlinks=False))
                    os.utime(name, ns=times, dir_fd=dfd, follow_symlinks=False)
        if getattr(fields, "kill_suidgid", False):
            self._drop_suidgid(node)
        return self._node_attr(node)

    async def _before_shrinking(self, fd: int, size: int) -> None:
        """A copy-up still noted in the journal is about to be truncated to ``size``: below its
        lower's size, a crash could no longer tell lost data from the truncation, so the copy is
        made durable first and its note goes (to zero, nothing copied is kept: the note just goes)."""
        assert self._journal is not None
        ino = os.fstat(fd).st_ino
        lower = self._journal.lower_size(ino)
        if lower is None or size >= lower:
            return
        if size:
            await trio.to_thread.run_sync(os.fsync, fd)
        self._journal.drop(ino)

    @staticmethod
    def _new_times(attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                   current: Callable[[], os.stat_result]) -> tuple[int, int]:
        """(atime, mtime) in ns after a setattr: those it sets, the others as they are."""
        if fields.update_atime and fields.update_mtime:
            return attr.st_atime_ns, attr.st_mtime_ns
        st = current()
        return (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)

    @fuse_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        with self.layers.at(node.layer, node.rel) as (fd, name):
            return os.fsencode(os.readlink(name, dir_fd=fd))

    @fuse_boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):  # a create (see create), or mknod(2) of a file
            node, st = await self._new_file(parent_inode, name, mode, ctx)
            return self._attr(st, node.ino)
        parent, sname, upper, rel = await self._prepare_new(parent_inode, name)
        with self.layers.at(upper, rel) as (fd, n):
            os.mknod(n, mode, rdev, dir_fd=fd)
        self._own(upper, rel, parent, ctx, False)
        self._drop_whiteout(parent, sname)
        return self._finish_new(parent, sname)

    @fuse_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent, sname, upper, rel = await self._prepare_new(parent_inode, name)
        with self.layers.at(upper, rel) as (fd, n):
            os.mkdir(n, mode & 0o7777, dir_fd=fd)
        self._own(upper, rel, parent, ctx, True)
        if self._drop_whiteout(parent, sname):
            self._marker(join(rel, whiteout.OPAQUE))  # mkdir over a whiteout: hide what was below
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
        upper = self._writable()
        self._upper_dir(parent)
        node = self._losing_name(res)
        # whiteout first: a crash in between leaves the upper file showing, never the lower one
        if self._lower_has(parent, sname):
            self._make_whiteout(parent, sname)
        if res.layer == upper:
            with self.layers.at(upper, join(parent.rel, sname)) as (fd, n):
                os.unlink(n, dir_fd=fd)
        self._lost_name(node, res)

    @fuse_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, sname, res = self._existing(parent_inode, name)
        if not res.is_dir:
            raise oserror(errno.ENOTDIR, sname)
        rel = join(parent.rel, sname)
        if self.layers.listdir(res.dir_layers, rel):
            raise oserror(errno.ENOTEMPTY, sname)
        upper = self._writable()
        self._upper_dir(parent)
        if self._lower_has(parent, sname):
            self._make_whiteout(parent, sname)
        if res.dir_layers[0] == upper:
            with self.layers.at(upper, rel) as (fd, n):
                dfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    for marker in os.listdir(dfd):  # only whiteouts and the opaque marker are left
                        remove_entry(dfd, marker)
                finally:
                    os.close(dfd)
                os.rmdir(n, dir_fd=fd)
        node = self.nodes.get(self._ino(res.st))
        if node is not None:
            node.unlinked = True

    @fuse_boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent, sname, upper, rel = await self._prepare_new(parent_inode, name)
        with self.layers.at(upper, rel) as (fd, n):
            os.symlink(os.fsdecode(target), n, dir_fd=fd)
        self._own(upper, rel, parent, ctx, False)
        self._drop_whiteout(parent, sname)
        return self._finish_new(parent, sname)

    @fuse_boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise oserror(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        old, new = _name(name_old), _name(name_new)
        self._check_name(new)
        src = self._resolve(old_parent, old)
        if src is None:
            raise oserror(errno.ENOENT, old)
        dst = self._resolve(new_parent, new)
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise oserror(errno.EEXIST, new)
        upper = self._writable()
        if src.is_dir and src.dir_layers != [upper]:
            raise oserror(errno.EXDEV, old)  # a directory with lower parts: mv copies it instead
        if dst is not None:
            if self._ino(dst.st) == self._ino(src.st):
                return  # the same object (hard links or same name): nothing to do
            if dst.is_dir and not src.is_dir:
                raise oserror(errno.EISDIR, new)
            if src.is_dir and not dst.is_dir:
                raise oserror(errno.ENOTDIR, new)
            if dst.is_dir and self.layers.listdir(dst.dir_layers, join(new_parent.rel, new)):
                raise oserror(errno.ENOTEMPTY, new)
        node = self._remember(old_parent, old, src)
        await self._copy_up(node)
        self._upper_dir(new_parent)
        new_rel = join(new_parent.rel, new)
        if dst is not None and dst.is_dir and dst.dir_layers[0] == upper:
            with self.layers.at(upper, new_rel) as (fd, n):
                for marker in os.listdir(f"/proc/self/fd/{fd}/{n}"):
                    with self.layers.at(upper, join(new_rel, marker)) as (mfd, m):
                        remove_entry(mfd, m)
        needs_opaque = src.is_dir and self._lower_has(new_parent, new)
        gone = self._losing_name(dst) if dst is not None else None
        if self._lower_has(old_parent, old):
            self._make_whiteout(old_parent, old)  # first: a crash leaves the source showing
        with self.layers.at(upper, join(old_parent.rel, old)) as (sfd, s), self.layers.at(upper, new_rel) as (dfd, d):
            os.rename(s, d, src_dir_fd=sfd, dst_dir_fd=dfd)
        self._drop_whiteout(new_parent, new)
        if needs_opaque:
            self._marker(join(new_rel, whiteout.OPAQUE))
        if dst is not None:
            self._lost_name(gone, dst)
        node.parent, node.name = new_parent, new
        if src.is_dir:
            node.dir_layers = [upper]

    @fuse_boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.is_dir:
            raise oserror(errno.EPERM)
        await self._copy_up(node)  # a hard link is a change to the file: copy it up first
        parent, sname, upper, rel = await self._prepare_new(new_parent_inode, new_name)
        with self.layers.at(upper, node.rel) as (sfd, s), self.layers.at(upper, rel) as (dfd, d):
            os.link(s, d, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        self._drop_whiteout(parent, sname)
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
        if flags & _WRITE or flags & os.O_TRUNC:
            await self._copy_up(node, data=not flags & os.O_TRUNC)
            if flags & os.O_TRUNC:
                os.ftruncate(self._fd(node, write=True), 0)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @fuse_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # Inline: a FUSE read is at most 1 MiB and nearly always a page-cache hit (lowers are hot,
        # and keep_cache means a file's pages come through here only once). preadv(RWF_NOWAIT) with
        # a thread for misses was tried twice: 3x slower on sequential reads with 128 KiB requests,
        # and 2x with 1 MiB ones even when no read missed (the daemon's system time went from 0.16 s
        # to 0.41 s on a 512 MiB file).
        return os.pread(self._fd(self._node(fh)), size, off)

    @fuse_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._node(fh)
        if node.layer != self.upper:  # no OPEN was sent: the first write copies up
            await self._copy_up(node)
        return os.pwrite(self._fd(node, write=True), buf, off)

    @fuse_boundary
    async def kill_suidgid(self, fh: int) -> None:
        """The write that follows comes from a caller without CAP_FSETID (see _drop_suidgid)."""
        node = self._node(fh)
        await self._copy_up(node)
        self._drop_suidgid(node)

    def _drop_suidgid(self, node: Node) -> None:
        """What the kernel asks when a caller without CAP_FSETID writes, truncates or chowns a
        file, and what it would do itself on a local filesystem (this daemon holds CAP_FSETID, so
        the upper's kernel keeps the bits for it): the setuid bit goes, and the setgid bit if
        group-execute is set. The file is in the upper already."""
        mode = self._stat(node).st_mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if stat.S_ISREG(mode) and mode & kill:
            os.fchmod(self._fd(node, write=True), stat.S_IMODE(mode) & ~kill)

    @fuse_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.layers.paths[0])
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(data, attr, getattr(sv, attr))
        return data

    @fuse_boundary
    async def release(self, fh: int) -> None:
        pass  # the fd stays with the node (see _fd)

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
        fh = next(self._dir_fh)
        self.dirs[fh] = DirHandle(self._node(inode))
        if DIR_CACHE:
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    @fuse_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        parent = handle.node
        lower_only = self.upper not in parent.dir_layers  # then nothing in it can change
        if start_id == 0:  # a listing from the start (first read or rewinddir): take it now
            if lower_only:
                if parent.listing is None:
                    parent.listing = []
                    for n in self.layers.listdir(parent.dir_layers, parent.rel):
                        if (r := self._resolve(parent, n)) is not None:
                            attr = self._attr(r.st, self._ino(r.st))
                            parent.listing.append((n, os.fsencode(n), r, attr))
                handle.entries = parent.listing  # never changed in place: replaced if the dir changes
            else:
                handle.entries = [(n, os.fsencode(n), None, None)
                                  for n in self.layers.listdir(parent.dir_layers, parent.rel)]
        # Offsets index that listing: entries that stay are never repeated or skipped.
        for i in range(start_id, len(handle.entries)):
            name, raw, res, listed = handle.entries[i]
            if res is None or listed is None or not lower_only:
                res = self._resolve(parent, name)
                if res is None:
                    continue  # removed since the listing was taken
                node = self._remember(parent, name, res)
                attr = self._attr(res.st, node.ino)
            else:  # a lower-only directory: the entry was resolved when first listed and cannot change
                attr = listed
                found = self.nodes.get(attr.st_ino)
                node = found if found is not None and found.parent is parent and found.name == name \
                    else self._remember(parent, name, res)
            if not pyfuse3.readdir_reply(token, raw, attr, i + 1):
                break
            node.lookups += 1

    @fuse_boundary
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

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
        if key.startswith(_INTERNAL_XATTRS):
            raise oserror(errno.EPERM, key)
        node = self._node(inode)
        await self._copy_up(node)
        with self.layers.at(node.layer, node.rel) as (fd, n):
            change(f"/proc/self/fd/{fd}/{n}", key)

    @fuse_boundary
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._xattr_change(inode, name, lambda path, key: os.setxattr(path, key, value, follow_symlinks=False))

    @fuse_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name)
        if key.startswith(_INTERNAL_XATTRS):
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
        return [os.fsencode(k) for k in names if not k.startswith(_INTERNAL_XATTRS)]

    @fuse_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._xattr_change(inode, name, lambda path, key: os.removexattr(path, key, follow_symlinks=False))

    @fuse_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.enable_no_open:
            # The kernel then makes files with MKNOD, and its open after that sends nothing (no
            # OPEN, so no RELEASE at the last close either): one request less per file created.
            # It still knows the opener created the file (FMODE_CREATED): no permission check.
            raise oserror(errno.ENOSYS)
        node, st = await self._new_file(parent_inode, name, mode, ctx)
        return pyfuse3.FileInfo(fh=node.ino, keep_cache=True), self._attr(st, node.ino)

    async def _new_file(self, parent_inode: int, name: bytes, mode: int,
                        ctx: pyfuse3.RequestContext) -> tuple[Node, os.stat_result]:
        """A new empty file (create, or mknod of a file), its fd kept for the writes to come; its
        node (looked up once) and stat."""
        parent, sname, upper, rel = await self._prepare_new(parent_inode, name)
        with self.layers.at(upper, rel) as (fd, n):
            real = os.open(n, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                           stat.S_IMODE(mode), dir_fd=fd)
        try:
            st = self._own_file(real, mode, parent, ctx)
            self._drop_whiteout(parent, sname)
        except BaseException:
            os.close(real)
            raise
        node = self._remember(parent, sname, Resolved(upper, st, []))
        self._keep_fd(node, real, True)
        node.lookups += 1
        return node, st

"""Copy an object from a lower layer into the upper, as kernel overlayfs does.

The copy is built in the workdir — data (the best way ``copydata`` has that has not failed from that
lower filesystem before), owner, mode (setuid bits too: chmod comes after chown), xattrs, times — and only then
renamed into the upper, so a crash never leaves a half-copied file visible. Nor can a power cut
leave an empty file that hides the lower one: a copy with data is noted in the workdir's journal
before the rename (see ``journal``), or fsynced when it cannot be noted. ``sync=False``, the
``volatile`` mount option, does neither. The upper parent's times are put back afterwards: a copy-up
is not a change the merged view should show. Overlay-internal xattrs are not copied. With
``metacopy``, a copy that needs no data is of the inode alone, and the data comes in by ``fill`` at
the first write or truncation (see ``metacopy``).

``Copier``'s functions block (data copies can be long). ``CopyUps`` schedules them for the
filesystem's nodes: parents first; a small copy is tried with ``nowait``, on the event loop, where
it reads the lower's data only if it is all in the page cache (RWF_NOWAIT) and raises ``WouldBlock``
otherwise; that, a long copy and one that must be fsynced go to a worker thread.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from . import metacopy
from .copydata import Way, WouldBlock, can_tell, copy_data, copy_xattrs, open_lower, read_cached, write_all
from .errors import oserror
from .journal import Journal, can_note, recover_only
from .layers import LayerSet

if TYPE_CHECKING:
    from .fdcache import FdCache
    from .inodes import InodeTable, Node

_counter = itertools.count()
_INLINE_COPY = 1 << 20  # copy-ups of files up to this size may run on the event loop
_ABSOLUTE = 3000  # a lower object's absolute path is used below this length (PATH_MAX is 4096)


class Change(NamedTuple):
    """What the change a copy-up is made for sets, given to the copy itself (a syscall less each):
    a file's (atime, mtime) in ns, its permission bits."""

    times: tuple[int, int] | None = None
    perm: int | None = None


class Copier:
    def __init__(self, layers: LayerSet, workdir: str, sync: bool = True) -> None:
        self.layers = layers
        self.sync = sync
        self.work_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # owners are given for real as root; in an owners xattr (copied with the others) else
        self.as_root = os.geteuid() == 0 and not layers.owners_xattr
        # what a file created in the workdir is owned by (a setgid workdir would hand on its group)
        work = os.fstat(self.work_fd)
        self._created_owner = (os.geteuid(), work.st_gid if work.st_mode & stat.S_ISGID else os.getegid())
        self._umask = os.umask(0)  # the daemon runs with 0; a caller of the operations may not
        os.umask(self._umask)
        self._pid = os.getpid()  # names this daemon's copies in the workdir
        self._ways: dict[int, Way] = {}  # lower device -> how data copies from it to the upper
        # lower device -> can RWF_NOWAIT ask its page cache (not on FUSE or tmpfs)? Found by the
        # first copy from it, in a thread: until then (and if not) no copy from it is tried inline,
        # where even the open could wait (on a FUSE lower's daemon).
        self._nowait: dict[int, bool] = {}
        for name in os.listdir(self.work_fd):  # leftovers of a crashed daemon
            if name.startswith("#copyup-"):
                remove_entry(self.work_fd, name)
        self._marked = layers.upper is not None and metacopy.marked(layers.fds[layers.upper])
        self.journal: Journal | None = None
        if layers.upper is not None and sync:
            self.journal = Journal(self.work_fd, layers.fds[layers.upper], self._copy_again)
        elif layers.upper is not None:  # a volatile mount notes nothing, but repairs what a crash left
            recover_only(self.work_fd, layers.fds[layers.upper], self._copy_again)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        os.close(self.work_fd)

    def lower_path(self, layer: int, rel: str) -> str:
        return f"{self.layers.roots[layer]}/{rel}"

    def must_fsync(self, layer: int, rel: str) -> bool:
        """Would a copy of (layer, rel) with data be fsynced (not noted)?"""
        return self.journal is not None and not can_note(self.lower_path(layer, rel))

    def _copy_again(self, src: int, dst: int, size: int) -> None:
        copy_data(src, dst, size, Way.CLONE)

    def _owner(self, target: str, st: os.stat_result) -> None:
        if self.as_root:
            os.chown(target, st.st_uid, st.st_gid, dir_fd=self.work_fd, follow_symlinks=False)

    def copy(
        self,
        layer: int,
        rel: str,
        upper_parent_rel: str,
        name: str,
        data: bool = True,
        nowait: bool = False,
        meta: tuple[int, str] | None = None,
        change: Change | None = None,
    ) -> tuple[tuple[int, int], int]:
        """Copy (layer, rel) to ``upper_parent_rel/name`` in the upper. Returns the new object's
        identity (st_dev, st_ino: what its rename keeps) and, for a file, a read-write fd on it (the
        caller's to keep or close; -1 else). ``meta``: a file with data is copied without it, its
        data recorded as being at (layer, path) (see ``metacopy``). ``change``: what the change the
        copy is for sets on a file, which it gets in place of the lower's."""
        tmp = self._tmp_name()
        fd = -1
        try:
            fd, new = self._build(layer, rel, tmp, data, self.sync, nowait, meta, change)
            if new is None:  # not stat'ed while it was built
                new = os.fstat(fd) if fd >= 0 else os.stat(tmp, dir_fd=self.work_fd, follow_symlinks=False)
            self.publish(tmp, upper_parent_rel, name)
        except BaseException:
            if fd >= 0:
                if self.journal is not None:
                    self.journal.drop(os.fstat(fd).st_ino)
                os.close(fd)
            remove_entry(self.work_fd, tmp)
            raise
        return (new.st_dev, new.st_ino), fd

    def copy_orphan(self, layer: int, rel: str, nowait: bool = False) -> int:
        """A private copy of a lower file whose name is gone (it was unlinked while open, and is now
        written): built in the workdir and unlinked there again. It lives as long as the read-write
        fd returned, and no crash can leave it visible, so it is not synced."""
        tmp = self._tmp_name()
        try:
            return self._build(layer, rel, tmp, True, False, nowait)[0]
        finally:
            remove_entry(self.work_fd, tmp)

    def _tmp_name(self) -> str:
        return f"#copyup-{self._pid}-{next(_counter)}"  # what __init__ clears of a crashed daemon

    def _build(
        self,
        layer: int,
        rel: str,
        tmp: str,
        data: bool,
        durable: bool,
        nowait: bool = False,
        meta: tuple[int, str] | None = None,
        change: Change | None = None,
    ) -> tuple[int, os.stat_result | None]:
        """Make ``tmp`` in the workdir a copy of (layer, rel): data, owner, mode, xattrs, times;
        ``durable``: its data noted or fsynced; ``nowait``: see the module's doc. Returns a
        read-write fd on it for a file (made with it: the mode cannot refuse), -1 else; and its
        stat if one was taken on the way (for the journal's note), else None."""
        st = self.layers.real_lstat(layer, rel)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "vanished during copy-up", rel)
        with self.layers.at(layer, rel) as (sfd, sname):
            # its xattrs are asked for by path: the layer's own path when it is short (a walk
            # through dirs the kernel has cached: 2.4 µs on tmpfs), else through /proc (6 µs)
            src_path = self.lower_path(layer, rel)
            if len(src_path) >= _ABSOLUTE:
                src_path = f"/proc/self/fd/{sfd}/{sname}"
            mode = st.st_mode
            if stat.S_ISREG(mode):
                times = (change.times if change else None) or (st.st_atime_ns, st.st_mtime_ns)
                if change is not None and change.perm is not None:
                    mode = stat.S_IFMT(mode) | change.perm
                # Created with its final mode unless a chown must come first (it would drop
                # setuid bits), or the umask or open(2) would leave bits out.
                owned = not self.as_root or (st.st_uid, st.st_gid) == self._created_owner
                final = owned and not stat.S_IMODE(mode) & (~0o777 | self._umask)
                src, cached = -1, None
                if meta is not None and st.st_size:
                    return self._build_meta(st, mode, times, src_path, tmp, owned, final, meta), None
                if data and st.st_size:
                    if nowait and not self._nowait.get(st.st_dev):
                        raise WouldBlock(rel)
                    src = open_lower(sname, sfd)
                    if nowait and (cached := read_cached(src, st.st_size)) is None:
                        os.close(src)
                        raise WouldBlock(rel)
                    if st.st_dev not in self._nowait:
                        self._nowait[st.st_dev] = can_tell(src)
                try:
                    dst = os.open(
                        tmp,
                        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                        stat.S_IMODE(mode) if final else 0o600,
                        dir_fd=self.work_fd,
                    )
                except BaseException:
                    if src >= 0:
                        os.close(src)
                    raise
                made = None
                try:
                    cloned = False  # a clone shares the lower's extents: metadata, as safe as the rename
                    if cached is not None:
                        write_all(dst, cached)
                    elif src >= 0:
                        way = self._ways[st.st_dev] = copy_data(
                            src, dst, st.st_size, self._ways.get(st.st_dev, Way.CLONE)
                        )
                        cloned = way == Way.CLONE
                    if src >= 0 and durable and not cloned:
                        made = self._make_durable(dst, layer, rel, st.st_size)
                    if not owned:
                        os.fchown(dst, st.st_uid, st.st_gid)
                    if not final:
                        os.fchmod(dst, stat.S_IMODE(mode))
                    copy_xattrs(src if src >= 0 else src_path, dst)
                    os.utime(dst, ns=times)
                except BaseException:
                    os.close(dst)
                    raise
                finally:
                    if src >= 0:
                        os.close(src)
                return dst, made
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(sname, dir_fd=sfd), tmp, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd, follow_symlinks=False)
            elif stat.S_ISDIR(mode):
                os.mkdir(tmp, 0o700, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.chmod(tmp, stat.S_IMODE(mode), dir_fd=self.work_fd)
                copy_xattrs(src_path, f"/proc/self/fd/{self.work_fd}/{tmp}")
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd)
            else:  # fifo, socket, device
                os.mknod(tmp, mode, st.st_rdev, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.chmod(tmp, stat.S_IMODE(mode), dir_fd=self.work_fd)
                copy_xattrs(src_path, f"/proc/self/fd/{self.work_fd}/{tmp}")
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd)
        return -1, None

    def _build_meta(
        self,
        st: os.stat_result,
        mode: int,
        times: tuple[int, int],
        src_path: str,
        tmp: str,
        owned: bool,
        final: bool,
        data: tuple[int, str],
    ) -> int:
        """``tmp``: a metacopy of the lower file ``st`` (at ``src_path``) with ``mode`` and
        ``times``, its data recorded as at ``data``; a read-write fd on it. Metadata alone: nothing
        to note or fsync."""
        if not self._marked:
            metacopy.mark(self.layers.fds[self.layers.upper or 0])  # it holds records now
            self._marked = True
        dst = os.open(
            tmp,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            stat.S_IMODE(mode) if final else 0o600,
            dir_fd=self.work_fd,
        )
        try:
            os.ftruncate(dst, st.st_size)
            metacopy.record(dst, self.layers.roots[data[0]], data[1])
            if not owned:
                os.fchown(dst, st.st_uid, st.st_gid)
            if not final:
                os.fchmod(dst, stat.S_IMODE(mode))
            copy_xattrs(src_path, dst)
            os.utime(dst, ns=times)
        except BaseException:
            os.close(dst)
            raise
        return dst

    def fill(self, dst: int, layer: int, rel: str, size: int, nowait: bool = False) -> None:
        """Copy the data of the metacopy open at ``dst`` in from (layer, rel), where its record says
        it is, then drop the record: noted (or fsynced) first, so that a crash cannot leave the
        file without its record and without its data. ``nowait``: as ``copy``'s."""
        st = self.layers.lstat(layer, rel)
        if nowait and (st is None or not self._nowait.get(st.st_dev)):
            raise WouldBlock(rel)
        with self.layers.at(layer, rel) as (sfd, sname):
            src = open_lower(sname, sfd)
        try:
            if st is None:
                st = os.fstat(src)
            if nowait:
                if (cached := read_cached(src, size)) is None:
                    raise WouldBlock(rel)
                write_all(dst, cached)
                cloned = False
            else:
                if st.st_dev not in self._nowait:
                    self._nowait[st.st_dev] = can_tell(src)
                way = self._ways[st.st_dev] = copy_data(src, dst, size, self._ways.get(st.st_dev, Way.CLONE))
                cloned = way == Way.CLONE
        finally:
            os.close(src)
        if self.sync and not cloned:
            self._make_durable(dst, layer, rel, size)
        self.unrecord(dst)

    @staticmethod
    def unrecord(dst: int) -> None:
        """The metacopy at ``dst`` has its data (or needs none): its record goes."""
        try:
            os.removexattr(dst, metacopy.XATTR)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise

    def _make_durable(self, dst: int, layer: int, rel: str, size: int) -> os.stat_result | None:
        """Make sure no crash loses the data just copied into ``dst``: note it (returning the stat
        that names it), or fsync it."""
        lower = self.lower_path(layer, rel)
        if self.journal is not None and can_note(lower):
            st = os.fstat(dst)
            self.journal.note(st.st_ino, lower, size)
            return st
        os.fsync(dst)
        return None

    def publish(self, tmp: str, parent_rel: str, name: str) -> None:
        """Rename ``tmp`` from the workdir into the upper, keeping the parent's times."""
        upper = self.layers.upper
        assert upper is not None
        parent = self.layers.lstat(upper, parent_rel)
        with self.layers.at(upper, f"{parent_rel}/{name}" if parent_rel else name) as (dfd, dname):
            os.rename(tmp, dname, src_dir_fd=self.work_fd, dst_dir_fd=dfd)
        if parent is not None:
            with self.layers.at(upper, parent_rel) as (pfd, pname):
                os.utime(pname, ns=(parent.st_atime_ns, parent.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a file or a whole tree) from the directory open at ``dir_fd``."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def read_only(node: Node) -> None:
    """The copy-up steps of a union without an upper: every change answers EROFS."""
    raise oserror(errno.EROFS)


async def read_only_copy(node: Node, *_: object) -> bool:
    raise oserror(errno.EROFS)


class CopyUps:
    """Copy-ups of the filesystem's nodes, scheduled on the trio loop or in worker threads; the new
    upper object becomes an alias of the lower one (same inode number) and a file's new fd goes to
    its node."""

    def __init__(self, copier: Copier, inodes: InodeTable, fds: FdCache, metacopy_on: bool = False) -> None:
        assert copier.layers.upper is not None
        self.copier = copier
        self.upper: int = copier.layers.upper
        # see ``copy_meta``; an upper that cannot hold the records gets copies with data
        self.metacopy = metacopy_on and metacopy.supported(copier.layers.fds[self.upper])
        self.inodes = inodes
        self.fds = fds
        self._locks: dict[int, trio.Lock] = {}

    def forget(self, ino: int) -> None:
        self._locks.pop(ino, None)

    def upper_dir(self, node: Node) -> None:
        """Make sure the directory ``node`` exists in the upper (parents first). A directory's copy
        has no data and runs here, with no await: nothing else can start copying it meanwhile."""
        if node.dir_layers and node.dir_layers[0] == self.upper:
            return
        assert node.parent is not None
        self.upper_dir(node.parent)
        old = self.inodes.stat(node)
        new, _ = self.copier.copy(node.dir_layers[0], node.rel, node.parent.rel, node.name)
        self.inodes.alias(new, old)
        node.dir_layers = [self.upper, *node.dir_layers]
        node.listing = None  # it can change now
        node.layer = self.upper
        node.no_whiteouts = True  # a new, empty directory

    async def copy_up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` into the upper with its data unless it is there (its parents first); a
        metacopy gets its data now; ``data=False``: a file's copy is left empty (it is about to be
        truncated to zero)."""
        if node.layer == self.upper and node.data is None:
            return
        await self._copy(node, data, False)

    async def copy_meta(self, node: Node, change: Change | None = None) -> bool:
        """Copy ``node`` into the upper for a change that needs none of its data (chmod, chown,
        utimes, xattrs, a link, a rename): with ``metacopy`` on, a file's data stays below.
        ``change``: what the change sets; True if a file's copy was given it (the caller need not
        set it again)."""
        if node.layer == self.upper:
            return False
        given = (
            change is not None
            and not node.is_dir
            and not node.unlinked
            and stat.S_ISREG((node.last or self.inodes.stat(node)).st_mode)
        )  # (other kinds keep the lower's)
        await self._copy(node, True, self.metacopy, change if given else None)
        return given

    async def _copy(self, node: Node, data: bool, meta: bool, change: Change | None = None) -> None:
        upper = self.upper
        if node.is_dir:
            self.upper_dir(node)
            return
        if node.layer == upper:
            await self._fill(node, data)
            return
        assert node.parent is not None
        if not node.unlinked:
            self.upper_dir(node.parent)
        lock = self._locks.get(node.ino)
        if lock is not None and lock.locked():  # a worker thread is copying it: that copy will do
            async with lock:
                pass
            if node.layer == upper:
                await self._fill(node, data)
                return
        # Long copies, the rare ones with data to fsync and those whose data must be read from
        # the disk go to a worker thread: they must not stall the other requests. The others cost
        # less than a thread hop and run here, with no await, so no other request can start
        # copying the same file meanwhile.
        old = self.inodes.stat(node)
        meta = meta and not node.unlinked
        if meta or not data or (old.st_size <= _INLINE_COPY and not self.copier.must_fsync(node.layer, node.rel)):
            copy, done = self._job(node, data, old, meta, change, nowait=True)
            try:
                result = copy()
            except WouldBlock:
                pass  # its data is not all in the page cache: a thread's job
            else:
                done(result)
                return
        async with self._lock(node):
            if node.layer != upper:
                copy, done = self._job(node, data, self.inodes.stat(node), meta, change)
                done(await trio.to_thread.run_sync(copy))

    async def _fill(self, node: Node, data: bool) -> None:
        """The upper file ``node`` may be a metacopy: its data comes in now (none, if ``data`` is
        false: it is about to be truncated to zero), and its record goes."""
        found = self.fds.places.data_location(node)
        if found is None:
            return
        if not data:
            self.copier.unrecord(self.fds.fd(node, write=True))
            self.fds.data_copied(node)
            return
        layer, rel = found
        size = self.inodes.stat(node).st_size
        if size <= _INLINE_COPY and not self.copier.must_fsync(layer, rel):
            try:
                self.copier.fill(self.fds.fd(node, write=True), layer, rel, size, nowait=True)
            except WouldBlock:
                pass
            else:
                self.fds.data_copied(node)
                return
        async with self._lock(node):
            if node.data is not None:
                fd = os.dup(self.fds.fd(node, write=True))  # the cache may close its own meanwhile
                try:
                    await trio.to_thread.run_sync(self.copier.fill, fd, layer, rel, size)
                finally:
                    os.close(fd)
                self.fds.data_copied(node)

    def _job(
        self, node: Node, data: bool, old: os.stat_result, meta: bool, change: Change | None, nowait: bool = False
    ) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        """The copy-up of a lower file whose stat is ``old`` (``meta``: a metacopy if it has data):
        the copy (it blocks) and what to note, on the loop, of its result."""
        assert node.parent is not None
        copier, layer, rel, prel, name = self.copier, node.layer, node.rel, node.parent.rel, node.name
        if node.unlinked:  # written after its name went (no OPEN was sent): a copy only its fd names

            def kept(fd: int) -> None:
                self.fds.keep(node, fd, True)
                node.layer = self.upper

            return lambda: copier.copy_orphan(layer, rel, nowait), kept

        # a metacopy records where the data is: the lower file's own place, or where its record says
        place = (self.fds.places.data_location(node) or (layer, rel)) if meta and old.st_size else None

        def copied(new_and_fd: tuple[tuple[int, int], int]) -> None:
            new, fd = new_and_fd
            self.inodes.alias(new, old)
            node.layer = self.upper
            if place is not None:
                node.data = place
            if fd >= 0:  # a file's copy (the lower file's fd is closed): no open to come
                self.fds.keep(node, fd, True)

        return lambda: copier.copy(layer, rel, prel, name, data, nowait, place, change), copied

    async def before_shrinking(self, fd: int, size: int) -> None:
        """A copy-up still noted in the journal is about to be truncated to ``size``: below its
        lower's size, a crash could no longer tell lost data from the truncation, so the copy is
        made durable first and its note goes (to zero, nothing copied is kept: the note just goes)."""
        journal = self.copier.journal
        assert journal is not None
        ino = os.fstat(fd).st_ino
        lower = journal.lower_size(ino)
        if lower is None or size >= lower:
            return
        if size:
            await trio.to_thread.run_sync(os.fsync, fd)
        journal.drop(ino)

    async def make_durable(self, fd: int) -> None:
        """The copy-up at ``fd`` gets a hole where its lower has data (a punched hole): a crash
        could no longer tell that from lost data, so a noted copy is fsynced and its note goes."""
        journal = self.copier.journal
        if journal is None or not journal.notes:
            return
        ino = os.fstat(fd).st_ino
        if journal.lower_size(ino) is not None:
            await trio.to_thread.run_sync(os.fsync, fd)
            journal.drop(ino)

    def _lock(self, node: Node) -> trio.Lock:
        lock = self._locks.get(node.ino)
        if lock is None:
            lock = self._locks[node.ino] = trio.Lock()
        return lock

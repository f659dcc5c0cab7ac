"""Copy an object from a lower layer into the upper, as kernel overlayfs does.

The copy is built in the workdir — data (FICLONE, else copy_file_range, else sendfile where the
kernel does not copy between the two filesystems; a lower filesystem that refuses FICLONE is not
asked again), owner, mode (setuid bits too: chmod comes after chown), xattrs, times — and only then
renamed into the upper, so a crash never leaves a half-copied file visible. A copy with data is
fsynced before the rename, as kernel overlayfs does (fuse-overlayfs 1.10 does not), so that a power
cut cannot leave an empty file that hides the lower one; ``sync=False``, the ``volatile`` mount
option, skips that. The upper parent's times are
put back afterwards: a copy-up is not a change the merged view should show. Overlay-internal xattrs
are not copied.

These functions block (data copies can be long): the filesystem runs them in a worker thread.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import itertools
import os
import shutil
import stat

from .layers import LayerSet

_FICLONE = 0x40049409
_counter = itertools.count()
_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.")


def _copy_xattrs(src: str | int, dst: str | int) -> None:
    """Copy the xattrs of ``src`` to ``dst``, each a path (not followed) or an open fd."""
    try:
        names = os.listxattr(src, follow_symlinks=False) if isinstance(src, str) else os.listxattr(src)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if name.startswith(_INTERNAL_XATTRS):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False) if isinstance(src, str) else os.getxattr(src, name)
            if isinstance(dst, int):
                os.setxattr(dst, name, value)
            else:
                os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            # trusted.*/security.* need privileges: without them, keep what can be kept.
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                raise


class _Way(enum.IntEnum):
    """How data is copied from one lower filesystem to the upper: the best that has not failed."""

    CLONE = 0  # FICLONE: a reflink, no data copied (btrfs, xfs)
    COPY_FILE_RANGE = 1  # in the kernel, no data through user space
    SENDFILE = 2  # the kernel copies the data between the two kinds of filesystem (a lower on FUSE, say)


def _copy_data(src_fd: int, dst_fd: int, size: int, way: _Way) -> _Way:
    """Copy ``size`` bytes the best ``way`` the two filesystems allow; returns the way that worked."""
    if way == _Way.CLONE:
        try:
            fcntl.ioctl(dst_fd, _FICLONE, src_fd)
            return way
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                raise
            way = _Way.COPY_FILE_RANGE
    offset = 0
    if way == _Way.COPY_FILE_RANGE:
        while offset < size:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(size - offset, 1 << 30), offset, offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                way = _Way.SENDFILE
                break
            if n == 0:
                return way
            offset += n
    if way == _Way.SENDFILE:
        os.lseek(dst_fd, offset, os.SEEK_SET)
        while offset < size and (n := os.sendfile(dst_fd, src_fd, offset, min(size - offset, 1 << 30))):
            offset += n
    return way


class Copier:
    def __init__(self, layers: LayerSet, workdir: str, sync: bool = True) -> None:
        self.layers = layers
        self.sync = sync
        self.work_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0
        # what a file created in the workdir is owned by (a setgid workdir would hand on its group)
        work = os.fstat(self.work_fd)
        self._created_owner = (os.geteuid(), work.st_gid if work.st_mode & stat.S_ISGID else os.getegid())
        self._umask = os.umask(0)  # the daemon runs with 0; a caller of the operations may not
        os.umask(self._umask)
        self._pid = os.getpid()  # names this daemon's copies in the workdir
        self._ways: dict[int, _Way] = {}  # lower device -> how data copies from it to the upper
        for name in os.listdir(self.work_fd):  # leftovers of a crashed daemon
            if name.startswith("#copyup-"):
                remove_entry(self.work_fd, name)

    def close(self) -> None:
        os.close(self.work_fd)

    def _owner(self, target: str, st: os.stat_result) -> None:
        if self.as_root:
            os.chown(target, st.st_uid, st.st_gid, dir_fd=self.work_fd, follow_symlinks=False)

    def copy(self, layer: int, rel: str, upper_parent_rel: str, name: str,
             data: bool = True) -> tuple[os.stat_result, int]:
        """Copy (layer, rel) to ``upper_parent_rel/name`` in the upper. Returns the new object's
        stat and, for a file, a read-write fd on it (the caller's to keep or close; -1 else)."""
        upper = self.layers.upper
        assert upper is not None
        tmp = self._tmp_name()
        fd = -1
        try:
            fd = self._build(layer, rel, tmp, data, self.sync)
            self.publish(tmp, upper_parent_rel, name)
            new = os.fstat(fd) if fd >= 0 else \
                self.layers.lstat(upper, f"{upper_parent_rel}/{name}" if upper_parent_rel else name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            remove_entry(self.work_fd, tmp)
            raise
        assert new is not None
        return new, fd

    def copy_orphan(self, layer: int, rel: str) -> int:
        """A private copy of a lower file whose name is gone (it was unlinked while open, and is now
        written): built in the workdir and unlinked there again. It lives as long as the read-write
        fd returned, and no crash can leave it visible, so it is not synced."""
        tmp = self._tmp_name()
        try:
            return self._build(layer, rel, tmp, True, False)
        finally:
            remove_entry(self.work_fd, tmp)

    def _tmp_name(self) -> str:
        return f"#copyup-{self._pid}-{next(_counter)}"  # what __init__ clears of a crashed daemon

    def _build(self, layer: int, rel: str, tmp: str, data: bool, sync: bool) -> int:
        """Make ``tmp`` in the workdir a copy of (layer, rel): data, owner, mode, xattrs, times.
        Returns a read-write fd on it for a file (made with it: the mode cannot refuse), -1 else."""
        st = self.layers.lstat(layer, rel)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "vanished during copy-up", rel)
        with self.layers.at(layer, rel) as (sfd, sname):
            src_path = f"/proc/self/fd/{sfd}/{sname}"
            mode = st.st_mode
            if stat.S_ISREG(mode):
                # Created with its final mode unless a chown must come first (it would drop
                # setuid bits), or the umask or open(2) would leave bits out.
                owned = not self.as_root or (st.st_uid, st.st_gid) == self._created_owner
                final = owned and not stat.S_IMODE(mode) & (~0o777 | self._umask)
                dst = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              stat.S_IMODE(mode) if final else 0o600, dir_fd=self.work_fd)
                src = -1
                try:
                    if data and st.st_size:
                        src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
                        self._ways[st.st_dev] = _copy_data(src, dst, st.st_size, self._ways.get(st.st_dev, _Way.CLONE))
                    if not owned:
                        os.fchown(dst, st.st_uid, st.st_gid)
                    if not final:
                        os.fchmod(dst, stat.S_IMODE(mode))
                    _copy_xattrs(src if src >= 0 else src_path, dst)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    if sync and data and st.st_size:
                        os.fsync(dst)
                except BaseException:
                    os.close(dst)
                    raise
                finally:
                    if src >= 0:
                        os.close(src)
                return dst
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(sname, dir_fd=sfd), tmp, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd, follow_symlinks=False)
            elif stat.S_ISDIR(mode):
                os.mkdir(tmp, 0o700, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.chmod(tmp, stat.S_IMODE(mode), dir_fd=self.work_fd)
                _copy_xattrs(src_path, f"/proc/self/fd/{self.work_fd}/{tmp}")
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd)
            else:  # fifo, socket, device
                os.mknod(tmp, mode, st.st_rdev, dir_fd=self.work_fd)
                self._owner(tmp, st)
                os.chmod(tmp, stat.S_IMODE(mode), dir_fd=self.work_fd)
                _copy_xattrs(src_path, f"/proc/self/fd/{self.work_fd}/{tmp}")
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd)
        return -1

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

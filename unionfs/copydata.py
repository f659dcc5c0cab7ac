"""How a lower object's bytes and xattrs get into the upper: FICLONE, else copy_file_range (which
clones too on btrfs and xfs, where FICLONE refuses a lower on a mount of its own: ``privatemount``),
else sendfile (a lower filesystem the kernel will not copy from, e.g. one on FUSE); reads that only take
what the page cache holds (RWF_NOWAIT); lower files opened O_NOATIME where allowed (a copy does not
change the lower, and an atime update would make a RWF_NOWAIT read refuse). No FUSE types, no
scheduling: ``copyup``'s.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os

from . import metacopy

_FICLONE = 0x40049409
_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.", *metacopy.PRIVATE_XATTRS)


class WouldBlock(Exception):
    """A ``nowait`` copy whose lower data is not all in the page cache."""


def read_cached(src: int, size: int) -> bytearray | None:
    """The ``size`` bytes of ``src`` if all are in the page cache; None if reading would wait."""
    buf = bytearray(size)
    try:
        n = os.preadv(src, [buf], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    return buf if n == size else None


def can_tell(src: int) -> bool:
    """Does the filesystem of ``src`` answer RWF_NOWAIT reads?"""
    try:
        os.preadv(src, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        pass
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return False
        raise
    return True


def write_all(fd: int, data: bytearray) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        done += os.pwrite(fd, view[done:], done)


def open_lower(name: str, dir_fd: int) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:  # O_NOATIME: only the owner or CAP_FOWNER
        return os.open(name, flags, dir_fd=dir_fd)


def copy_xattrs(src: str | int, dst: str | int) -> None:
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


class Way(enum.IntEnum):
    """How data is copied from one lower filesystem to the upper: the best that has not failed."""

    CLONE = 0  # FICLONE: a reflink, no data copied (btrfs, xfs)
    COPY_FILE_RANGE = 1  # in the kernel, no data through user space
    SENDFILE = 2  # the kernel copies the data between the two kinds of filesystem (a lower on FUSE, say)


def copy_data(src_fd: int, dst_fd: int, size: int, way: Way) -> Way:
    """Copy ``size`` bytes the best ``way`` the two filesystems allow; returns the way that worked."""
    if way == Way.CLONE:
        try:
            fcntl.ioctl(dst_fd, _FICLONE, src_fd)
            return way
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                raise
            way = Way.COPY_FILE_RANGE
    offset = 0
    if way == Way.COPY_FILE_RANGE:
        while offset < size:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(size - offset, 1 << 30), offset, offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                way = Way.SENDFILE
                break
            if n == 0:
                return way
            offset += n
    if way == Way.SENDFILE:
        os.lseek(dst_fd, offset, os.SEEK_SET)
        while offset < size and (n := os.sendfile(dst_fd, src_fd, offset, min(size - offset, 1 << 30))):
            offset += n
    return way

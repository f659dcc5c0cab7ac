"""What the kernel is told about an object: its ``EntryAttributes`` made from a stat of the real
object, with our inode number, and how long it may keep them. Lower layers never change under a
mount and this process is the only writer of the upper, so entries, attributes and negative lookups
may be cached for long (``TIMEOUT``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pyfuse3

TIMEOUT = 1e6


def attr(st: os.stat_result, ino: int, unlinked: bool = False, merged: bool = False) -> pyfuse3.EntryAttributes:
    """The attributes of the object ``st`` as inode ``ino``; ``unlinked``: it has no name left
    (an unlinked file kept open); ``merged``: a directory of more than one layer, whose subdirectories
    are not counted, so its link count is 1 (as kernel overlayfs and btrfs say: "unknown", which
    find(1) understands), never a wrong number. A directory of one layer has that dir's count: 2 plus
    its subdirectories, which are the merged ones (markers are files)."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.generation = 0
    e.entry_timeout = TIMEOUT
    e.attr_timeout = TIMEOUT
    e.st_mode = st.st_mode
    e.st_nlink = 0 if unlinked else 1 if merged else st.st_nlink
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


def negative() -> pyfuse3.EntryAttributes:
    """A lookup's answer for a name that does not exist, which the kernel may cache."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = TIMEOUT
    return e


def new_times(
    attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, current: Callable[[], os.stat_result]
) -> tuple[int, int]:
    """(atime, mtime) in ns after a setattr: those it sets, the others as they are (``current()``)."""
    if fields.update_atime and fields.update_mtime:
        return attr.st_atime_ns, attr.st_mtime_ns
    st = current()
    return (
        attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
        attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
    )

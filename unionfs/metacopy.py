"""Metadata-only copy-ups (kernel overlayfs's ``metacopy=on``): where a file's data is.

With ``-o metacopy=on`` a change to a lower file that needs no data (chmod, chown, utimes, xattrs, a
hard link, a rename) copies its inode alone: the upper file gets the lower's owner, mode, times,
xattrs and size (sparse: no data), and the lower file's place is recorded in the upper file's
``XATTR``: the lower layer's root and the file's path in it. Recorded, not derived: a rename moves
the upper file, and the record with it. Reads take the data from there until the first write,
truncation or fallocate, which copies the data in (``copyup``) and drops the record. A record whose
layer is not one of the mount's, or whose file is not the regular file of the upper file's size it
was, is data lost: reads give EIO (and the log says which file).

The upper's root gets ``XATTR`` too, empty, once it holds a record: a union that mounts that upper
as a lower (``strata mount`` of a stopped container) then asks its files for records, and no other
lower's. Whatever reads an upper without mounting it (``strata commit``, ``export``, a build step's
layer) asks ``data_path`` where each file's data is, and leaves ``PRIVATE_XATTRS`` out. No FUSE types.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inodes import Node
    from .layers import LayerSet

XATTR = "user.strata.metacopy"
PRIVATE_XATTRS = (XATTR,)  # the union's own: never shown through it, nor put into a layer's tar
UNCHECKED = (-1, "")  # ``Node.data`` of a file whose record is not read yet (``DataPlaces``)
log = logging.getLogger("unionfs")

__all__ = ["PRIVATE_XATTRS", "XATTR", "data_path", "marked", "record"]


def encode(root: str, rel: str) -> bytes:
    return os.fsencode(root) + b"\0" + os.fsencode(rel)


def recorded(target: int | str) -> tuple[str, str] | None:
    """(lower layer root, path in it) from the record of the upper file ``target`` (an fd, or a
    path not followed), or None: its data is its own."""
    try:
        value = (
            os.getxattr(target, XATTR, follow_symlinks=False) if isinstance(target, str) else os.getxattr(target, XATTR)
        )
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise
    root, sep, rel = value.partition(b"\0")
    if not sep or not rel or rel.startswith(b"/") or b"/../" in b"/" + rel + b"/":
        raise OSError(errno.EIO, "a metacopy record that names no file in a layer", os.fsdecode(value))
    return os.fsdecode(root), os.fsdecode(rel)


def record(fd: int, root: str, rel: str) -> None:
    """Record in the upper file at ``fd`` that its data is ``rel`` in the layer at ``root``."""
    os.setxattr(fd, XATTR, encode(root, rel))


def marked(root_fd: int) -> bool:
    """Does the layer dir open at ``root_fd`` (an upper, maybe mounted as a lower now) hold records?"""
    try:
        os.getxattr(root_fd, XATTR)
        return True
    except OSError:
        return False


def supported(root_fd: int) -> bool:
    """Can the upper at ``root_fd`` hold records (``user.`` xattrs)? Where not, copy-ups copy data."""
    try:
        os.getxattr(root_fd, XATTR)
    except OSError as e:
        return e.errno == errno.ENODATA
    return True


def mark(root_fd: int) -> None:
    os.setxattr(root_fd, XATTR, b"")


def check_lower(lower: os.stat_result, size: int, where: str) -> None:
    """The lower file a record names must still be the regular file of the upper's size it was."""
    if not stat.S_ISREG(lower.st_mode) or lower.st_size != size:
        raise OSError(errno.EIO, "the lower file holding a metacopy's data has changed", where)


def data_path(path: str, lowers: Sequence[str]) -> str:
    """For tools reading an upper dir without mounting it: the file whose bytes are the data of the
    regular file at ``path`` (in the upper): ``path`` itself, or the lower file its record names,
    which must lie in one of ``lowers`` (the union's lower layer dirs: a record cannot send a reader
    elsewhere). OSError (EIO) when the record's file is not in those layers or has changed."""
    found = recorded(path)
    if found is None:
        return path
    root, rel = found
    real_root = os.path.realpath(root)
    if real_root not in {os.path.realpath(d) for d in lowers}:
        raise OSError(errno.EIO, f"metacopy data in {root}, not a layer of this union", path)
    lower = os.path.join(real_root, rel)
    if not os.path.realpath(lower).startswith(real_root + "/"):
        raise OSError(errno.EIO, f"metacopy data outside its layer {root}", path)
    check_lower(os.lstat(lower), os.lstat(path).st_size, path)
    return lower


class DataPlaces:
    """Where the files of one mount keep their data; ``data_location`` is the one place that says
    so (reads, data copy-ups, and whatever else opens a file for its data)."""

    def __init__(self, layers: LayerSet) -> None:
        self.layers = layers
        self._layer_of = {root: i for i, root in enumerate(layers.roots) if i != layers.upper}  # as records name them

    def data_location(self, node: Node) -> tuple[int, str] | None:
        """(layer, path in it) of the lower file whose bytes are the data of file ``node``, when its
        metacopy record says so; None when its data is its own (at ``node.layer``, or its fd). The
        record is read once per node (``Node.data``: ``UNCHECKED`` until then)."""
        data = node.data
        if data is UNCHECKED:
            data = node.data = self._read(node)
        return data

    def _read(self, node: Node) -> tuple[int, str] | None:
        if node.fd >= 0:
            found = recorded(node.fd)
        else:
            with self.layers.at(node.layer, node.rel) as (dfd, name):
                found = recorded(f"/proc/self/fd/{dfd}/{name}")
        if found is None:
            return None
        root, rel = found
        layer = self._layer_of.get(root)
        if layer is None:
            log.error("%s: its data is in %s, not a lower layer of this mount", node.rel, root)
            raise OSError(errno.EIO, "metacopy data in a layer not mounted", node.rel)
        size = (node.last or self.layers.lstat(node.layer, node.rel) or os.fstat(node.fd)).st_size
        lower = self.layers.lstat(layer, rel)
        if lower is None:
            log.error("%s: its data, %s in %s, is gone", node.rel, rel, root)
            raise OSError(errno.EIO, "metacopy data gone", node.rel)
        check_lower(lower, size, node.rel)
        return layer, rel

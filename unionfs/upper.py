"""What the union writes into its upper besides copies: whiteout and opaque markers, the owner of new
objects, and setuid bits a write drops. No FUSE types: callers pass the caller's uid and gid.

Markers are written in the OCI spelling only (``whiteout``); a name created where a marker may hide
it removes that marker, except in a directory known to hold none (``Node.no_whiteouts``: this daemon
made it and has put none there since). Copies are ``copyup``'s.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Callable
from typing import TypeVar

from . import owners, whiteout
from .copyup import remove_entry
from .inodes import Node
from .layers import LayerSet, join

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2  # renameat2(2)


def without_suidgid(mode: int) -> int | None:
    """The mode a regular file gets when a caller without CAP_FSETID writes, truncates or chowns it,
    as the kernel would set it on a local filesystem (the setuid bit goes, and setgid if
    group-execute is set); None when nothing changes."""
    kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
    if stat.S_ISREG(mode) and mode & kill:
        return stat.S_IMODE(mode) & ~kill
    return None


class Upper:
    def __init__(self, layers: LayerSet) -> None:
        assert layers.upper is not None
        self.layers = layers
        self.layer: int = layers.upper
        self.owners_xattr = layers.owners_xattr  # owners go into the xattr (``owners``), never chown
        self.as_root = os.geteuid() == 0 and not self.owners_xattr

    # -- markers ----------------------------------------------------------------------------------
    def lower_has(self, parent: Node, name: str) -> bool:
        """Would ``name`` show from a lower layer if the upper had nothing for it?"""
        lowers = [layer for layer in parent.dir_layers if layer != self.layer]
        return bool(lowers) and self.layers.resolve(lowers, parent.rel, name) is not None

    def marker(self, rel: str) -> None:
        """An empty file in the upper: a whiteout or an opaque-directory marker (OCI spelling)."""
        with self.layers.at(self.layer, rel) as (fd, name):
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o000, dir_fd=fd))

    def make_whiteout(self, parent: Node, name: str) -> None:
        parent.no_whiteouts = False
        self.marker(join(parent.rel, whiteout.whiteout_name(name)))

    def drop_whiteout(self, parent: Node, name: str) -> bool:
        """Remove the whiteout that may hide ``name`` in ``parent``; was there one?"""
        if parent.no_whiteouts:
            return False
        if len(os.fsencode(whiteout.whiteout_name(name))) > 255:
            return False  # such a whiteout cannot exist (nor be made: unlink then says ENAMETOOLONG)
        with self.layers.at(self.layer, join(parent.rel, whiteout.whiteout_name(name))) as (fd, wname):
            try:
                os.unlink(wname, dir_fd=fd)
                return True
            except FileNotFoundError:
                return False

    def make(self, rel: str, make: Callable[[int, str], T]) -> tuple[T, bool]:
        """``make(dir_fd, name)`` a new object at ``rel``; and whether an overlay whiteout (0/0,
        another overlay's spelling) was there and had to go first."""
        with self.layers.at(self.layer, rel) as (fd, n):
            try:
                return make(fd, n), False
            except FileExistsError:
                if not self.clear_overlay_whiteout(rel):
                    raise
                return make(fd, n), True

    def clear_overlay_whiteout(self, rel: str) -> bool:
        """Remove the overlay whiteout (a 0/0 char device, as kernel overlayfs and fuse-overlayfs
        write them) at ``rel``, if that is what is there: a name is being made in its place."""
        with self.layers.at(self.layer, rel) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not whiteout.is_overlay_whiteout(st):
                return False
            os.unlink(name, dir_fd=fd)
            return True

    def exchange(self, a: str, b: str) -> None:
        """Swap the upper objects at ``a`` and ``b`` in one step (renameat2 RENAME_EXCHANGE)."""
        with self.layers.at(self.layer, a) as (afd, an), self.layers.at(self.layer, b) as (bfd, bn):
            if _libc.renameat2(afd, os.fsencode(an), bfd, os.fsencode(bn), RENAME_EXCHANGE) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), a)

    @staticmethod
    def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on an upper file (os has only posix_fallocate, which takes no mode)."""
        if _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def clear_markers(self, rel: str) -> None:
        """Empty the upper directory ``rel``, which holds only markers (the merged dir is empty)."""
        with self.layers.at(self.layer, rel) as (fd, n):
            dfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            for marker in os.listdir(dfd):
                remove_entry(dfd, marker)
        finally:
            os.close(dfd)

    # -- owners -----------------------------------------------------------------------------------
    @staticmethod
    def new_gid(parent_st: os.stat_result, gid: int) -> tuple[int, bool]:
        """The group a new object in a directory gets (a setgid directory's own, else the caller's
        ``gid``), and whether the directory is setgid."""
        setgid = bool(parent_st.st_mode & stat.S_ISGID)
        return (parent_st.st_gid if setgid else gid), setgid

    def own_file(self, real: int, mode: int, parent_st: os.stat_result, uid: int, gid: int) -> os.stat_result:
        """A new file, open at ``real``, belongs to the caller (see ``own``); its stat. A chown
        that would change nothing is not made, and one that is made keeps the setuid bits asked
        for (a chown drops them)."""
        st = os.fstat(real)
        if self.owners_xattr:
            self._record(f"/proc/self/fd/{real}", st, uid, self.new_gid(parent_st, gid)[0], mode)
            return os.fstat(real)
        if not self.as_root:
            return st
        uid, gid = self.layers.host_ids(uid, self.new_gid(parent_st, gid)[0])
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(real, uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(real, stat.S_IMODE(mode))
            st = os.fstat(real)
        return st

    def own(self, rel: str, parent_st: os.stat_result, uid: int, gid: int, is_dir: bool) -> None:
        """New objects belong to the caller; a setgid directory passes on its group (and, to
        directories, the bit), as the kernel does."""
        if self.owners_xattr:
            gid, setgid = self.new_gid(parent_st, gid)
            with self.layers.at(self.layer, rel) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                mode = st.st_mode | (stat.S_ISGID if is_dir and setgid else 0)
                self._record(f"/proc/self/fd/{fd}/{name}", st, uid, gid, mode)
            return
        if not self.as_root:
            return
        gid, setgid = self.new_gid(parent_st, gid)
        uid, gid = self.layers.host_ids(uid, gid)
        with self.layers.at(self.layer, rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            if is_dir and setgid:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_ISGID, dir_fd=fd)

    def _record(self, path: str, st: os.stat_result, uid: int, gid: int, mode: int) -> None:
        """A new object's owner and mode into its override xattr, unless the real object says
        them already (the daemon's own, with bits its owner can use); other types cannot hold it."""
        if not owners.can_hold(st.st_mode):
            return
        if self.layers.container_ids(st) != (uid, gid) or owners.disk_mode(mode) != stat.S_IMODE(mode):
            owners.write(path, uid, gid, stat.S_IFMT(st.st_mode) | stat.S_IMODE(mode))

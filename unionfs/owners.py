"""Owners and modes kept in an xattr (``-o xattr_permissions=2``, fuse-overlayfs's option).

A rootless daemon cannot give files away: the layers an ordinary user extracts, and everything its
upper gets, belong to the user. What each object should look like is then kept in
``user.containers.override_stat`` (containers-storage's convention, read by fuse-overlayfs)::

    <uid>:<gid>:<mode %04o, setuid/setgid/sticky included>[:<type>]
    type: file | dir | symlink | pipe | socket | block-<major>-<minor> | char-<major>-<minor>

and the union reports that owner, mode and type instead of the real ones: a chown or chmod through
the mount changes the xattr, a new object that is not the daemon's own gets one. The real file
keeps its owner's read and write bits (and search, for a directory), so the user can always read
and remove it. Only regular files and directories can carry ``user.*`` xattrs: other objects
show their real owner. The key itself is hidden from the mount's xattr calls.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

XATTR = "user.containers.override_stat"
_TYPES = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "pipe": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}


class Stat:
    """An ``os.stat_result`` as the override says it: owner, mode and (for a device kept as a
    file) type and device number replaced; everything else the real object's."""

    __slots__ = ("_real", "st_uid", "st_gid", "st_mode", "st_rdev")

    def __init__(self, real: os.stat_result, uid: int, gid: int, mode: int, rdev: int) -> None:
        self._real = real
        self.st_uid, self.st_gid, self.st_mode, self.st_rdev = uid, gid, mode, rdev

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def parse(raw: bytes, real_mode: int) -> tuple[int, int, int, int] | None:
    """(uid, gid, st_mode, rdev) that ``raw`` states for an object whose real st_mode is
    ``real_mode``; None if it is not an override (an unreadable value is ignored, never fatal)."""
    try:
        fields = raw.decode().split(":")
        if len(fields) not in (3, 4):
            return None
        uid, gid, perms = int(fields[0]), int(fields[1]), int(fields[2], 8) & 0o7777
        kind, rdev = stat.S_IFMT(real_mode), 0
        if len(fields) == 4:
            if fields[3] in _TYPES:
                kind = _TYPES[fields[3]]
            else:
                name, major, minor = fields[3].split("-")
                kind = {"char": stat.S_IFCHR, "block": stat.S_IFBLK}[name]
                rdev = os.makedev(int(major), int(minor))
        return uid, gid, kind | perms, rdev
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def encode(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    """The value for owner ``uid``:``gid`` and st_mode ``mode`` (a device: with its number)."""
    text = f"{uid}:{gid}:{stat.S_IMODE(mode):04o}"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        text += f":{'char' if stat.S_ISCHR(mode) else 'block'}-{os.major(rdev)}-{os.minor(rdev)}"
    return text.encode()


def can_hold(mode: int) -> bool:
    """Can an object of this (real) type carry the xattr?"""
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def disk_mode(mode: int) -> int:
    """The permission bits the real object gets for a wanted st_mode ``mode``."""
    return stat.S_IMODE(mode) | (0o700 if stat.S_ISDIR(mode) else 0o600)


def read(path: str) -> bytes | None:
    """The raw override of the file or directory at ``path``; None if it has none."""
    try:
        return os.getxattr(path, XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


class IdMap:
    """fuse-overlayfs's ``uidmapping=``/``gidmapping=``: container:host:size triples joined by
    ``:`` (empty tokens ignored, as its strtok does). Owners on disk are host ids; the mount shows
    their container ids (an unmapped one as the overflow id, 65534, as the kernel shows it)."""

    OVERFLOW = 65534

    def __init__(self, triples: list[tuple[int, int, int]]) -> None:
        self.triples = triples

    @classmethod
    def parse(cls, text: str) -> IdMap:
        try:
            numbers = [int(t) for t in text.split(":") if t]
        except ValueError:
            raise ValueError(f"{text!r}: container:host:size numbers expected") from None
        if not numbers or len(numbers) % 3 or any(n < 0 for n in numbers) or 0 in numbers[2::3]:
            raise ValueError(f"{text!r}: container:host:size triples expected")
        return cls([(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)])

    def to_container(self, host: int) -> int:
        for inside, outside, size in self.triples:
            if outside <= host < outside + size:
                return inside + host - outside
        return self.OVERFLOW

    def to_host(self, inside: int) -> int:
        """The host id of a container id; OSError EINVAL if it has none (as chown(2) says)."""
        for first, outside, size in self.triples:
            if first <= inside < first + size:
                return outside + inside - first
        raise OSError(errno.EINVAL, f"id {inside} is not mapped")


def view(
    real: os.stat_result, where: str, xattr: bool = True, uids: IdMap | None = None, gids: IdMap | None = None
) -> os.stat_result:
    """``real`` (the lstat of the object at ``where``) as its override says (``xattr``), or else
    with its owner's container ids (``uids``/``gids``): a ``Stat``, which reads as an
    ``os.stat_result``."""
    if xattr and can_hold(real.st_mode):
        raw = read(where)
        found = parse(raw, real.st_mode) if raw is not None else None
        if found is not None:
            return Stat(real, *found)  # type: ignore[return-value]  # (duck-typed: every st_* field)
    if uids is None and gids is None:
        return real
    uid = uids.to_container(real.st_uid) if uids is not None else real.st_uid
    gid = gids.to_container(real.st_gid) if gids is not None else real.st_gid
    return Stat(real, uid, gid, real.st_mode, real.st_rdev)  # type: ignore[return-value]


def write(where: str, uid: int, gid: int, mode: int, rdev: int = 0) -> None:
    """Record owner and st_mode (``rdev``: a device's number) for the regular file or directory
    at ``where``, and give the real object the bits its owner needs."""
    os.setxattr(where, XATTR, encode(uid, gid, mode, rdev))
    os.chmod(where, disk_mode(mode))

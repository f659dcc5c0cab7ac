"""Owners an ordinary user cannot give files: ``user.containers.override_stat``.

Without root, a layer's files all belong to the user who extracts them, and device nodes cannot be
made. What the tar said is kept in the xattr that containers-storage writes and fuse-overlayfs reads
(``idtools.FormatContainersOverrideXattrDevice``), which strata's union fs reports in their place::

    <uid>:<gid>:<mode %04o, setuid/setgid/sticky included>[:<type>]
    type: file | dir | symlink | pipe | socket | block-<major>-<minor> | char-<major>-<minor>

Only regular files and directories can carry ``user.*`` xattrs (the kernel's rule), so devices are
kept as empty regular files; a symlink's or fifo's owner other than the user's is lost, as with
fuse-overlayfs. The file on disk keeps the owner's read and write bits (and search, for a
directory), so that the user can always read, extract into and remove it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

XATTR = "user.containers.override_stat"

_TYPES = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "pipe": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}


@dataclass(frozen=True)
class Override:
    uid: int
    gid: int
    mode: int  # permission bits with setuid/setgid/sticky
    kind: int | None = None  # S_IFMT bits, None: the real file's
    rdev: int = 0

    def encode(self) -> bytes:
        text = f"{self.uid}:{self.gid}:{self.mode:04o}"
        if self.kind in (stat.S_IFCHR, stat.S_IFBLK):
            text += f":{'char' if self.kind == stat.S_IFCHR else 'block'}-{os.major(self.rdev)}-{os.minor(self.rdev)}"
        elif self.kind is not None:
            text += ":" + next(name for name, kind in _TYPES.items() if kind == self.kind)
        return text.encode()


def decode(raw: bytes) -> Override | None:
    """The override an xattr value states, or None if it is not one (never raises)."""
    try:
        fields = raw.decode().split(":")
        if len(fields) not in (3, 4):
            return None
        uid, gid, mode = int(fields[0]), int(fields[1]), int(fields[2], 8)
        if len(fields) == 3:
            return Override(uid, gid, mode & 0o7777)
        kind = fields[3]
        if kind in _TYPES:
            return Override(uid, gid, mode & 0o7777, _TYPES[kind])
        name, major, minor = kind.split("-")
        dev = {"char": stat.S_IFCHR, "block": stat.S_IFBLK}[name]
        return Override(uid, gid, mode & 0o7777, dev, os.makedev(int(major), int(minor)))
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def disk_mode(mode: int, is_dir: bool) -> int:
    """The mode a rootless extraction gives the file itself: the owner can always use it."""
    return mode | (0o700 if is_dir else 0o600)

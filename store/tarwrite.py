"""Write a directory tree as a reproducible layer tar (the inverse of ``extract``).

Reproducible by construction: entries sorted by name with whiteouts (``.wh.*``) before their
siblings (OCI layer.md SHOULD), PAX format, no user or group names, hard links detected by inode,
whiteouts dated 0 (their own times say nothing: buildkit#3168). The same tree therefore always gives
the same bytes and the same diff_id.

Rootless, a tree is all the user's: an object that keeps its owner in the override xattr gets that
owner, any other is root's (the user is root in its containers), so what a rootless container made as
root, or a build copied in as root's, is root's in the tar.

A tree may keep some files' data elsewhere (a union's upper whose metadata-only copy-ups left the
data in a lower layer): ``data_of(path)`` then names the file whose bytes to write, and ``private``
xattrs (the union's record of it) are left out. The caller knows such trees; the store does not.

Caveats: paths are handed to ``os.lstat``/``open`` whole, so trees deeper than PATH_MAX fail.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import BinaryIO

from . import owners

_COPY = 1 << 20
_ROOTLESS = os.geteuid() != 0
_USER = (os.getuid(), os.getgid())


def _sort_key(name: str) -> tuple[int, str]:
    return (0 if name.startswith(".wh.") else 1, name)


def walk(root: str, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relative path, lstat)`` for every entry under ``root`` in layer order."""
    here = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(here), key=_sort_key):
        path = f"{rel}/{name}" if rel else name
        st = os.lstat(os.path.join(root, path))
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk(root, path)


def tarinfo_for(
    full: str, rel: str, st: os.stat_result, links: dict[tuple[int, int], str], private: Collection[str] = ()
) -> tarfile.TarInfo:
    """The tar header for ``rel``, whose object is at ``full`` (lstat ``st``); xattrs named in
    ``private`` are left out."""
    info = tarfile.TarInfo(rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    if _ROOTLESS:  # the user's own objects are root's: what its containers and inspection mounts show
        info.uid = 0 if st.st_uid == _USER[0] else info.uid
        info.gid = 0 if st.st_gid == _USER[1] else info.gid
    info.uname = info.gname = ""
    info.mtime = 0 if os.path.basename(rel).startswith(".wh.") else st.st_mtime_ns // 1_000_000_000
    mode = st.st_mode
    if stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
        else:
            if st.st_nlink > 1:
                links[key] = rel
            info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:  # sockets are not representable in tar: skipped, as GNU tar does
        raise ValueError("socket")
    xattrs = {}
    try:
        for xname in sorted(os.listxattr(full, follow_symlinks=False)):
            if xname in private:
                continue
            value = os.getxattr(full, xname, follow_symlinks=False)
            if xname == owners.XATTR and (override := owners.decode(value)) is not None:
                _apply(info, override)  # what a rootless store keeps for the owner it could not give
                continue
            xattrs["SCHILY.xattr." + xname] = value.decode("utf-8", "surrogateescape")
    except OSError:
        pass
    info.pax_headers = xattrs
    return info


def _apply(info: tarfile.TarInfo, override: owners.Override) -> None:
    info.uid, info.gid, info.mode = override.uid, override.gid, override.mode
    if override.kind in (stat.S_IFCHR, stat.S_IFBLK) and info.type == tarfile.REGTYPE:
        info.type = tarfile.CHRTYPE if override.kind == stat.S_IFCHR else tarfile.BLKTYPE
        info.size = 0
        info.devmajor, info.devminor = os.major(override.rdev), os.minor(override.rdev)


DataOf = Callable[[str], str]  # a regular file's path -> the path of the file holding its bytes


def write_tree(root: str, out: BinaryIO, data_of: DataOf | None = None, private: Collection[str] = ()) -> None:
    """Write the tree at ``root`` to ``out`` as a PAX tar, end marker included (``data_of``,
    ``private``: see the module's doc)."""
    write_entries(((rel, st, os.path.join(root, rel)) for rel, st in walk(root)), out, data_of, private)


def write_entries(
    entries: Iterable[tuple[str, os.stat_result, str]],
    out: BinaryIO,
    data_of: DataOf | None = None,
    private: Collection[str] = (),
) -> None:
    """Write (name in the tar, lstat, real path) entries, in the order given, as a PAX tar."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.copybufsize = _COPY  # type: ignore[attr-defined]  # real attribute, missing from typeshed
        for rel, st, full in entries:
            try:
                info = tarinfo_for(full, rel, st, links, private)
            except ValueError:
                continue
            if info.type == tarfile.REGTYPE and info.size:  # (an empty one is not opened: a whiteout
                with open(data_of(full) if data_of else full, "rb") as f:  # marker may be mode 0)
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

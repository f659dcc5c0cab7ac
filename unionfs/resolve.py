"""Resolve names across the layers of a union: upper first, then lowers in order (pure: no FUSE).

A merged directory is the list of real directories that make it up, top-most first, cut after the
first opaque one. Looking up a name in it walks those directories: a whiteout hides the name in the
layers below; the first non-directory found is the answer (a non-dir is always opaque); directories
found accumulate until one is opaque or a non-directory below is reached. Everything works on
directory fds (``openat`` style), so path length never matters.

Caveats: the fds in a ``Merged`` are owned by the caller (``close()`` them); no caching here.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from . import whiteout

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Found:
    """What a name resolves to: the layer and stat of the object that shows, plus, for a directory,
    the real directories (layer index, fd) that merge into it, top-most first."""

    layer: int
    st: os.stat_result
    dirs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    def close(self) -> None:
        for _layer, fd in self.dirs:
            os.close(fd)
        self.dirs = []


def root(layer_paths: list[str]) -> Found:
    """The merged root of ``layer_paths`` (top-most first: the upper, if any, then the lowers)."""
    dirs: list[tuple[int, int]] = []
    for i, path in enumerate(layer_paths):
        fd = os.open(path, _DIR_FLAGS)
        dirs.append((i, fd))
        if whiteout.is_opaque(fd):
            break
    return Found(0, os.fstat(dirs[0][1]), dirs)


def lookup(parent: Found, name: str) -> Found | None:
    """Resolve ``name`` in the merged directory ``parent``; None when absent or whited out."""
    if whiteout.is_special(name) or name in (".", ".."):
        return None
    if len(os.fsencode(name)) > 255:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
    found: Found | None = None
    for layer, dir_fd in parent.dirs:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and whiteout.is_overlay_whiteout(st):
            break
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                if found is None:
                    return Found(layer, st)
                break  # a non-dir below a dir is hidden by it
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            if found is None:
                found = Found(layer, st, [])
            found.dirs.append((layer, fd))
            if whiteout.is_opaque(fd):
                break
        if whiteout.is_whited_out(dir_fd, name):
            break  # hides the name in every layer below this one
    return found


def listdir(merged: Found) -> list[tuple[str, int]]:
    """Names in a merged directory with the layer each comes from: de-duplicated, whiteouts applied,
    markers hidden; upper names first, in each layer's own order."""
    seen: dict[str, int] = {}
    hidden: set[str] = set()
    for layer, dir_fd in merged.dirs:
        names = os.listdir(dir_fd)
        here_hidden = set()
        for name in names:
            if name == whiteout.OPAQUE:
                continue
            if whiteout.is_special(name):
                here_hidden.add(name[len(whiteout.PREFIX):])
                continue
            if name in seen or name in hidden:
                continue
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if whiteout.is_overlay_whiteout(st):
                here_hidden.add(name)
                continue
            seen[name] = layer
        hidden |= here_hidden
    return list(seen.items())

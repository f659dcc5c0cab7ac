"""The layer dirs of one union and name resolution across them (pure: no FUSE).

Layer 0 is the upper when there is one, then the lowers top-most first. Every object is named by
(layer, rel): its path relative to that layer's root, reached from the layer's root fd. Short paths
are handed to the kernel relative to that fd (one syscall); paths near PATH_MAX are walked one
component at a time with ``O_NOFOLLOW``, so any legal length works. Only components that were
directories in that layer are ever walked (a merged directory lists exactly those), and lowers never
change, so a symlink in a layer is never followed by resolution.

Resolution (kernel overlayfs semantics): a merged directory is the list of layers whose directory of
that path merges into it, top-most first, cut after the first opaque one. Looking a name up walks
those layers: a whiteout hides the name below it; the first non-directory found is the answer; further
directories merge until one is opaque.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import whiteout

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHORT = 3000  # relative paths below this go to the kernel whole; PATH_MAX is 4096


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


@dataclass
class Resolved:
    layer: int  # where the object shows
    st: os.stat_result
    dir_layers: list[int]  # for a directory: the layers that merge into it, top-most first

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class LayerSet:
    def __init__(self, upper: str | None, lowers: list[str]) -> None:
        self.paths = ([upper] if upper else []) + list(lowers)
        self.upper: int | None = 0 if upper else None
        self.fds: list[int] = []
        try:
            for path in self.paths:
                self.fds.append(os.open(path, _DIR))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    @contextmanager
    def at(self, layer: int, rel: str) -> Iterator[tuple[int, str]]:
        """Yield (dir fd, name) naming ``rel`` in ``layer`` for the ``*at`` syscalls."""
        root = self.fds[layer]
        if not rel:
            yield root, "."
            return
        if len(rel) < _SHORT:
            yield root, rel
            return
        parts = rel.split("/")
        fd = os.dup(root)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def lstat(self, layer: int, rel: str) -> os.stat_result | None:
        with self.at(layer, rel) as (fd, name):
            try:
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                if e.errno == errno.ENAMETOOLONG:  # e.g. the whiteout of a 252-byte name: cannot exist
                    return None
                raise

    def is_opaque(self, layer: int, rel: str) -> bool:
        if self.lstat(layer, join(rel, whiteout.OPAQUE)) is not None:
            return True
        with self.at(layer, rel) as (fd, name):
            path = f"/proc/self/fd/{fd}/{name}"
            for key in ("trusted.overlay.opaque", "user.overlay.opaque"):
                try:
                    if os.getxattr(path, key, follow_symlinks=False) == b"y":
                        return True
                except OSError:
                    continue
        return False

    def root_dirs(self) -> list[int]:
        dirs = []
        for layer in range(len(self.paths)):
            dirs.append(layer)
            if self.is_opaque(layer, ""):
                break
        return dirs

    def resolve(self, dir_layers: list[int], parent_rel: str, name: str) -> Resolved | None:
        """Look ``name`` up in the merged directory ``parent_rel`` made of ``dir_layers``."""
        if len(os.fsencode(name)) > 255:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
        if whiteout.is_special(name):
            return None
        rel = join(parent_rel, name)
        found: Resolved | None = None
        for layer in dir_layers:
            st = self.lstat(layer, rel)
            if st is not None:
                if whiteout.is_overlay_whiteout(st) and layer != self.upper:
                    break
                if not stat.S_ISDIR(st.st_mode):
                    if found is None:
                        return Resolved(layer, st, [])
                    break  # a non-directory below a directory is hidden by it
                if found is None:
                    found = Resolved(layer, st, [])
                found.dir_layers.append(layer)
                if self.is_opaque(layer, rel):
                    break
            if self.lstat(layer, join(parent_rel, whiteout.whiteout_name(name))) is not None:
                break  # hides the name in every layer below this one
        return found

    def listdir(self, dir_layers: list[int], rel: str) -> list[str]:
        """Names in a merged directory: de-duplicated, whiteouts applied, markers hidden."""
        seen: dict[str, None] = {}
        hidden: set[str] = set()
        for layer in dir_layers:
            with self.at(layer, rel) as (fd, name):
                dfd = os.open(name, _DIR, dir_fd=fd)
            try:
                here_hidden = set()
                with os.scandir(dfd) as it:
                    for item in it:
                        entry = item.name
                        if entry == whiteout.OPAQUE:
                            continue
                        if whiteout.is_special(entry):
                            here_hidden.add(entry[len(whiteout.PREFIX):])
                            continue
                        if entry in seen or entry in hidden:
                            continue
                        # overlay whiteouts (0/0 char devices) only count in lowers; d_type saves a stat
                        if layer != self.upper and not (item.is_dir(follow_symlinks=False)
                                                        or item.is_file(follow_symlinks=False)
                                                        or item.is_symlink()):
                            if whiteout.is_overlay_whiteout(item.stat(follow_symlinks=False)):
                                here_hidden.add(entry)
                                continue
                        seen[entry] = None
                hidden |= here_hidden
            finally:
                os.close(dfd)
        return list(seen)

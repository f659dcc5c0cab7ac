"""The layer dirs of one union and name resolution across them (pure: no FUSE).

Layer 0 is the upper when there is one, then the lowers top-most first. Every object is named by
(layer, rel): its path relative to that layer's root, reached from the layer's root fd. Short paths
are handed to the kernel relative to that fd (one syscall); paths near PATH_MAX are walked one
component at a time with ``O_NOFOLLOW``, so any legal length works. Only components that were
directories in that layer are ever walked (a merged directory lists exactly those), and lowers never
change, so a symlink in a layer is never followed by resolution.

A lower layer is reached through a read-only, noatime clone of its mount where this process may make
one (``privatemount``), as kernel overlayfs reaches its layers: nothing done through the union writes
a layer or moves an atime in it, a passthrough read included. Elsewhere the directory itself, whose
files are opened O_NOATIME where allowed (``copydata.open_lower``; a passthrough read does not heed
it: the kernel opens the backing file with the caller's flags).

Lower layers never change under a mount, so each lower directory is read once (one ``scandir``) and
kept: names, whiteouts, the opaque flag and, lazily, the stat of each entry. Lookups that miss in a
lower then cost no syscall at all. The upper is always asked directly: this process changes it.

Resolution (kernel overlayfs semantics): a merged directory is the list of layers whose directory of
that path merges into it, top-most first, cut after the first opaque one. Looking a name up walks
those layers: a whiteout hides the name below it; the first non-directory found is the answer; further
directories merge until one is opaque.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from . import metacopy, owners, privatemount, whiteout

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # a layer given through a symlink is that directory
_SHORT = 3000  # relative paths below this go to the kernel whole; PATH_MAX is 4096


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


@dataclass
class _LowerDir:
    """What one directory of a lower layer holds (read once: lowers are immutable)."""

    names: dict[str, bool]  # name -> "is a plain dir, file or symlink" (False: stat it to know)
    stats: dict[str, os.stat_result]
    opaque: bool


@dataclass
class Resolved:
    layer: int  # where the object shows
    st: os.stat_result
    dir_layers: list[int]  # for a directory: the layers that merge into it, top-most first

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class At:
    """A (dir fd, name) pair from ``LayerSet.at``; the fd is closed on exit when it was opened for
    it (a long path walked one component at a time). A class, not a generator: it is on every
    request's path."""

    __slots__ = ("fd", "name", "owned")

    def __init__(self, fd: int, name: str, owned: bool) -> None:
        self.fd, self.name, self.owned = fd, name, owned

    def __enter__(self) -> tuple[int, str]:
        return self.fd, self.name

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            os.close(self.fd)


class LayerSet:
    def __init__(
        self,
        upper: str | None,
        lowers: list[str],
        owners_xattr: bool = False,
        raw: bool = False,
        uids: owners.IdMap | None = None,
        gids: owners.IdMap | None = None,
    ) -> None:
        self.owners_xattr = owners_xattr  # stats as ``owners`` overrides say (xattr_permissions=2)
        self.raw = raw  # one layer as it is stored: its whiteouts and opaque markers are files, shown
        self.uids, self.gids = uids, gids  # uidmapping=/gidmapping=: owners shown as container ids
        self._viewed = owners_xattr or uids is not None or gids is not None  # (stats not as they are)
        self.paths = ([upper] if upper else []) + list(lowers)
        self.upper: int | None = 0 if upper else None
        self.fds: list[int] = []
        self.roots: list[str] = []  # where each layer is, as metacopy records and journal notes say
        self._lower: dict[tuple[int, str], _LowerDir | None] = {}
        try:
            for i, path in enumerate(self.paths):
                fd = os.open(path, _ROOT)
                self.fds.append(fd)
                self.roots.append(os.readlink(f"/proc/self/fd/{fd}"))  # (the dir open, whatever the cwd)
                if i != self.upper and (private := privatemount.clone(fd)) is not None:
                    self.fds[-1] = private
                    os.close(fd)
        except BaseException:
            self.close()
            raise
        # the layers whose files may be metacopies: the upper, and lowers that were uppers (``metacopy``)
        self.metacopy_layers = frozenset(
            i for i, fd in enumerate(self.fds) if i == self.upper or (not raw and metacopy.marked(fd))
        )

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def at(self, layer: int, rel: str) -> At:
        """(dir fd, name) naming ``rel`` in ``layer`` for the ``*at`` syscalls, as a context
        manager: ``with layers.at(layer, rel) as (fd, name): ...``."""
        root = self.fds[layer]
        if not rel:
            return At(root, ".", False)
        if len(rel) < _SHORT:
            return At(root, rel, False)
        parts = rel.split("/")
        fd = os.dup(root)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return At(fd, parts[-1], True)

    def _lower_dir(self, layer: int, rel: str) -> _LowerDir | None:
        key = (layer, rel)
        if key in self._lower:
            return self._lower[key]
        info: _LowerDir | None = None
        try:
            with self.at(layer, rel) as (fd, name):
                dfd = os.open(name, _DIR, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            dfd = -1
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENAMETOOLONG):
                raise
            dfd = -1
        if dfd >= 0:
            try:
                with os.scandir(dfd) as it:
                    names = {
                        e.name: e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False) or e.is_symlink()
                        for e in it
                    }
                opaque = whiteout.OPAQUE in names
                for key_ in ("trusted.overlay.opaque", "user.overlay.opaque"):
                    if not opaque:
                        try:
                            opaque = os.getxattr(dfd, key_) == b"y"
                        except OSError:
                            pass
                info = _LowerDir(names, {}, opaque)
            finally:
                os.close(dfd)
        self._lower[key] = info
        return info

    def has(self, layer: int, rel: str) -> bool:
        """Does ``rel`` exist in ``layer`` (as anything)? Free for lowers after the first look."""
        if layer != self.upper and rel:
            parent, _, name = rel.rpartition("/")
            info = self._lower_dir(layer, parent)
            return info is not None and name in info.names
        return self.lstat(layer, rel) is not None

    def lstat(self, layer: int, rel: str) -> os.stat_result | None:
        if layer != self.upper and rel:
            parent, _, name = rel.rpartition("/")
            info = self._lower_dir(layer, parent)
            if info is None or name not in info.names:
                return None
            st = info.stats.get(name)
            if st is None:
                st = self._lstat(layer, rel)
                if st is not None:
                    info.stats[name] = st
            return st
        return self._lstat(layer, rel)

    def real_lstat(self, layer: int, rel: str) -> os.stat_result | None:
        """The object's own lstat, whatever an owners override or id map says (what a copy copies)."""
        return self._lstat(layer, rel, real=True) if self._viewed else self.lstat(layer, rel)

    def view_fd(self, st: os.stat_result, fd: int) -> os.stat_result:
        """``st``, the fstat of ``fd``, as an owners override or the id maps say."""
        if not self._viewed:
            return st
        return owners.view(st, f"/proc/self/fd/{fd}", self.owners_xattr, self.uids, self.gids)

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The host ids a chown to the container's ``uid``/``gid`` gives (-1: unchanged)."""
        return (
            self.uids.to_host(uid) if self.uids is not None and uid != -1 else uid,
            self.gids.to_host(gid) if self.gids is not None and gid != -1 else gid,
        )

    def container_ids(self, st: os.stat_result) -> tuple[int, int]:
        """The owner of the real object ``st`` as the container sees it (the id maps applied)."""
        return (
            self.uids.to_container(st.st_uid) if self.uids is not None else st.st_uid,
            self.gids.to_container(st.st_gid) if self.gids is not None else st.st_gid,
        )

    def _lstat(self, layer: int, rel: str, real: bool = False) -> os.stat_result | None:
        with self.at(layer, rel) as (fd, name):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                if e.errno == errno.ENAMETOOLONG:  # e.g. the whiteout of a 252-byte name: cannot exist
                    return None
                raise
            if self._viewed and not real:
                return owners.view(st, f"/proc/self/fd/{fd}/{name}", self.owners_xattr, self.uids, self.gids)
            return st

    def is_opaque(self, layer: int, rel: str) -> bool:
        if self.raw:
            return False
        if layer != self.upper:
            info = self._lower_dir(layer, rel)
            return info is not None and info.opaque
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

    def resolve(
        self, dir_layers: list[int], parent_rel: str, name: str, no_upper_whiteouts: bool = False
    ) -> Resolved | None:
        """Look ``name`` up in the merged directory ``parent_rel`` made of ``dir_layers``;
        ``no_upper_whiteouts``: its upper part is known to hold none (not asked for one)."""
        if len(name) > 63 and len(os.fsencode(name)) > 255:  # (a code point is at most 4 bytes)
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
        if whiteout.is_special(name) and not self.raw:
            return None
        rel = join(parent_rel, name)
        found: Resolved | None = None
        last = len(dir_layers) - 1
        for i, layer in enumerate(dir_layers):
            st = self.lstat(layer, rel)
            if st is not None:
                if whiteout.is_overlay_whiteout(st) and not self.raw:  # in the upper too: other writers make them
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
            if (
                i < last
                and not (no_upper_whiteouts and layer == self.upper)
                and self.has(layer, join(parent_rel, whiteout.whiteout_name(name)))
            ):
                break  # hides the name in every layer below this one (the bottom one has none)
        return found

    def _names(self, layer: int, rel: str) -> list[tuple[str, bool]]:
        """(name, is a plain dir/file/symlink) for one layer's directory. An upper written by
        others (kernel overlayfs, fuse-overlayfs) may hold overlay whiteouts too."""
        if layer != self.upper:
            info = self._lower_dir(layer, rel)
            return list(info.names.items()) if info else []
        with self.at(layer, rel) as (fd, name):
            dfd = os.open(name, _DIR, dir_fd=fd)
        try:
            with os.scandir(dfd) as it:
                return [
                    (
                        item.name,
                        item.is_dir(follow_symlinks=False) or item.is_file(follow_symlinks=False) or item.is_symlink(),
                    )
                    for item in it
                ]
        finally:
            os.close(dfd)

    def listdir(self, dir_layers: list[int], rel: str) -> list[str]:
        """Names in a merged directory: de-duplicated, whiteouts applied, markers hidden."""
        if self.raw:
            return [entry for entry, _ in self._names(dir_layers[0], rel)] if dir_layers else []
        seen: dict[str, None] = {}
        hidden: set[str] = set()
        for layer in dir_layers:
            here_hidden = set()  # a whiteout hides names in the layers below, not in its own
            for entry, plain in self._names(layer, rel):
                if entry == whiteout.OPAQUE:
                    continue
                if whiteout.is_special(entry):
                    here_hidden.add(entry[len(whiteout.PREFIX) :])
                    continue
                if entry in seen or entry in hidden:
                    continue
                if not plain:  # a device, fifo or socket: maybe an overlay whiteout (0/0)
                    st = self.lstat(layer, join(rel, entry))
                    if st is not None and whiteout.is_overlay_whiteout(st):
                        here_hidden.add(entry)
                        continue
                seen[entry] = None
            hidden |= here_hidden
        return list(seen)

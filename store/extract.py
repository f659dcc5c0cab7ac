"""Extract one layer tar into an empty layer dir, never writing outside it.

The layer dir holds the layer exactly as its tar says: whiteouts stay as OCI ``.wh.NAME`` and
``.wh..wh..opq`` files (they are applied by whoever stacks layers: the union filesystem, or a
flattening export). Modes (setuid too), owners, times, xattrs, hard links, symlinks, fifos and
device nodes are kept when running as root.

Safety: every path is resolved one component at a time from the layer dir's fd with
``O_NOFOLLOW | O_DIRECTORY``, so a symlink in the layer can never be used as a path to escape, and
paths longer than PATH_MAX work. ``..`` components, absolute names, hard links that leave the layer
and whiteouts of ``.``/``..`` are rejected.

Without root, owners and device nodes are kept in ``user.containers.override_stat`` (``owners``:
the containers-storage convention, which the union fs reports); xattrs outside ``user.*`` are dropped.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from . import owners
from .errors import BadInput, UnsafeTar
from .tarstream import BLOCKDEV, CHAR, DIR, FIFO, HARDLINK, REGULAR, SYMLINK, TarEntry, TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_name(name: str, where: str) -> tuple[str, ...]:
    """Split a tar member name into safe components; ``()`` is the layer root."""
    if name.startswith("/"):
        raise UnsafeTar(f"{where}: absolute path {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeTar(f"{where}: path {name!r} leaves the layer ('..')")
    for part in parts:
        if len(os.fsencode(part)) > 255:
            raise BadInput(f"{where}: name too long in {name!r}")
    return parts


class _Extractor:
    def __init__(self, root: str, where: str, as_root: bool) -> None:
        self.where = where
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.as_root = as_root
        # fds of the directories from the layer dir down to the last one entered (not the root's):
        # the next entry's directory is opened from the deepest one they share, not from the top
        self._names: list[str] = []
        self._fds: list[int] = []
        self.dirs: dict[tuple[str, ...], TarEntry] = {}
        self.size = 0

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    def _drop_cache(self, depth: int = 0) -> None:
        """Close the entered directories below the first ``depth``."""
        while len(self._fds) > depth:
            os.close(self._fds.pop())
            self._names.pop()

    # -- path resolution --------------------------------------------------------------------------
    def _enter(self, fd: int, part: str, create: bool, parts: tuple[str, ...]) -> int:
        """Open the directory ``part`` of ``fd`` (a new fd), never through a symlink; ``parts``: the
        path it ends, for the error."""
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, 0o755, dir_fd=fd)
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise UnsafeTar(f"{self.where}: {'/'.join(parts)!r} goes through a symlink or non-directory") from None
            raise

    def _open_dir(self, parts: tuple[str, ...], create: bool) -> int:
        """Open the directory ``parts`` (a new fd) without following any symlink on the way."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                nxt = self._enter(fd, part, create, parts)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent_fd(self, parent: tuple[str, ...], create: bool = True) -> int:
        """An fd of the directory ``parent`` (made if missing and ``create``), entered one component at
        a time as ``_open_dir`` does, from the deepest directory it shares with the last one entered;
        it stays open (the caller does not close it) until another is entered."""
        shared = 0
        while shared < min(len(parent), len(self._names)) and parent[shared] == self._names[shared]:
            shared += 1
        self._drop_cache(shared)
        for part in parent[shared:]:
            self._fds.append(self._enter(self._fds[-1] if self._fds else self.root_fd, part, create, parent))
            self._names.append(part)
        return self._fds[-1] if self._fds else self.root_fd

    # -- entries ----------------------------------------------------------------------------------
    def add(self, entry: TarEntry, reader: TarReader) -> None:
        parts = split_name(entry.name, self.where)
        if not parts:
            if entry.type != DIR:
                raise UnsafeTar(f"{self.where}: the layer root is not a directory")
            self.dirs[()] = entry
            self._owner_xattrs(self.root_fd, None, entry)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX) and base != OPAQUE:
            if base[len(WHITEOUT_PREFIX) :] in ("", ".", ".."):
                raise UnsafeTar(f"{self.where}: invalid whiteout {entry.name!r}")
            if entry.type != REGULAR:
                raise BadInput(f"{self.where}: whiteout {entry.name!r} is not a regular file")
        pfd = self.parent_fd(parts[:-1])
        if entry.type == DIR:
            try:
                os.mkdir(base, 0o700, dir_fd=pfd)
            except FileExistsError:  # a dir merges with a dir; anything else goes
                self._clear(pfd, parts, keep_dir=True)
                try:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                except FileExistsError:
                    pass
            # entered (and kept open): the entries that follow are most likely in it
            self._owner_xattrs(self.parent_fd(parts), None, entry)
            self.dirs[parts] = entry
            return
        try:
            self._make(pfd, base, entry, reader)
        except FileExistsError:  # a later entry replaces an earlier one of the same name
            self._clear(pfd, parts, keep_dir=False)
            self._make(pfd, base, entry, reader)

    def _make(self, pfd: int, base: str, entry: TarEntry, reader: TarReader) -> None:
        """Make ``base`` in ``pfd`` as ``entry`` says (not a dir); FileExistsError if the name is taken."""
        kind = entry.type
        if kind == REGULAR:
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                self.size += reader.copy_to(fd)
                self._owner_xattrs(fd, None, entry)
                os.chmod(fd, self._mode(entry))
                os.utime(fd, ns=(_ns(entry.mtime), _ns(entry.mtime)))
            finally:
                os.close(fd)
            return
        if kind == HARDLINK:
            self._hardlink(entry, pfd, base)
            return
        if kind == SYMLINK:
            os.symlink(entry.linkname, base, dir_fd=pfd)
        elif kind == FIFO:
            os.mkfifo(base, 0o600, dir_fd=pfd)
        elif kind in (CHAR, BLOCKDEV):
            self._device(entry, pfd, base)
        self._owner_xattrs(pfd, base, entry)
        if kind != SYMLINK:
            os.chmod(base, self._mode(entry), dir_fd=pfd)
        os.utime(base, ns=(_ns(entry.mtime), _ns(entry.mtime)), dir_fd=pfd, follow_symlinks=False)

    def _clear(self, pfd: int, parts: tuple[str, ...], keep_dir: bool) -> None:
        """A later entry replaces an earlier one of the same name (a dir only merges with a dir)."""
        try:
            st = os.lstat(parts[-1], dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            if tuple(self._names[: len(parts)]) == parts:
                self._drop_cache(len(parts) - 1)  # (the tree goes, and the fds into it)
            shutil.rmtree(parts[-1], dir_fd=pfd)
            self.dirs = {k: v for k, v in self.dirs.items() if k[: len(parts)] != parts}
        else:
            os.unlink(parts[-1], dir_fd=pfd)

    def _hardlink(self, entry: TarEntry, pfd: int, base: str) -> None:
        target = entry.linkname
        if target.startswith("/") or ".." in target.split("/"):
            raise UnsafeTar(f"{self.where}: hard link {entry.name!r} points outside the layer ({target!r})")
        tparts = split_name(target, self.where)
        if not tparts:
            raise UnsafeTar(f"{self.where}: hard link {entry.name!r} to the layer root")
        try:
            tfd = self._open_dir(tparts[:-1], create=False)
        except FileNotFoundError:
            raise BadInput(f"{self.where}: hard link {entry.name!r} to missing {target!r}") from None
        try:
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise BadInput(f"{self.where}: hard link {entry.name!r} to missing {target!r}") from None
        except PermissionError:
            raise BadInput(f"{self.where}: hard link {entry.name!r} to a directory {target!r}") from None
        finally:
            os.close(tfd)

    def _device(self, entry: TarEntry, pfd: int, base: str) -> None:
        dev = os.makedev(entry.devmajor, entry.devminor)
        if self.as_root:
            os.mknod(base, entry.st_mode, dev, dir_fd=pfd)
            return
        # Rootless: an empty file that says what it stands for, as containers-storage makes it.
        os.close(os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd))
        kind = stat.S_IFCHR if entry.type == CHAR else stat.S_IFBLK
        override = owners.Override(entry.uid, entry.gid, entry.mode, kind, dev)
        os.setxattr(f"/proc/self/fd/{pfd}/{base}", owners.XATTR, override.encode(), follow_symlinks=False)

    def _mode(self, entry: TarEntry) -> int:
        """The mode the file itself gets (rootless: with the owner's bits; the xattr has the rest)."""
        if self.as_root or entry.type not in (REGULAR, DIR):
            return entry.mode
        return owners.disk_mode(entry.mode, entry.type == DIR)

    def _owner_xattrs(self, fd: int, name: str | None, entry: TarEntry) -> None:
        """chown first (it clears setuid bits, so chmod comes after), then xattrs. Rootless, an
        owner other than root or a mode the file cannot keep goes into the override xattr."""
        if self.as_root:
            if name is None:
                os.chown(fd, entry.uid, entry.gid)
            else:
                os.chown(name, entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
        target: int | str = fd if name is None else f"/proc/self/fd/{fd}/{name}"
        if (
            not self.as_root
            and entry.type in (REGULAR, DIR)
            and ((entry.uid, entry.gid) != (0, 0) or self._mode(entry) != entry.mode)
        ):
            override = owners.Override(entry.uid, entry.gid, entry.mode).encode()
            if isinstance(target, int):
                os.setxattr(target, owners.XATTR, override)
            else:
                os.setxattr(target, owners.XATTR, override, follow_symlinks=False)
        for key, value in entry.xattrs.items():
            if key == owners.XATTR and not self.as_root:  # (ours, just written, says what the tar says)
                continue
            if not self.as_root and not key.startswith("user."):
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                # user.* xattrs cannot be set on symlinks (the kernel refuses them): nothing to keep.
                if e.errno not in (errno.EPERM, errno.ENOTSUP) or entry.type != SYMLINK:
                    raise

    def finish_dirs(self) -> None:
        """Directory modes and times last, deepest first: creating children bumps mtimes."""
        # children before their parent; siblings next to each other, so each is entered from the
        # parent entered for the one before (a path is sorted after its prefix: reversed, before it)
        for parts in sorted(self.dirs, reverse=True):
            entry = self.dirs[parts]
            fd = self.parent_fd(parts, create=False)
            os.chmod(fd, self._mode(entry))
            os.utime(fd, ns=(_ns(entry.mtime), _ns(entry.mtime)))
        self._drop_cache()


def _ns(mtime: float) -> int:
    return int(round(mtime * 1_000_000_000))


def extract(reader: TarReader, root: str, where: str, as_root: bool | None = None) -> int:
    """Extract every entry of ``reader`` into the empty directory ``root``; ``as_root`` (default:
    whether we are root) gives owners and devices for real, else keeps them in the override xattr.

    Returns the layer's content size (bytes of regular files; hard links count once). On error the
    directory is left half-filled: callers extract into a staging dir and delete it on failure.
    """
    ex = _Extractor(root, where, os.geteuid() == 0 if as_root is None else as_root)
    try:
        for entry in reader:
            try:
                ex.add(entry, reader)
            except OSError as e:
                raise BadInput(f"{where}: cannot extract {entry.name!r}: {e.strerror}") from None
        ex.finish_dirs()
        return ex.size
    finally:
        ex.close()

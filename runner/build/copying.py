"""What COPY, ADD and WORKDIR write: a fresh upper dir over the image's layer dirs, filled without a
container or a mount (what ``commit`` makes of a container's upper, these steps make directly).

The destination is resolved inside the image, its symlinks followed and clamped at its root (moby's
``FollowSymlinkInScope``). Parent directories the image has are copied up (mode, owner, times);
missing ones are made 0755, owned by ``--chown``'s owner (root without it). A directory source gives
its contents; a file lands at the destination, or in it when the destination ends in ``/`` or is a
directory. Copies keep modes, times and hard links; owners are root's (``--chown``: that owner;
``COPY --from``: the source's); ``--chmod`` sets the mode of what is copied. ADD unpacks a local tar
(plain, gzip, bzip2, xz or zstd, recognised by its content) into the destination, with the tar's
owners, through the store's safe extraction.

Rootless, owners other than the user's own and modes the user could not use go into
``user.containers.override_stat``, as the store's extraction keeps them; the layer tar gets them back.
"""

from __future__ import annotations

import os
import shutil
import stat

from store import owners
from store.compression import decompressing
from store.extract import extract
from store.tarstream import TarReader
from unionfs.layers import LayerSet

from .trees import ImageTree, Tree, join, resolve, walk

Owner = tuple[int, int]


class DestinationError(Exception):
    """The destination cannot take the copy (a file where a directory is needed)."""


class Upper:
    """One step's upper dir over the image's layer dirs (lowers top-most first)."""

    def __init__(self, upper: str, lowers: list[str], scratch: str) -> None:
        self.dir = upper
        self.scratch = scratch  # for unpacking archives: same filesystem, so entries move by rename
        self.rootless = os.geteuid() != 0
        self.layers = LayerSet(upper, lowers, owners_xattr=self.rootless)
        self.view = ImageTree(self.layers)
        self.links: dict[tuple[int, int], str] = {}  # source (dev, ino) -> its copy, for hard links
        self.dir_times: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        self.layers.close()

    def path(self, rel: str) -> str:
        return os.path.join(self.dir, rel) if rel else self.dir

    def resolve(self, dest: str) -> str:
        return resolve(self.view, dest)

    def lstat(self, rel: str) -> os.stat_result | None:
        return self.view.lstat(rel)

    def is_dir(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    # -- directories ------------------------------------------------------------------------------
    def make_dirs(self, rel: str, owner: Owner) -> bool:
        """Every component of ``rel`` a directory in the upper: copied up where the image has one,
        made 0755 for ``owner`` where it has none. True if ``rel`` itself was made."""
        made = False
        current = ""
        for name in [p for p in rel.split("/") if p]:
            current = join(current, name)
            try:
                if stat.S_ISDIR(os.lstat(self.path(current)).st_mode):
                    made = False
                    continue
            except FileNotFoundError:
                pass
            below = self.lstat(current)
            if below is not None and not stat.S_ISDIR(below.st_mode):
                raise DestinationError(f"/{current} is not a directory")
            self._remove_upper(current)
            os.mkdir(self.path(current), 0o700)
            if below is not None:  # a copy-up: the image's directory, its metadata with it
                self._own(current, below.st_uid, below.st_gid, stat.S_IMODE(below.st_mode), stat.S_IFDIR)
                self.dir_times.setdefault(current, (below.st_atime_ns, below.st_mtime_ns))
                made = False
            else:
                self._own(current, owner[0], owner[1], 0o755, stat.S_IFDIR)
                made = True
        return made

    def _remove_upper(self, rel: str) -> None:
        try:
            st = os.lstat(self.path(rel))
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(self.path(rel))
        else:
            os.unlink(self.path(rel))

    # -- entries ----------------------------------------------------------------------------------
    def put(self, rel: str, tree: Tree, src: str, st: os.stat_result, owner: Owner | None, chmod: int | None) -> None:
        """One entry of ``tree`` (its lstat ``st``) at ``rel`` in the upper, replacing what is there
        (a directory over a directory merges). ``owner`` None keeps the source's."""
        uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
        mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
        kind = stat.S_IFMT(st.st_mode)
        target = self.path(rel)
        if kind == stat.S_IFDIR:
            try:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    os.unlink(target)
                    os.mkdir(target, 0o700)
            except FileNotFoundError:
                os.mkdir(target, 0o700)
            self._own(rel, uid, gid, mode, kind)
            self.dir_times[rel] = (st.st_atime_ns, st.st_mtime_ns)
            return
        self._remove_upper(rel)
        real = tree.real_path(src)
        if kind == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key) if st.st_nlink > 1 else None
            if first is not None:
                os.link(self.path(first), target)
                return
            shutil.copyfile(real, target, follow_symlinks=False)
            if st.st_nlink > 1:
                self.links[key] = rel
        elif kind == stat.S_IFLNK:
            os.symlink(os.readlink(real), target)
        elif kind == stat.S_IFIFO:
            os.mkfifo(target, 0o600)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            if self.rootless:  # an empty file standing for it, as the store's extraction makes one
                open(target, "wb").close()
            else:
                os.mknod(target, kind | 0o600, st.st_rdev)
        else:
            return  # a socket: not representable in a layer
        self._own(rel, uid, gid, mode, kind, st.st_rdev)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def write_file(self, rel: str, data: bytes, owner: Owner, mode: int) -> None:
        """A file made from bytes (a heredoc)."""
        self._remove_upper(rel)
        with open(self.path(rel), "wb") as f:
            f.write(data)
        self._own(rel, owner[0], owner[1], mode, stat.S_IFREG)

    def _own(self, rel: str, uid: int, gid: int, mode: int, kind: int, rdev: int = 0) -> None:
        """Owner and mode, as root for real; rootless, in the override xattr where the file itself
        cannot say them (chown first: it clears setuid bits)."""
        path = self.path(rel)
        if not self.rootless:
            os.lchown(path, uid, gid)
            if kind != stat.S_IFLNK:
                os.chmod(path, mode)
            return
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            override = owners.Override(uid, gid, mode, kind, rdev)
            os.setxattr(path, owners.XATTR, override.encode(), follow_symlinks=False)
            return
        if kind in (stat.S_IFREG, stat.S_IFDIR):
            disk = owners.disk_mode(mode, kind == stat.S_IFDIR)
            os.chmod(path, disk)
            if (uid, gid) != (0, 0) or disk != mode:
                os.setxattr(path, owners.XATTR, owners.Override(uid, gid, mode).encode())

    # -- whole sources ----------------------------------------------------------------------------
    def copy_tree(self, tree: Tree, src: str, dest: str, owner: Owner | None, chmod: int | None) -> None:
        """The contents of the directory ``src`` into the directory ``dest`` (made if missing)."""
        for rel, st in walk(tree, src):
            if rel == src:
                continue
            self.put(join(dest, rel[len(src) + 1 :] if src else rel), tree, rel, st, owner, chmod)

    def unpack(self, archive: str, dest: str, where: str) -> None:
        """A local tar (maybe compressed) into the directory ``dest``, with its own owners and modes."""
        staging = os.path.join(self.scratch, f"unpack-{len(os.listdir(self.scratch))}")
        os.mkdir(staging, 0o700)
        try:
            with open(archive, "rb") as raw:
                _kind, plain = decompressing(raw, where)
                extract(TarReader(plain, where), staging, where)
            self._merge(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _merge(self, staged: str, dest: str) -> None:
        for name in sorted(os.listdir(staged)):
            src = os.path.join(staged, name)
            rel = join(dest, name)
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode) and self.is_dir(rel):
                self.make_dirs(rel, (0, 0))
                self._take_metadata(src, rel, st)
                self._merge(src, rel)
                continue
            self._remove_upper(rel)
            os.rename(src, self.path(rel))

    def _take_metadata(self, src: str, rel: str, st: os.stat_result) -> None:
        """An unpacked directory that lands on an existing one gives it its owner and mode."""
        path = self.path(rel)
        if not self.rootless:
            os.lchown(path, st.st_uid, st.st_gid)
        try:
            os.setxattr(path, owners.XATTR, os.getxattr(src, owners.XATTR))
        except OSError:
            pass
        os.chmod(path, stat.S_IMODE(st.st_mode))
        self.dir_times[rel] = (st.st_atime_ns, st.st_mtime_ns)

    def finish(self) -> None:
        """Directory times last, deepest first (creating entries bumps them)."""
        for rel in sorted(self.dir_times, key=lambda r: r.count("/"), reverse=True):
            try:
                os.utime(self.path(rel), ns=self.dir_times[rel])
            except FileNotFoundError:
                pass


def is_archive(path: str, where: str) -> bool:
    """moby's IsArchivePath: the file, decompressed if it is compressed, opens with a valid tar header."""
    try:
        with open(path, "rb") as raw:
            _kind, plain = decompressing(raw, where)
            block = plain.read(512)
    except Exception:  # a truncated or corrupt stream: not an archive, copied as it is
        return False
    if len(block) < 512 or not any(block):
        return False
    try:
        expected = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return sum(block[:148]) + 8 * 32 + sum(block[156:]) == expected


def lookup_owner(view: ImageTree, spec: str) -> Owner:
    """``--chown``'s USER[:GROUP] (names or ids) in the image's /etc/passwd and /etc/group. A user
    alone takes its primary group (a number alone: the same number), as BuildKit and buildah do."""
    user, _, group = spec.partition(":")
    passwd = _table(view, "etc/passwd")
    uid: int
    primary: int | None = None
    if user.isdigit():
        uid = int(user)
        for entry in passwd:
            if entry[2:3] == [user] and len(entry) > 3 and entry[3].isdigit():
                primary = int(entry[3])
                break
    else:
        row: list[str] | None = next((r for r in passwd if r and r[0] == user and len(r) > 3), None)
        if row is None or not row[2].isdigit():
            raise LookupError(f"unable to find user {user}: no matching entries in passwd file")
        uid, primary = int(row[2]), int(row[3]) if row[3].isdigit() else None
    if not group:
        return uid, primary if primary is not None else uid
    if group.isdigit():
        return uid, int(group)
    found: list[str] | None = next((r for r in _table(view, "etc/group") if r and r[0] == group and len(r) > 2), None)
    if found is None or not found[2].isdigit():
        raise LookupError(f"unable to find group {group}: no matching entries in group file")
    return uid, int(found[2])


def _table(view: ImageTree, path: str) -> list[list[str]]:
    try:
        rel = resolve(view, path)
        with open(view.real_path(rel), encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []

"""The file trees a COPY reads from: the build context (a directory, less what ``.dockerignore``
leaves out) and an image or stage (its layer dirs merged, never mounted), behind one small interface;
and what COPY asks of either: symlinks resolved inside the tree, wildcards matched as Go's
``filepath.Match`` does, a walk in Go's lexical order, and Docker's cache checksums.

Checksums are the classic builder's (moby ``builder/remotecontext``): a file's is the SHA-256 of its
tarsum-v1 header (name, mode, uid, gid, size, type, link target, device numbers and its
``security.capability``; no times) followed by its content, spelled ``file:<hex>``; a directory's is
``dir:`` + the SHA-256 of the sorted checksums of everything in it, itself included, joined by
commas. So changing a file's content, mode or owner invalidates the steps that copy it; touching it
does not.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from typing import Protocol

from unionfs.layers import LayerSet, Resolved

from .dockerignore import Matcher, clean

_SYMLINK_HOPS = 255
_CHUNK = 1 << 20


class Escape(Exception):
    """A path or symlink that leads out of a tree that may not be left (the context)."""


class Tree(Protocol):
    strict: bool  # a symlink may not lead out of it (the build context); else clamped, as in an image

    def lstat(self, rel: str) -> os.stat_result | None: ...
    def listdir(self, rel: str) -> list[str]: ...
    def readlink(self, rel: str) -> str: ...
    def real_path(self, rel: str) -> str: ...


class DirTree:
    """A directory, as a build context: ``.dockerignore``'s exclusions do not exist in it."""

    strict = True

    def __init__(self, root: str, ignore: Matcher | None = None) -> None:
        self.root = root
        self.ignore = ignore
        self._exceptions: dict[str, bool] = {}  # excluded dir -> whether an exception is inside (walked once)

    def excluded(self, rel: str) -> bool:
        return bool(rel) and self.ignore is not None and self.ignore.excluded(rel)

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            st = os.lstat(self.real_path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if self.excluded(rel) and not (stat.S_ISDIR(st.st_mode) and self._holds_exception(rel)):
            return None
        return st

    def _holds_exception(self, rel: str) -> bool:
        """An excluded directory that an exception (``!``) brings something back from."""
        if self.ignore is None or not self.ignore.exclusions:
            return False
        if rel not in self._exceptions:
            self._exceptions[rel] = any(
                not self.ignore.excluded(f"{os.path.relpath(top, self.root)}/{name}")
                for top, dirs, files in os.walk(self.real_path(rel))
                for name in dirs + files
            )
        return self._exceptions[rel]

    def listdir(self, rel: str) -> list[str]:
        return sorted(n for n in os.listdir(self.real_path(rel)) if self.lstat(join(rel, n)) is not None)

    def readlink(self, rel: str) -> str:
        return os.readlink(self.real_path(rel))

    def real_path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root


class ImageTree:
    """An image's merged tree, read from its layer dirs (whiteouts applied)."""

    strict = False

    def __init__(self, layers: LayerSet) -> None:
        self.layers = layers

    def find(self, rel: str) -> Resolved | None:
        dirs = self.layers.root_dirs()
        if not rel:
            st = self.layers.lstat(dirs[0], "")
            return Resolved(dirs[0], st, dirs) if st is not None else None
        parent = ""
        found: Resolved | None = None
        for name in rel.split("/"):
            found = self.layers.resolve(dirs, parent, name)
            if found is None:
                return None
            parent = join(parent, name)
            dirs = found.dir_layers
        return found

    def lstat(self, rel: str) -> os.stat_result | None:
        found = self.find(rel)
        return found.st if found is not None else None

    def listdir(self, rel: str) -> list[str]:
        found = self.find(rel)
        return sorted(self.layers.listdir(found.dir_layers, rel)) if found is not None and found.is_dir else []

    def readlink(self, rel: str) -> str:
        return os.readlink(self.real_path(rel))

    def real_path(self, rel: str) -> str:
        found = self.find(rel)
        layer = found.layer if found is not None else 0
        return os.path.join(self.layers.paths[layer], rel)


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def resolve(tree: Tree, path: str, follow_last: bool = True) -> str:
    """``path`` inside ``tree`` with its symlinks followed (all of them, or all but the last), as
    moby's ``FollowSymlinkInScope``: ``..`` and absolute targets stop at the root of an image; in a
    strict tree (the context) they are an ``Escape``. A missing tail is kept as written."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if done:
                done.pop()
            elif tree.strict:
                raise Escape(path)
            continue
        candidate = "/".join([*done, name])
        st = tree.lstat(candidate)
        if st is not None and stat.S_ISLNK(st.st_mode) and (pending or follow_last):
            hops += 1
            if hops > _SYMLINK_HOPS:
                raise Escape(f"{path}: too many levels of symbolic links")
            target = tree.readlink(candidate)
            if target.startswith("/"):
                if tree.strict:
                    raise Escape(f"{candidate} -> {target}")
                done = []
            else:
                try:
                    resolve_relative_in(tree, done, target)
                except Escape:
                    raise Escape(f"{candidate} -> {target}") from None
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(name)
    return "/".join(done)


def resolve_relative_in(tree: Tree, base: list[str], target: str) -> None:
    """Raise ``Escape`` if a relative symlink target climbs above a strict tree's root."""
    if not tree.strict:
        return
    depth = len(base)
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise Escape(target)
        elif part not in ("", "."):
            depth += 1


def walk(tree: Tree, rel: str) -> Iterator[tuple[str, os.stat_result]]:
    """``rel`` and everything under it, parents first, names in Go's lexical order; symlinks are
    not followed."""
    st = tree.lstat(rel)
    if st is None:
        return
    yield rel, st
    if stat.S_ISDIR(st.st_mode):
        for name in tree.listdir(rel):
            yield from walk(tree, join(rel, name))


def has_wildcards(path: str) -> bool:
    """moby's containsWildcards: an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match``: ``*``/``?`` stop at ``/``, ``[...]`` classes (``^`` negates), ``\\``."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] == "^" else i + 1)
            if end < 0:
                return False  # ErrBadPattern: matches nothing
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    try:
        return re.fullmatch("".join(out), name) is not None
    except re.error:
        return False


def glob(tree: Tree, pattern: str) -> list[str]:
    """Every path of ``tree`` the source pattern matches, in walk order (moby's copyWithWildcards)."""
    pattern = clean(pattern)
    return [rel for rel, _ in walk(tree, "") if rel and go_match(pattern, rel)]


class Checksums:
    """Docker's checksums of one tree's paths, each computed once per build."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.sums: dict[str, str] = {}
        self.bytes_read = 0

    def of(self, rel: str) -> str:
        """``file:<hex>`` or ``dir:<hex>`` for the path ``rel`` (already resolved)."""
        st = self.tree.lstat(rel)
        if st is not None and stat.S_ISDIR(st.st_mode):
            entries = sorted(self._entry(path) for path, _ in walk(self.tree, rel))
            return "dir:" + hashlib.sha256(",".join(entries).encode()).hexdigest()
        return "file:" + self._entry(rel)

    def _entry(self, rel: str) -> str:
        """moby's lazySource.Hash: symlinks followed inside the tree; a path that leads nowhere
        hashes as its own name (their backwards compatibility)."""
        try:
            real = resolve(self.tree, rel)
        except Escape:
            return rel
        if real in self.sums:
            return self.sums[real]
        st = self.tree.lstat(real)
        if st is None:
            return real
        digest = hashlib.sha256(_header(self.tree, real, st))
        if stat.S_ISREG(st.st_mode) and st.st_size:
            with open(self.tree.real_path(real), "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    self.bytes_read += len(chunk)
        self.sums[real] = digest.hexdigest()
        return self.sums[real]


def _header(tree: Tree, rel: str, st: os.stat_result) -> bytes:
    """The tarsum-v1 header fields of one entry, as moby's FileInfoHeader fills them."""
    mode = st.st_mode
    kind = (
        "0"
        if stat.S_ISREG(mode)
        else "5"
        if stat.S_ISDIR(mode)
        else "2"
        if stat.S_ISLNK(mode)
        else "3"
        if stat.S_ISCHR(mode)
        else "4"
        if stat.S_ISBLK(mode)
        else "6"
    )
    name = (rel or ".") + ("/" if stat.S_ISDIR(mode) else "")
    link = tree.readlink(rel) if stat.S_ISLNK(mode) else ""
    major = minor = 0
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    fields = [
        ("name", name),
        ("mode", str(stat.S_IMODE(mode))),
        ("uid", str(st.st_uid)),
        ("gid", str(st.st_gid)),
        ("size", str(st.st_size if stat.S_ISREG(mode) else 0)),
        ("typeflag", kind),
        ("linkname", link),
        ("uname", ""),
        ("gname", ""),
        ("devmajor", str(major)),
        ("devminor", str(minor)),
    ]
    data = "".join(k + v for k, v in fields).encode("utf-8", "surrogateescape")
    try:
        data += b"security.capability" + os.getxattr(tree.real_path(rel), "security.capability", follow_symlinks=False)
    except OSError:
        pass
    return data

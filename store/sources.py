"""Read the members of an image archive by name: a tar (indexed once, then read by offset) or a dir.

A compressed archive or one read from a pipe is first decompressed into the writer's transaction, so
members can be read in any order without holding anything in memory. Symlinked members (skopeo's
``<id>/layer.tar -> ../<diffid>.tar``) are followed inside the archive only.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from .compression import NONE, decompressing, sniff
from .errors import BadInput, NotFound
from .root import Transaction
from .tarstream import HARDLINK, REGULAR, SYMLINK, TarReader

_CHUNK = 1 << 20


class _Region:
    """A read-only file-like view of ``size`` bytes at ``offset`` of ``fd`` (pread: no shared seek)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, min(n, 16 << 20), self._pos)
        if not data:
            raise BadInput("archive member is truncated")
        self._pos += len(data)
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> _Region:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass(frozen=True)
class _Member:
    type: str
    offset: int
    size: int
    linkname: str


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class Source:
    """The interface the loader reads an archive through."""

    where: str
    # read and verify a member whose layer the store has already: an archive's copy may be damaged or
    # substituted; a registry's blob is named by its digest, so it is not fetched at all
    check_present = True

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def prefetch(self, names: list[str], progress: Callable[[str, int, int], None] | None) -> set[str]:
        """The layer blobs about to be opened: a source that can fetch them ahead (a registry) starts
        now, and returns the names whose progress it reports itself."""
        return set()

    def kept(self, name: str) -> Callable[[], str] | None:
        """For a member this source downloads into the store's root (a registry's layer): a function
        that waits for the download and gives its file, checked against the digest that names it
        (staged by a hard link rather than copied; ``open`` reads the bytes as they come). None:
        the member is only read with ``open``."""
        return None

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        if self.size(name) > limit:
            raise BadInput(f"{self.where}: {name} is too large for a JSON document")
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        pass


class TarSource(Source):
    def __init__(self, path: str, where: str) -> None:
        self.where = where
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._members: dict[str, _Member] = {}
        with os.fdopen(os.dup(self._fd), "rb") as f:
            reader = TarReader(f, where, seekable=True)
            for entry in reader:
                self._members[_norm(entry.name)] = _Member(entry.type, reader.pos, entry.size, entry.linkname)
        length = os.fstat(self._fd).st_size
        if any(m.offset + m.size > length for m in self._members.values()):
            raise BadInput(f"{where}: truncated tar stream")

    def _resolve(self, name: str) -> _Member:
        name = _norm(name)
        for _ in range(16):
            member = self._members.get(name)
            if member is None:
                raise NotFound(f"{self.where}: no {name} in the archive")
            if member.type == SYMLINK:
                name = _norm(posixpath.join(posixpath.dirname(name), member.linkname))
            elif member.type == HARDLINK:
                name = _norm(member.linkname)
            elif member.type == REGULAR:
                return member
            else:
                raise BadInput(f"{self.where}: {name} is not a file")
        raise BadInput(f"{self.where}: too many levels of links at {name}")

    def exists(self, name: str) -> bool:
        try:
            self._resolve(name)
            return True
        except (NotFound, BadInput):
            return False

    def size(self, name: str) -> int:
        return self._resolve(name).size

    def open(self, name: str) -> BinaryIO:
        m = self._resolve(name)
        return cast(BinaryIO, _Region(self._fd, m.offset, m.size))

    def names(self) -> list[str]:
        return sorted(self._members)

    def close(self) -> None:
        os.close(self._fd)


class DirSource(Source):
    """An unpacked archive or OCI layout dir. Symlinks must stay inside it."""

    def __init__(self, path: str) -> None:
        self.where = path
        self._root = os.path.realpath(path)

    def _path(self, name: str) -> str:
        full = os.path.realpath(os.path.join(self._root, _norm(name)))
        if not (full + "/").startswith(self._root + "/"):
            raise BadInput(f"{self.where}: {name} points outside the directory")
        return full

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def size(self, name: str) -> int:
        try:
            return os.stat(self._path(name)).st_size
        except FileNotFoundError:
            raise NotFound(f"{self.where}: no {name} in the directory") from None

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.where}: no {name} in the directory") from None

    def names(self) -> list[str]:
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(self._root):
            rel = os.path.relpath(dirpath, self._root)
            out.extend(_norm(os.path.join(rel, f)) for f in files)
        return sorted(out)


def open_source(path: str, stdin: BinaryIO | None, txn: Transaction) -> Source:
    """``path`` is a tar (maybe compressed), a dir, or ``-`` for ``stdin``."""
    if path != "-" and os.path.isdir(path):
        return DirSource(path)
    where = "stdin" if path == "-" else path
    try:
        raw = stdin if path == "-" else open(path, "rb")
    except OSError as e:
        raise BadInput(f"{where}: {e.strerror}") from None
    assert raw is not None
    try:
        seekable = path != "-" and stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
        if seekable and sniff(os.pread(raw.fileno(), 8, 0)) == NONE:
            return TarSource(path, where)
        _kind, plain = decompressing(raw, where)
        spooled = txn.new_path("archive.tar")
        with open(spooled, "wb") as out:
            while chunk := plain.read(_CHUNK):
                out.write(chunk)
        return TarSource(spooled, where)
    finally:
        if raw is not stdin:
            raw.close()

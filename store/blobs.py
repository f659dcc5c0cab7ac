"""Content-addressed blobs: ``blobs/sha256/<hex>``, written once, never changed.

A blob is staged in the writer's transaction while it is hashed, then published by rename; putting a
blob that already exists is a no-op.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .digest import hex_of, sha256_bytes
from .errors import DigestMismatch, NotFound
from .root import Root, Transaction

_CHUNK = 1 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class StagedBlob:
    path: str
    digest: str
    size: int


class TeeHash:
    """Read from ``raw``; write every byte to ``out_fd`` (none: -1) and hash it (one pass for copy + verify)."""

    def __init__(self, raw: BinaryIO, out_fd: int, progress: Progress | None = None) -> None:
        self._raw = raw
        self._fd = out_fd
        self._hash = hashlib.sha256()
        self._progress = progress
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n >= 0 else _CHUNK)
        if data:
            self._hash.update(data)
            self.size += len(data)
            if self._fd >= 0:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            if self._progress:
                self._progress(len(data))
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class Blobs:
    def __init__(self, root: Root) -> None:
        self.root = root

    def path(self, digest: str) -> str:
        return os.path.join(self.root.blobs, hex_of(digest))

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def all(self) -> list[str]:
        try:
            return sorted("sha256:" + n for n in os.listdir(self.root.blobs) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def stage_stream(
        self, txn: Transaction, raw: BinaryIO, expected: str | None, what: str, progress: Progress | None = None
    ) -> StagedBlob:
        path = txn.new_path("blob")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            tee = TeeHash(raw, fd, progress)
            tee.drain()
        finally:
            os.close(fd)
        if expected is not None and tee.digest != expected:
            raise DigestMismatch(f"{what}: content hashes to {tee.digest}, expected {expected}")
        return StagedBlob(path, tee.digest, tee.size)

    def stage_bytes(self, txn: Transaction, data: bytes) -> StagedBlob:
        path = txn.new_path("blob")
        with open(path, "wb") as f:
            f.write(data)
        return StagedBlob(path, sha256_bytes(data), len(data))

    def publish(self, txn: Transaction, staged: StagedBlob) -> None:
        txn.publish(staged.path, self.path(staged.digest))

    def remove(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def verify(self, digest: str) -> bool:
        h = hashlib.sha256()
        with self.open(digest) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

"""Content digests: parsing ``sha256:<hex>``, hashing streams, and OCI chain ids.

A *digest* names the bytes of a blob as stored; a *diff_id* is the digest of a layer's uncompressed
tar; a *chain id* names a layer together with everything below it (OCI image-spec config.md):
``ChainID(L0) = DiffID(L0)``, ``ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO

from .errors import BadInput, DigestMismatch

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


def check_digest(value: object, what: str) -> str:
    """Return ``value`` if it is a well-formed sha256 digest, else raise BadInput naming ``what``."""
    if not is_digest(value):
        raise BadInput(f"{what}: not a sha256 digest: {value!r}")
    assert isinstance(value, str)
    return value


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain id of a layer with ``diff_id`` on the layer whose chain id is ``parent``."""
    return sha256_bytes(f"{parent} {diff_id}".encode()) if parent else diff_id


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(chain_id(out[-1] if out else None, diff_id))
    return out


class HashingReader:
    """Wraps a binary stream; hashes and counts every byte read through it.

    ``verify(expected, what)`` reads nothing more: callers read to the end first.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def verify(self, expected: str, what: str) -> None:
        if self.digest != expected:
            raise DigestMismatch(f"{what}: content hashes to {self.digest}, expected {expected}")

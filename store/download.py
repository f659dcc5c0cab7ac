"""A pull's layer blobs, fetched in parallel into ``ROOT/downloads/sha256/`` before they are staged.

``<hex>.partial`` grows as the bytes come; ``<hex>`` is a blob whose bytes hashed to its digest.
Neither is part of the visible store (no image, layer or blob names them): a pull publishes through
its writer transaction as a load does, then removes the downloads it used. A pull that stops on the
network (a dropped connection, the registry gone, ^C) leaves them, and the next pull of any image
with those blobs starts from there: a verified blob is not fetched again, a partial one is asked for
from its end (``Range: bytes=N-``; a registry that answers with the whole blob is read from the start
again). A connection that drops mid-blob is resumed in the same way a few times before the pull
gives up. Bytes that do not hash to their digest are removed at once.

Caveats: a partial blob is re-hashed from disk before it resumes (``hashlib`` states cannot be kept).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .digest import hex_of
from .errors import BadInput, DigestMismatch, Interrupted
from .transport import Response

_CHUNK = 1 << 20
RETRIES = 3  # resumptions of one blob within a pull
_BACKOFF = 0.5  # seconds, doubled each time
Progress = Callable[[str, int, int], None]
OpenBlob = Callable[[str, int], Response]  # (digest, offset) -> the bytes from there


class _Stopped(Exception):
    """The pull ended (another blob failed, or the staging did): stop fetching."""


class Downloads:
    """``ROOT/downloads/sha256/``: verified blobs and partial ones, by digest."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.join(directory, "sha256")

    def path(self, digest: str) -> str:
        return os.path.join(self.directory, hex_of(digest))

    def partial(self, digest: str) -> str:
        return self.path(digest) + ".partial"

    def discard(self, digests: list[str]) -> None:
        for digest in digests:
            for path in (self.path(digest), self.partial(digest)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def kept(self) -> list[tuple[str, int]]:
        """(name, bytes) of what earlier pulls left."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        return [(n, os.stat(os.path.join(self.directory, n)).st_size) for n in names]


class Fetcher:
    """Fetch blobs ``parallel`` at a time; ``wait(digest)`` gives a blob's verified file."""

    def __init__(self, downloads: Downloads, open_blob: OpenBlob, where: str, parallel: int,
                 progress: Progress | None) -> None:
        self.downloads, self.open_blob, self.where = downloads, open_blob, where
        self._progress = progress
        self._progress_lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pull")
        self._jobs: dict[str, Future[str]] = {}

    def start(self, blobs: list[tuple[str, int, str]]) -> None:
        """(digest, size, progress label) each, fetched in this order as threads come free."""
        for digest, size, label in blobs:
            if digest not in self._jobs:
                self._jobs[digest] = self._pool.submit(self._fetch, digest, size, label)

    def has(self, digest: str) -> bool:
        return digest in self._jobs

    def wait(self, digest: str) -> str:
        """The path of the verified blob; raises what its fetch raised."""
        return self._jobs[digest].result()

    def digests(self) -> list[str]:
        return list(self._jobs)

    def close(self) -> None:
        """Stop what is still fetching (it keeps what it has) and wait for the threads."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _report(self, label: str, done: int, total: int) -> None:
        if self._progress is not None:
            with self._progress_lock:  # one terminal, many threads
                self._progress(label, done, total)

    def _fetch(self, digest: str, size: int, label: str) -> str:
        final, partial = self.downloads.path(digest), self.downloads.partial(digest)
        if os.path.exists(final):
            self._report(label, size, size)
            return final
        os.makedirs(self.downloads.directory, exist_ok=True)
        with _Part(partial, size) as part:
            failures = 0
            while True:
                try:
                    self._receive(part, digest, label)
                    break
                except Interrupted as e:
                    failures += 1
                    if failures > RETRIES:
                        raise Interrupted(f"{self.where}: blob {digest}: {e} ({failures} tries; {part.offset} of "
                                          f"{size} bytes kept: pull again to resume)") from None
                    if self._stop.wait(_BACKOFF * 2 ** (failures - 1)):
                        raise _Stopped() from None
            got = part.digest
        if got != digest:
            os.unlink(partial)
            raise DigestMismatch(f"{self.where}: blob {digest} hashes to {got}")
        os.rename(partial, final)
        return final

    def _receive(self, part: _Part, digest: str, label: str) -> None:
        """Read the blob from ``part.offset`` to its end; ``Interrupted`` where it stops."""
        size = part.size
        with self.open_blob(digest, part.offset) as resp:
            if part.offset and (resp.status != 206 or
                                not resp.header("Content-Range").startswith(f"bytes {part.offset}-")):
                part.restart()  # the whole blob again
            self._report(label, part.offset, size)
            while part.offset <= size:
                if self._stop.is_set():
                    raise _Stopped()
                data = resp.read(min(_CHUNK, size + 1 - part.offset))
                if not data:
                    break
                part.append(data)
                self._report(label, part.offset, size)
        if part.offset > size:
            part.restart()
            raise BadInput(f"{self.where}: blob {digest} is longer than the {size} bytes its manifest says")
        if part.offset < size:
            raise Interrupted(f"the registry ended the blob at {part.offset} of {size} bytes")


class _Part:
    """``<hex>.partial``: its length and the hash of its bytes, kept in step with each write."""

    def __init__(self, path: str, size: int) -> None:
        self.size = size
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._hash, self.offset = hashlib.sha256(), 0
        while chunk := os.pread(self.fd, _CHUNK, self.offset):  # what an earlier pull left
            self._hash.update(chunk)
            self.offset += len(chunk)
        if self.offset > size:
            self.restart()

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        self._hash, self.offset = hashlib.sha256(), 0

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self.fd, view, self.offset + len(data) - len(view)):]
        self._hash.update(data)
        self.offset += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def __enter__(self) -> _Part:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

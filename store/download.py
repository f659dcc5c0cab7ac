"""A pull's layer blobs, fetched in parallel into ``ROOT/downloads/sha256/``, and read as they come.

``<hex>.partial`` grows as the bytes come; ``<hex>`` is a blob whose bytes hashed to its digest.
Neither is part of the visible store (no image, layer or blob names them): a pull publishes through
its writer transaction as a load does, then removes the downloads it used. A pull that stops on the
network (a dropped connection, the registry gone, ^C) leaves them, and the next pull of any image
with those blobs starts from there: a verified blob is not fetched again, a partial one is asked for
from its end (``Range: bytes=N-``; a registry that answers with the whole blob is read from the start
again). A connection that drops mid-blob is resumed in the same way a few times before the pull
gives up. Bytes that do not hash to their digest are removed at once.

A blob is staged as it comes (``Fetcher.reader``: a read waits for the fetch to write more), so a layer
is extracted while it downloads; the stage hashes what it read itself, and takes the checked file
(``Fetcher.wait``) as the layer's blob once it has read it all.

Caveats: a partial blob is re-hashed from disk before it resumes (``hashlib`` states cannot be kept).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, cast

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

    def __init__(
        self, downloads: Downloads, open_blob: OpenBlob, where: str, parallel: int, progress: Progress | None
    ) -> None:
        self.downloads, self.open_blob, self.where = downloads, open_blob, where
        self._progress = progress
        self._progress_lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pull")
        self._jobs: dict[str, Future[str]] = {}
        # what each fetch has written so far, for its readers: (the file, bytes written)
        self._written: dict[str, tuple[str, int]] = {}
        self._moved = threading.Condition()  # a fetch wrote more, renamed its file, ended; or all stop

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

    def reader(self, digest: str) -> BinaryIO:
        """The blob's bytes as its fetch writes them (not yet checked: the reader hashes them itself);
        a read waits for more, and raises what the fetch raised."""
        return cast(BinaryIO, _Tail(self, digest))

    def digests(self) -> list[str]:
        return list(self._jobs)

    def close(self) -> None:
        """Stop what is still fetching (it keeps what it has) and wait for the threads."""
        self._stop.set()
        with self._moved:
            self._moved.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _wrote(self, digest: str, path: str, offset: int) -> None:
        with self._moved:
            self._written[digest] = (path, offset)
            self._moved.notify_all()

    def _report(self, label: str, done: int, total: int) -> None:
        if self._progress is not None:
            with self._progress_lock:  # one terminal, many threads
                self._progress(label, done, total)

    def _fetch(self, digest: str, size: int, label: str) -> str:
        try:
            return self._fetch_once(digest, size, label)
        finally:
            with self._moved:
                self._moved.notify_all()  # ended: its readers take the result

    def _fetch_once(self, digest: str, size: int, label: str) -> str:
        final, partial = self.downloads.path(digest), self.downloads.partial(digest)
        if os.path.exists(final):
            self._wrote(digest, final, size)
            self._report(label, size, size)
            return final
        os.makedirs(self.downloads.directory, exist_ok=True)
        with _Part(partial, size) as part:
            self._wrote(digest, partial, part.offset)
            failures = 0
            while True:
                try:
                    self._receive(part, digest, label)
                    break
                except Interrupted as e:
                    failures += 1
                    if failures > RETRIES:
                        raise Interrupted(
                            f"{self.where}: blob {digest}: {e} ({failures} tries; {part.offset} of "
                            f"{size} bytes kept: pull again to resume)"
                        ) from None
                    if self._stop.wait(_BACKOFF * 2 ** (failures - 1)):
                        raise _Stopped() from None
            got = part.digest
        if got != digest:
            with self._moved:  # (a reader not yet in the file finds the fetch's end, not a missing file)
                self._written.pop(digest, None)
                os.unlink(partial)
            raise DigestMismatch(f"{self.where}: blob {digest} hashes to {got}")
        with self._moved:  # (a reader opening the file now finds it by its new name)
            os.rename(partial, final)
            self._written[digest] = (final, size)
        return final

    def _receive(self, part: _Part, digest: str, label: str) -> None:
        """Read the blob from ``part.offset`` to its end; ``Interrupted`` where it stops."""
        size = part.size
        with self.open_blob(digest, part.offset) as resp:
            if part.offset and (
                resp.status != 206 or not resp.header("Content-Range").startswith(f"bytes {part.offset}-")
            ):
                part.restart()  # the whole blob again
                self._wrote(digest, part.path, 0)
            self._report(label, part.offset, size)
            while part.offset <= size:
                if self._stop.is_set():
                    raise _Stopped()
                data = resp.read(min(_CHUNK, size + 1 - part.offset))
                if not data:
                    break
                part.append(data)
                self._wrote(digest, part.path, part.offset)
                self._report(label, part.offset, size)
        if part.offset > size:
            part.restart()
            raise BadInput(f"{self.where}: blob {digest} is longer than the {size} bytes its manifest says")
        if part.offset < size:
            raise Interrupted(f"the registry ended the blob at {part.offset} of {size} bytes")


class _Part:
    """``<hex>.partial``: its length and the hash of its bytes, kept in step with each write."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
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
            view = view[os.pwrite(self.fd, view, self.offset + len(data) - len(view)) :]
        self._hash.update(data)
        self.offset += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def __enter__(self) -> _Part:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class _Tail:
    """A blob read while its fetch writes it: each read returns bytes the fetch has written (by
    offset in its file, whatever its name is by then), or waits for some; at the end of a fetch that
    failed, its error. A fetch that starts the blob again only makes this wait longer: the same
    bytes come again, and the reader's own hash would tell if they did not."""

    def __init__(self, fetcher: Fetcher, digest: str) -> None:
        self._fetcher, self._digest = fetcher, digest
        self._fd = -1
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        f = self._fetcher
        while True:
            with f._moved:
                while True:
                    path, written = f._written.get(self._digest, ("", 0))
                    if self._fd < 0 and path:
                        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    if self._pos < written:
                        break
                    if f._stop.is_set():
                        raise _Stopped()
                    job = f._jobs[self._digest]
                    if job.done():
                        job.result()  # its error; else it ended and all of it was read
                        return b""
                    f._moved.wait()
            data = os.pread(self._fd, min(_CHUNK if n < 0 else n, written - self._pos), self._pos)
            if data:  # (nothing: the fetch started the blob again since, and truncated its file)
                self._pos += len(data)
                return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _Tail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

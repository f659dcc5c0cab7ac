"""The store's root directory: where things live, the writer lock, and staged transactions.

Every write goes through a ``Transaction``: work is staged under ``tmp/<txn>/`` and only renamed into
place by ``commit()``, after a ``syncfs``. Readers take no lock: each published file or directory
appears by one ``rename``. An image becomes visible only when its record is written, after its blobs
and layers, so a writer killed at any moment leaves no half image; a later writer sweeps ``tmp/``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import StoreError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def default_root() -> str:
    if env := os.environ.get("STRATA_ROOT"):
        return env
    if os.geteuid() == 0:
        return "/var/lib/strata"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "strata")


def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename (temp file in the same directory, fsynced unless
    it need not survive a crash of the host: run-time state)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_missing():
            os.unlink(tmp)
        raise


def write_json(path: str, value: Any, durable: bool = True) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", durable)


def read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


@contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass


def remove_tree(path: str) -> None:
    """Remove a file or tree; a missing path is fine (removal is idempotent)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _disk_usage(path: str) -> int:
    """Bytes in the files below ``path`` (not following links)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    try:
        if not os.path.isdir(path):
            total += os.lstat(path).st_size
    except FileNotFoundError:
        pass
    return total


class Root:
    """Paths below the store root. Creating a ``Root`` creates nothing; ``ensure()`` does."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.blobs = os.path.join(self.path, "blobs", "sha256")
        self.layers = os.path.join(self.path, "layers")
        self.images = os.path.join(self.path, "images")
        self.tmp = os.path.join(self.path, "tmp")
        self.downloads = os.path.join(self.path, "downloads")  # a pull's blobs before they are staged
        self.uploads = os.path.join(self.path, "uploads")  # pushes' unfinished upload sessions
        self.places = os.path.join(self.path, "places")  # which registry repositories hold which blobs
        self.repositories = os.path.join(self.path, "repositories.json")
        self.lockfile = os.path.join(self.path, "lock")
        self.gc_lockfile = os.path.join(self.path, "gc.lock")

    def ensure(self) -> None:
        """Make the layout, the root itself private (0700: another user reads nothing of it, not even
        through a layer dir's name)."""
        if not os.path.isdir(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.mkdir(self.path, 0o700)
            os.chmod(self.path, 0o700)  # whatever the umask
        for d in (self.blobs, self.layers, self.images, self.tmp):
            os.makedirs(d, exist_ok=True)
        if os.stat(self.tmp).st_mode & 0o777 != 0o700:  # (a chmod is a metadata write even when it changes nothing)
            os.chmod(self.tmp, 0o700)

    def check_access(self) -> None:
        """``StoreError`` if the root exists but is not this user's to read (another user's store)."""
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.X_OK):
            raise StoreError(f"cannot use store root {self.path}: permission denied")

    @contextmanager
    def writer(self) -> Iterator[Transaction]:
        """Hold the writer lock; yield a transaction whose staging dir is removed afterwards."""
        try:
            self.ensure()
        except OSError as e:
            raise StoreError(f"cannot use store root {self.path}: {e.strerror}") from None
        lock = os.open(self.lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Anything left in tmp/ belongs to a writer that died: we hold the only lock.
            for name in os.listdir(self.tmp):
                remove_tree(os.path.join(self.tmp, name))
            txn = Transaction(self)
            try:
                yield txn
            finally:
                if txn.made:
                    remove_tree(txn.dir)
        finally:
            os.close(lock)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Hold ``gc.lock`` shared: no garbage collection (``rmi``) removes a layer meanwhile. For a
        reader whose answer must stay true until it has recorded a use of it (a container taking its
        image's layers); loads and pulls do not wait for it, nor it for them. No store yet: no lock."""
        yield from self._gc_lock(fcntl.LOCK_SH)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Hold ``gc.lock`` exclusively: what holds an image (containers, mounts) is asked, and what
        nothing holds removed, with no reader between the two (``pinned``)."""
        yield from self._gc_lock(fcntl.LOCK_EX)

    def _gc_lock(self, how: int) -> Iterator[None]:
        try:
            lock = os.open(self.gc_lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, PermissionError):
            yield
            return
        try:
            fcntl.flock(lock, how)
            yield
        finally:
            os.close(lock)

    def leftovers(self) -> list[tuple[str, int]]:
        """What writers that died left in ``tmp/`` (name, bytes): nothing while a writer holds the lock
        (all of ``tmp/`` is then its own, and it swept the rest when it started)."""
        try:
            lock = os.open(self.lockfile, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            try:
                names = sorted(os.listdir(self.tmp))
            except FileNotFoundError:
                return []
            return [(name, _disk_usage(os.path.join(self.tmp, name))) for name in names]
        finally:
            os.close(lock)

    def syncfs(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)


class Transaction:
    """Staging space for one writer. ``new_path()`` names fresh paths inside it; its directory
    (``tmp/txn-PID``: the writer lock makes the name ours) is made at the first, so a writer that
    stages nothing (a pull of an image that is here) writes nothing to the disk."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.dir = os.path.join(root.tmp, f"txn-{os.getpid()}")
        self.made = False
        self._n = itertools.count(1)  # next() is atomic: stages in threads take names
        self._lock = threading.Lock()

    def new_path(self, hint: str) -> str:
        if not self.made:
            with self._lock:
                if not self.made:
                    os.mkdir(self.dir, 0o700)
                    self.made = True
        return os.path.join(self.dir, f"{next(self._n)}-{hint}")

    def publish(self, staged: str, final: str) -> bool:
        """Rename ``staged`` to ``final`` unless ``final`` exists; True if it was published.

        Only writers rename into the store and they hold the lock, so the check cannot race.
        """
        if os.path.lexists(final):
            return False
        try:
            os.rename(staged, final)
            return True
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise

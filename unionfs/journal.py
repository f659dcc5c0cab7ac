"""Copy-ups whose data may not be on disk yet, noted so that a crash of the host cannot lose them.

Kernel overlayfs fsyncs every copy-up with data before renaming it into the upper: a power cut could
otherwise leave the new name committed and its data not, an empty or short file hiding the lower
one. That fsync costs about a millisecond each (a journal commit). Instead, before the rename, the
copier notes the copy: ``WORKDIR/unsynced/<upper inode>.<serial>``, a symlink to the lower file
copied. The note and the rename are both metadata, which a journaling filesystem (ext4, xfs, btrfs)
commits in the order they were made: if the rename survives a crash, so does its note.

- From the first note on, a thread syncs the upper filesystem (syncfs) every
  ``vm.dirty_expire_centisecs``, when the kernel's own writeback would have written the data anyway,
  then removes the notes the sync covered. The daemon's end does the same, as an unmount of kernel
  overlayfs syncs the upper.
- An fsync of the file covers its note. Losing the file's last name drops it. A truncation below
  the lower's size first makes the copy durable (a truncation to zero just drops it): so a noted
  file that is shorter than its lower, or has a hole where its lower has data, lost data in a crash.
- At the next mount, leftover notes are recovered: each noted file still in the upper that lost
  data gets the lower's data again (its mode, owner and times kept) and is fsynced. A file that kept
  its data is not touched, whatever was written to it since. Every mount with an upper recovers,
  ``volatile`` ones too (they make no notes, and remove the dir). Notes made for another upper (the
  workdir was given another one since) are dropped unused.

The dir is made by the first note (with its ``upper`` link): a mount that notes nothing writes
nothing in the workdir (a mkdir and a symlink were 0.3-0.6 ms of every mount here, on ext4).

A copy made by FICLONE shares the lower's extents (metadata too) and is not noted; neither is one whose
lower path is too long for a symlink (PATH_MAX): that one is fsynced as before. (A lower on a private
mount, ``privatemount``, is cloned by copy_file_range instead, which cannot tell a clone from a copy:
that copy is noted, and its sync finds little to write.)
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator

DIRNAME = "unsynced"
UPPER = "upper"  # in DIRNAME: a symlink to the upper's root inode number, which the notes' inodes are in
_NOTE_MAX = 4095  # a symlink's target, like a path, is shorter than PATH_MAX
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("unionfs")


def syncfs(fd: int) -> None:
    """syncfs(2): write out the filesystem holding ``fd`` (os has no binding for it)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def flush_delay() -> float:
    """Seconds after which the kernel writes dirty data back by itself."""
    try:
        with open("/proc/sys/vm/dirty_expire_centisecs") as f:
            return max(1.0, int(f.read()) / 100)
    except (OSError, ValueError):
        return 30.0


def recover_only(work_fd: int, upper_fd: int, copy_data: Callable[[int, int, int], None]) -> None:
    """For a mount that makes no notes (``volatile``): recover what a crash left, if anything, and
    remove the journal's dir."""
    try:
        os.stat(DIRNAME, dir_fd=work_fd)
    except FileNotFoundError:
        return
    Journal(work_fd, upper_fd, copy_data).close()
    os.unlink(f"{DIRNAME}/{UPPER}", dir_fd=work_fd)
    os.rmdir(DIRNAME, dir_fd=work_fd)


def can_note(lower_path: str) -> bool:
    return len(os.fsencode(lower_path)) <= _NOTE_MAX


class Journal:
    """The notes of one upper, kept in the workdir's ``unsynced`` dir. Notes are made in worker
    threads (long copies) as well as on the loop, so the table has a lock."""

    def __init__(self, work_fd: int, upper_fd: int, copy_data: Callable[[int, int, int], None]) -> None:
        """``copy_data(src fd, dst fd, size)`` copies a lower file's data over an upper file's, for
        recovery."""
        self.work_fd = work_fd
        self.upper_fd = upper_fd
        self._upper_root = str(os.fstat(upper_fd).st_ino)
        self.notes: dict[int, tuple[str, int]] = {}  # upper inode -> (note's name, lower's size)
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._stop = threading.Event()
        self._delay: float | None = None
        self._flusher: threading.Thread | None = None
        try:
            self.fd = os.open(DIRNAME, _DIR, dir_fd=work_fd)
        except FileNotFoundError:
            self.fd = -1  # made by the first note: no note was left, and a mount may make none
        else:
            self.recover(copy_data)

    def flush_every(self, delay: float) -> None:
        """Sync and drop the notes every ``delay`` seconds until closed, in a thread of its own
        started by the first note (a trio timer would keep pyfuse3's reader off its quiet path, see
        unionfs/patches/0002-*; and a mount that copies nothing up needs no thread)."""
        self._delay = delay
        if self.notes:
            self._start_flusher()

    def _start_flusher(self) -> None:
        delay = self._delay
        assert delay is not None

        def run() -> None:
            while not self._stop.wait(delay):
                if self.notes:
                    try:
                        self.sync()
                    except OSError as e:
                        log.warning("cannot sync the upper: %s", e)

        self._flusher = threading.Thread(target=run, name="unionfs-journal", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
        if self.notes:
            self.sync()
        if self.fd >= 0:
            os.close(self.fd)

    # -- noting -----------------------------------------------------------------------------------
    def note(self, ino: int, lower_path: str, size: int) -> None:
        """Note the copy of ``lower_path`` (``size`` bytes) now at upper inode ``ino``, before it is
        renamed into place."""
        name = f"{ino}.{next(self._serial)}"
        if self.fd < 0:
            with self._lock:
                if self.fd < 0:
                    self._make_dir()
        os.symlink(lower_path, name, dir_fd=self.fd)
        with self._lock:
            old = self.notes.get(ino)
            self.notes[ino] = (name, size)
            if self._flusher is None and self._delay is not None:
                self._start_flusher()
        if old is not None:  # that inode's earlier file is gone (its number is reused)
            self._unlink(old[0])

    def _make_dir(self) -> None:
        """The notes' dir, with the link that says which upper they are for (before any note)."""
        try:
            os.mkdir(DIRNAME, 0o700, dir_fd=self.work_fd)
        except FileExistsError:  # left by a crash between this mkdir and the open, say
            pass
        fd = os.open(DIRNAME, _DIR, dir_fd=self.work_fd)
        self._claim(fd)
        self.fd = fd

    def _claim(self, fd: int) -> str | None:
        """Point the ``upper`` link of the notes' dir ``fd`` at this upper; what it said before
        (None: there was none)."""
        try:
            upper = os.readlink(UPPER, dir_fd=fd)
        except FileNotFoundError:
            upper = None
        if upper != self._upper_root:
            if upper is not None:
                os.unlink(UPPER, dir_fd=fd)
            os.symlink(self._upper_root, UPPER, dir_fd=fd)
        return upper

    def lower_size(self, ino: int) -> int | None:
        """The size of the lower file the upper file ``ino`` was copied from, if its note stands."""
        with self._lock:
            found = self.notes.get(ino)
        return None if found is None else found[1]

    def drop(self, ino: int) -> None:
        """The upper file ``ino`` is durable (fsynced) or gone: its note goes."""
        with self._lock:
            found = self.notes.pop(ino, None)
        if found is not None:
            self._unlink(found[0])

    def sync(self) -> None:
        """Write the upper filesystem out, then remove the notes made before (blocks: a worker
        thread's job while mounted)."""
        with self._lock:
            covered = dict(self.notes)
        syncfs(self.upper_fd)
        with self._lock:
            for ino, note in covered.items():
                if self.notes.get(ino) == note:
                    del self.notes[ino]
        for name, _ in covered.values():
            self._unlink(name)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, copy_data: Callable[[int, int, int], None]) -> None:
        """Give the files of leftover notes that lost data in a crash their lower's data again."""
        left: dict[int, list[tuple[str, str]]] = {}  # upper inode -> [(note, lower path)]
        names = os.listdir(self.fd)
        upper = self._claim(self.fd)
        for name in names:
            if name == UPPER:
                continue
            try:
                left.setdefault(int(name.split(".")[0]), []).append((name, os.readlink(name, dir_fd=self.fd)))
            except (ValueError, OSError):
                log.warning("unsynced/%s: not a note of ours, left alone", name)
        if left and upper != self._upper_root:
            log.warning(
                "%d notes of copy-ups in another upper (%s): dropped",
                len(left),
                "inode " + upper if upper else "unknown",
            )
        elif left:
            self._restore_all(left, copy_data)
        for notes in left.values():
            for name, _ in notes:
                self._unlink(name)

    def _restore_all(self, left: dict[int, list[tuple[str, str]]], copy_data: Callable[[int, int, int], None]) -> None:
        for dfd, name, ino in self._files(set(left)):
            for _, lower in left[ino]:
                try:
                    _restore(dfd, name, lower, copy_data)
                except OSError as e:  # the mount goes on: one file must not keep the rest down
                    log.warning("cannot check %s against %s after a crash: %s", name, lower, e)

    def _files(self, inos: set[int]) -> Iterator[tuple[int, str, int]]:
        """(dir fd, name, inode) of the regular files of the upper whose inode is in ``inos``; the
        fd is valid until the next item. Walks by dir fd: paths of any length."""
        stack = [os.dup(self.upper_fd)]
        try:
            while stack and inos:
                dfd = stack.pop()
                try:
                    with os.scandir(dfd) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                try:
                                    stack.append(os.open(entry.name, _DIR, dir_fd=dfd))
                                except OSError:
                                    continue
                            elif entry.inode() in inos and entry.is_file(follow_symlinks=False):
                                inos.discard(entry.inode())
                                yield dfd, entry.name, entry.inode()
                finally:
                    os.close(dfd)
        finally:
            for dfd in stack:
                os.close(dfd)


def _restore(dfd: int, name: str, lower_path: str, copy_data: Callable[[int, int, int], None]) -> None:
    """Give ``name`` (in ``dfd``) the data of ``lower_path`` again if it lost some."""
    src = os.open(lower_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            was, lower = os.fstat(dst), os.fstat(src)
            if _kept_data(dst, was, src, lower):
                return
            log.warning("%s lost the data copied up from %s in a crash: copying it again", name, lower_path)
            copy_data(src, dst, lower.st_size)
            if stat.S_IMODE(os.fstat(dst).st_mode) != stat.S_IMODE(was.st_mode):  # a write drops setuid bits
                os.fchmod(dst, stat.S_IMODE(was.st_mode))
            os.utime(dst, ns=(was.st_atime_ns, was.st_mtime_ns))
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _first_hole(fd: int, size: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EINVAL):
            return size
        raise


def _kept_data(dst: int, was: os.stat_result, src: int, lower: os.stat_result) -> bool:
    """Did the upper copy keep its data? A write can grow a copy but not shrink it or punch holes,
    and a truncation below the lower's size drops the note first (see ``Journal``)."""
    if was.st_size < lower.st_size:
        return False
    return _first_hole(dst, was.st_size) >= min(_first_hole(src, lower.st_size), lower.st_size)

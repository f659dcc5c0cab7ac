"""``exec -t``'s terminal: a pty from the container's own devpts, the client's terminal in raw mode,
and the copy between them until the command ends. It does not start anything: ``init.join`` does.

*Caveats*: a pty that cannot be had from the container's ``/dev/pts/ptmx`` (no devpts there) falls
back to one of the host's, which the command sees as a terminal with no name (``tty`` says so).
"""

from __future__ import annotations

import os
import select
import signal
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ..oci.rootfs import pty_of


def container_pty(pid: int) -> tuple[int, int]:
    """(master, slave) of a new pty of the devpts instance mounted at the container's /dev/pts, so
    that the command finds its terminal as ``/dev/pts/N`` (a host pty has no name in there). Opened
    through ``/proc/PID/root``: ``dev`` and ``dev/pts`` there are mountpoints, which the container
    cannot swap for symlinks; the node itself must be a ptmx. Else a host pty."""
    try:
        return pty_of(os.open(f"/proc/{pid}/root/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC))
    except OSError:
        return os.openpty()


def copy_size(src: int, pty: int) -> None:
    """The pty takes the client's terminal size (which tells the command with SIGWINCH)."""
    try:
        termios.tcsetwinsize(pty, termios.tcgetwinsize(src))
    except (OSError, termios.error):  # output to a pipe or a file: no size to follow
        pass


@contextmanager
def raw(fd: int | None) -> Iterator[None]:
    """The client's terminal in raw mode (keys go to the command as they are), restored after."""
    saved = None
    if fd is not None and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
    try:
        yield
    finally:
        if saved is not None and fd is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def following_size(src: int, pty: int) -> Iterator[None]:
    """While in the block, a SIGWINCH (the client forwards its own) resizes the pty."""

    def resize(_signum: int, _frame: FrameType | None) -> None:
        copy_size(src, pty)

    previous = signal.signal(signal.SIGWINCH, resize)
    copy_size(src, pty)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to a blocking fd; False if it cannot take it (gone)."""
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        return False
    return True


def _feed(master: int, data: bytes, stdout: int) -> bool:
    """Write ``data`` to the (non-blocking) pty master; while it is full, read the pty too: a command
    that echoes what it reads would otherwise wait on us as we wait on it."""
    while data:
        try:
            data = data[os.write(master, data) :]
        except BlockingIOError:
            readable, _, _ = select.select([master], [master], [])
            if readable and not _drain(master, stdout):
                return False
        except OSError:
            return False
    return True


def relay(master: int, stdin: int | None, stdout: int, pidfd: int) -> None:
    """Copy ``stdin`` (None: nothing) to the pty and the pty to ``stdout`` until the process behind
    ``pidfd`` (the exec's helper, which ends with the command) has ended, then whatever the command
    left in the pty. A background process that keeps the pty open does not keep us here."""
    os.set_blocking(master, False)
    poller = select.poll()
    poller.register(master, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    if stdin is not None:
        poller.register(stdin, select.POLLIN)
    ended = False
    while not ended:
        for fd, events in poller.poll():
            if fd == pidfd:
                ended = True
            elif fd == master:
                if not _drain(master, stdout):
                    poller.unregister(master)
            elif fd == stdin:
                try:
                    data = os.read(stdin, 65536) if events & (select.POLLIN | select.POLLHUP) else b""
                except OSError:
                    data = b""
                if not data or not _feed(master, data, stdout):  # EOF: stop reading (a pty has no EOF to pass on)
                    poller.unregister(stdin)
                    stdin = None
    _drain(master, stdout)


def _drain(master: int, stdout: int) -> bool:
    """Copy what the pty holds now; False once no one holds its other side (EIO) or it is gone."""
    while True:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO: every fd of the slave is closed
            return False
        if not data:
            return False
        _write_all(stdout, data)

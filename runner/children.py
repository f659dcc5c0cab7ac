"""The runner's own processes: a detached one forked to outlive the command that made it (the
detached supervisor of ``run -d`` and ``start``), and a forked child that trio code waits for (the
container's init). unionfs has its own for its daemon: each package owns how it forks."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable

import trio


def fork_detached(body: Callable[[int], int], failure: int = 1, keep: tuple[int, ...] = ()) -> tuple[int, int]:
    """Fork a process of its own: its own session, stdio on /dev/null, no inherited fd but the write
    end of a pipe, which it gets as ``body``'s argument, and those in ``keep``; it exits with what
    ``body`` returns (``failure`` if it raises). Returns (pid, read end of the pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = failure
        try:
            # what it inherited lives until it exits: the collector leaves that heap alone (walking
            # it would cost milliseconds and dirty the pages it shares with its parent)
            gc.freeze()
            os.close(r)
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            low = 3
            for fd in sorted({w, *keep}):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 65536)
            code = body(w)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


class Child:
    """A child this process forked, held by a pidfd (its pid cannot be reused while we hold it),
    which trio code waits for and signals."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, sig)

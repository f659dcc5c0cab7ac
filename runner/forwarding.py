"""The signals a supervisor passes on to its container's PID 1, as ``docker run``'s sig-proxy does:
SIGTERM, SIGINT, SIGHUP (a client or terminal that went away), SIGQUIT, SIGUSR1, SIGUSR2; and
SIGWINCH, the attached terminal's resize, which goes to the container's pty instead.

From the start of the supervisor's trio run until its receiver listens they are *held* (blocked:
the kernel keeps them pending, even one whose disposition is SIG_IGN), then let through into the
receiver, which forwards them. One that came in between used to kill the supervisor by its default
action, and the container with it: the zygote's SIGHUP for a client killed as soon as it had read
the container's first line, which the output pumps can copy before the forwarder first runs. The
hold begins once everything is forked (``Supervisor.prepare``): a blocked signal stays blocked
across fork and exec, and the union daemon, PID 1 and pasta must take theirs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

FORWARDED = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH}
)


@contextmanager
def held() -> Iterator[None]:
    """Hold the forwarded signals from now until ``forward`` listens (it lets them through until the
    container ends); if it never does (the start failed), what is pending at the end of the block
    takes its course. Once it has, what came after the container's end was meant for the container
    and is dropped: it does not cut the clean-up short, nor kill the client after it."""
    global _forwarded
    _forwarded = False
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        yield
    finally:
        if _forwarded:
            while signal.sigtimedwait(FORWARDED, 0) is not None:
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_forwarded = False  # ``forward`` listened in the current ``held`` block


async def forward(
    pid: int, resize: Callable[[], None], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Forward the signals to ``pid`` (a second SIGINT or SIGTERM: SIGKILL, as PID 1 ignores a signal it
    has no handler for) and call ``resize`` on SIGWINCH, until cancelled; then they are held again.
    Those held until now come first: the receiver exists before they are let through."""
    global _forwarded
    with trio.open_signal_receiver(*FORWARDED) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        _forwarded = True
        task_status.started()
        interrupts = 0
        try:
            async for sig in signals:
                if sig == signal.SIGWINCH:
                    resize()
                    continue
                if sig in (signal.SIGINT, signal.SIGTERM):
                    interrupts += 1
                try:
                    os.kill(pid, signal.SIGKILL if interrupts > 1 else sig)
                except (ProcessLookupError, PermissionError):
                    pass
        finally:  # (before the receiver puts the default actions back)
            signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)

"""``--init``: PID 1 stays strata's, a reaper with the command as its child, as tini (Docker's
``docker-init``) does. No binary is needed in the image and none is bound in from the host: PID 1 is
the same forked process that set the container up, past its last step (user, capabilities,
no_new_privs, seccomp filter: the command and the reaper share them), forking just before the exec.

The reaper blocks every signal it forwards (and SIGCHLD) before the fork, then waits in
``sigwaitinfo``: a signal is sent on to the command (``stop``'s SIGTERM, a ``kill -s``), SIGCHLD
reaps every child that has ended (orphans re-parented to PID 1 included: no zombies pile up). When
the command ends, PID 1 exits with its status (128 + N for signal N, as tini), and the kernel ends
the rest of the PID namespace. The command runs in a process group of its own, which takes the
terminal's foreground for ``-t`` (so Ctrl-C reaches it, once).

*Caveats*: PID 1's memory is the host interpreter's (not dumpable: nothing in the container reaches
it without CAP_SYS_PTRACE, which ``--cap-add SYS_PTRACE`` and ``--privileged`` give). ``ps`` in the
container shows it as ``strata-init``.
"""

from __future__ import annotations

import ctypes
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of an import: the annotations alone use it)
    from typing import NoReturn

# not forwarded: what the kernel sends for a fault of PID 1 itself, what cannot be caught, and the
# terminal's stops for a background process (tini leaves these alone too)
_KEPT = {
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGABRT,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGKILL,
    signal.SIGSTOP,
}
_PR_SET_NAME = 15


def _forwarded() -> set[int]:
    return {int(s) for s in signal.valid_signals() if s not in _KEPT} - {signal.SIGCHLD}


def fork_command(tty: bool, status_fd: int) -> int:
    """Fork the command's process. Returns 0 in the child (which then execs, its signal mask as it
    was); in the parent (PID 1) it never returns: it closes ``status_fd`` (the runtime reads it to
    the end: the command's exec closes its copy) and reaps and forwards until the command ends."""
    watched = _forwarded() | {signal.SIGCHLD}
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        if tty:
            try:  # (SIGTTOU is blocked: a background group may take the terminal's foreground)
                os.tcsetpgrp(0, os.getpid())
            except OSError:
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
        return 0
    _reap(pid, watched, status_fd)


def _reap(child: int, watched: set[int], status_fd: int) -> NoReturn:
    _name(b"strata-init")
    for fd in (0, 1, 2, status_fd):  # the command holds its stdio; PID 1 keeps no pipe or terminal open
        try:
            os.close(fd)
        except OSError:
            pass
    status = None
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:  # SIGCHLD: reap whatever has ended (several may have, for one signal)
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child:
                status = wait_status
        if status is not None:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def _name(name: bytes) -> None:
    """What ``ps`` shows for PID 1: its comm, and its command line written over the interpreter's
    own (setproctitle's way: the argv strings are this process's memory; Python copied them at
    start), so that the host's command line and paths do not show in the container."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5): fields 48, 49)
        if end - start > len(name):
            ctypes.memmove(start, name + b"\0" * (end - start - len(name)), end - start)
    except (OSError, ValueError, IndexError):
        pass

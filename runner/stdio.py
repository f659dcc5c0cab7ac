"""A container's stdin, stdout and stderr, as its supervisor makes them: a pty for ``-t`` (made
by PID 1 in the container's own devpts and sent back on a console socket, as runc's), else pipes
(stdin: a pipe for ``-i``, else /dev/null); and the terminal size a ``-t`` container follows."""

from __future__ import annotations

import os
import socket
import termios
from dataclasses import dataclass
from typing import Any

import trio


@dataclass
class Attach:
    """The terminal or pipes of a foreground ``strata run``."""

    stdin: int | None  # fd to read the container's input from (-i), or None
    stdout: int
    stderr: int


@dataclass
class Stdio:
    child: tuple[int, int, int]  # the container's fds 0, 1, 2
    pumps: list[tuple[int, str, int | None]]  # (fd to read, log stream, attached fd to copy to)
    feed: int | None  # the attached stdin to copy into the container, for -i
    stdin: int  # where that goes: the pty master or the stdin pipe (-1: nowhere)
    close_stdin: bool  # a pipe is closed at EOF; a pty master is not
    console: int | None = None  # -t: our end of the console socket PID 1 sends the pty master on
    console_child: int | None = None  # and PID 1's end

    def set_size(self, size: tuple[int, int]) -> None:
        """The container's terminal takes on (rows, columns); nothing without one."""
        if self.console is not None and self.stdin >= 0:
            try:
                termios.tcsetwinsize(self.stdin, size)
            except (OSError, termios.error):
                pass

    async def receive_console(self, opened: list[int], out: int | None) -> None:
        """The pty master PID 1 sends once its root is set up: from then on it is the container's
        output (copied to ``out`` too) and (with -i) input; it joins ``opened``. Nothing arrives if
        PID 1 failed first: its status says why."""
        assert self.console is not None
        await trio.lowlevel.wait_readable(self.console)
        with socket.socket(fileno=os.dup(self.console)) as sock:
            _, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        if not fds:
            return
        master = fds[0]
        opened.append(master)
        self.pumps, self.stdin = [(master, "stdout", out)], master


def make_stdio(config: dict[str, Any], attach: Attach | None, opened: list[int]) -> Stdio:
    """The container's stdio for its record ``config``; every fd made is appended to ``opened``
    (closed by the caller)."""
    cfg = config["Config"]
    out = attach.stdout if attach else None
    err = attach.stderr if attach else None
    feed = attach.stdin if attach is not None and cfg["OpenStdin"] else None
    if cfg["Tty"]:
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        null = os.open(os.devnull, os.O_RDWR)
        opened += [ours, theirs, null]
        return Stdio((null, null, null), [], feed, -1, False, console=ours, console_child=theirs)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    opened += [out_r, out_w, err_r, err_w]
    if cfg["OpenStdin"]:
        in_r, in_w = os.pipe()
        opened += [in_r, in_w]
    else:
        in_r, in_w = os.open(os.devnull, os.O_RDONLY), -1
        opened.append(in_r)
    return Stdio((in_r, out_w, err_w), [(out_r, "stdout", out), (err_r, "stderr", err)], feed, in_w, True)


def terminal_size(config: dict[str, Any], attach: Attach | None) -> tuple[int, int] | None:
    """The attached terminal's (rows, columns), which a -t container's pty follows."""
    if attach is not None and config["Config"]["Tty"]:
        try:
            return termios.tcgetwinsize(attach.stdout)
        except (OSError, termios.error):  # output to a pipe or file: no size to follow
            pass
    return None

"""``strata attach``, and the client side of ``run -it`` and of a foreground ``run --restart``: the
container's output to this terminal, this terminal's keys to the container (raw, with -t), its size
and (without -t) its signals passed on, through the supervisor's attach socket (``runner.hub``),
until the container ends (its exit code is ours) or the detach keys are typed (default Ctrl-P
Ctrl-Q: the container goes on; ``read escape sequence``, exit 0, as Docker's CLI)."""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import termios
from types import FrameType
from typing import Any

from store import Store

from .. import hub, lifecycle
from ..containers import Container, Containers
from ..errors import ContainerConflict
from . import terminal
from .runflags import DEFAULT_DETACH_KEYS, detach_keys

_DETACHED = -(2**40)  # _relay's word for the detach keys (no exit code is this)
PROXIED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class _Escape:
    """Docker's escape proxy: bytes that may begin the detach sequence are held back until it is
    complete (detach) or broken (they go on, with what broke it)."""

    def __init__(self, keys: bytes | None) -> None:
        self.keys = keys or b""
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send, detach?)."""
        if not self.keys:
            return data, False
        out = b""
        for byte in data:
            candidate = self.held + bytes([byte])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    return out, True
                self.held = candidate
            else:
                out += candidate
                self.held = b""
        return out, False


def _size(fd: int) -> tuple[int, int] | None:
    try:
        return termios.tcgetwinsize(fd)
    except (OSError, termios.error):
        return None


def session(
    sock: socket.socket, stdin: int | None, tty: bool, keys: bytes | None, close_stdin: bool, proxy: bool
) -> int | None:
    """Relay until the container ends (its exit code) or the detach keys (None); the connection is
    closed after. ``stdin``: the fd to read the container's input from (None: none); ``tty``: this
    terminal goes raw and its size follows; ``proxy``: this process's signals go to PID 1."""
    sock.sendall(hub.frame(b"h", json.dumps({"stdin": stdin is not None, "close_stdin": close_stdin}).encode()))
    previous: dict[int, Any] = {}  # signal number -> the handler it had

    def resize(_signum: int, _frame: FrameType | None) -> None:
        if (size := _size(1)) is not None:
            try:
                sock.sendall(hub.size_frame(*size))
            except OSError:
                pass

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            sock.sendall(hub.signal_frame(signum))
        except OSError:
            pass

    if tty:
        previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resize)
        resize(signal.SIGWINCH, None)
    if proxy and not tty:
        for sig in PROXIED:
            previous[sig] = signal.signal(sig, forward)
    try:
        with terminal.raw(stdin if tty else None):
            code = _relay(sock, stdin, _Escape(keys if stdin is not None and tty else None))
        if code == _DETACHED:
            print("read escape sequence", file=sys.stderr)  # (the terminal is itself again)
            return None
        return code
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        sock.close()


def _relay(sock: socket.socket, stdin: int | None, escape: _Escape) -> int | None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if stdin is not None:
        poller.register(stdin, select.POLLIN)
    buf = b""
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        for fd, events in ready:
            if fd == stdin:
                try:
                    data = os.read(stdin, 65536) if events & (select.POLLIN | select.POLLHUP) else b""
                except OSError:
                    data = b""
                if not data:
                    poller.unregister(stdin)
                    stdin = None
                    sock.sendall(hub.frame(b"e"))
                    continue
                data, detach = escape.feed(data)
                if data:
                    sock.sendall(hub.frame(b"i", data))
                if detach:
                    return _DETACHED
                continue
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 5:
                kind, length = buf[:1], int.from_bytes(buf[1:5], "big")
                if len(buf) < 5 + length:
                    break
                payload, buf = buf[5 : 5 + length], buf[5 + length :]
                if kind == b"x":
                    return int.from_bytes(payload, "big", signed=True)
                if kind in (b"o", b"r"):
                    _write_all(1 if kind == b"o" else 2, payload)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except BlockingIOError:  # a terminal left non-blocking by someone: wait until it takes more
        select.select([], [fd], [])
        _write_all(fd, data)
    except OSError:  # the terminal went away: the container goes on
        pass


def attach(
    container: Container,
    stdin: bool,
    keys: bytes | None,
    proxy: bool,
    close_stdin: bool = False,
    sock: socket.socket | None = None,
) -> int:
    """Attach this process's stdio to ``container`` (``sock``: connected already); its exit code, or
    0 once detached (the container goes on)."""
    tty = bool(container.config["Config"]["Tty"])
    if sock is None:
        try:
            sock = hub.connect(container.dir)
        except OSError:
            raise ContainerConflict("You cannot attach to a stopped container, start it first") from None
    sys.stdout.flush()
    code = session(sock, 0 if stdin else None, tty and os.isatty(0), keys, close_stdin, proxy)
    if code is None:  # detached, or the supervisor went without a word: the state says
        state = container.state()
        return 0 if state.get("Running") else int(state.get("ExitCode", 0))
    return code


def run_through_supervisor(root: str, container: Container, args: argparse.Namespace) -> int:
    """``run -it`` (or a foreground ``run --restart``): the container under a detached supervisor
    (which outlives a detach, and keeps the restart policy), attached from its start."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    size = _size(1) if args.tty else None
    try:
        lifecycle.start_detached(root, container, client=theirs.fileno(), console_size=size)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    keys = detach_keys(args.detach_keys or DEFAULT_DETACH_KEYS)
    return attach(container, bool(args.interactive), keys, proxy=True, close_stdin=True, sock=ours)


def cmd_attach(store: Store, args: argparse.Namespace) -> int:
    c = Containers(store.root.path).get(args.container)
    state = c.state()
    if not state.get("Running"):
        raise ContainerConflict("You cannot attach to a stopped container, start it first")
    if state.get("Paused"):
        raise ContainerConflict("You cannot attach to a paused container, unpause it first")
    stdin = not args.no_stdin and bool(c.config["Config"]["OpenStdin"])
    if stdin and c.config["Config"]["Tty"] and not os.isatty(0):
        print("the input device is not a TTY", file=sys.stderr)
        return 1
    keys = detach_keys(args.detach_keys or DEFAULT_DETACH_KEYS)
    return attach(c, stdin, keys, proxy=args.sig_proxy.lower() not in ("false", "0"))


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "attach",
        help="attach this terminal to a running container's input and output",
        description="Attach to a running container: its output here, your input to it (if it "
        "was started with -i); the detach keys leave it running.",
    )
    p.add_argument("--no-stdin", action="store_true", help="do not send this terminal's input to it")
    p.add_argument(
        "--detach-keys",
        dest="detach_keys",
        metavar="KEYS",
        help=f"the keys that detach (default {DEFAULT_DETACH_KEYS})",
    )
    p.add_argument(
        "--sig-proxy",
        dest="sig_proxy",
        default="true",
        metavar="BOOL",
        help="pass the signals this command gets to the container (not with -t; default true)",
    )
    p.add_argument("container", help="a running container: a name or an id (prefix)")
    p.set_defaults(func=cmd_attach)

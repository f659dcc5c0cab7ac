"""Attaching to a running container's stdio (``strata attach``, ``run -it``): its supervisor listens
on ``containers/<id>/attach.sock`` (bound and reached through an ``O_PATH`` fd of the container's
directory, so that no path length limit applies) and relays, to every client, what the container
writes, and from them what it reads. A client whose uid is neither the supervisor's nor root's is
turned away (``SO_PEERCRED``), on top of the directory's own mode.

Frames, both ways: one byte of kind, four of length (big-endian), the payload.

    client -> supervisor   h  hello: JSON {"stdin": bool, "close_stdin": bool} (first, once)
                           i  bytes for the container's stdin (its pipe, or its terminal)
                           e  the client's stdin ended: with close_stdin the container's pipe is
                              closed (``run -i``'s end of input; a terminal has no end)
                           w  the client's terminal size: rows, columns (two 16-bit numbers)
                           s  a signal for PID 1 (a 32-bit number): the client's own, passed on
    supervisor -> client   o  stdout (with -t: the terminal's output)   r  stderr
                           x  the container ended: its exit code (a 32-bit signed number), last

A client that cannot keep up (``BUFFERED`` frames behind) is dropped, never waited for: the
container's output is not held up by a stopped terminal. The supervisor side runs in its trio loop
(``Hub``); the client side is plain blocking code (``connect``, ``read_frame``, ``frame``).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

SOCKET = "attach.sock"
BUFFERED = 1024  # frames a client may fall behind by before it is dropped
_HEADER = struct.Struct(">cI")


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def exit_frame(code: int) -> bytes:
    return frame(b"x", struct.pack(">i", code))


def size_frame(rows: int, columns: int) -> bytes:
    return frame(b"w", struct.pack(">HH", rows, columns))


def signal_frame(number: int) -> bytes:
    return frame(b"s", struct.pack(">i", number))


def _dir_fd(container_dir: str) -> int:
    return os.open(container_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def listen(container_dir: str) -> socket.socket:
    """The supervisor's listening socket, made afresh (a dead supervisor's is replaced)."""
    fd = _dir_fd(container_dir)
    try:
        path = f"/proc/self/fd/{fd}/{SOCKET}"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


def connect(container_dir: str) -> socket.socket:
    """A client's connection to the container's supervisor (``OSError``: none listens)."""
    fd = _dir_fd(container_dir)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(f"/proc/self/fd/{fd}/{SOCKET}")
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


def read_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next frame (kind, payload), blocking; None at the end of the connection."""
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    kind, length = _HEADER.unpack(header)
    payload = _read_exactly(sock, length) if length else b""
    return None if payload is None else (kind, payload)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


# -- the supervisor's side ---------------------------------------------------------------------------
@dataclass
class _Client:
    stream: trio.SocketStream
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    stdin: bool = False
    close_stdin: bool = False
    gone: bool = False


@dataclass
class Hub:
    """The supervisor's clients. ``on_input(data)`` takes bytes for the container's stdin (b"" for its
    end), ``on_resize(rows, columns)`` a terminal size, ``on_signal(number)`` a signal for PID 1."""

    on_input: Callable[[bytes], None]
    on_resize: Callable[[int, int], None]
    on_signal: Callable[[int], None]
    clients: list[_Client] = field(default_factory=list)
    nursery: trio.Nursery | None = None

    def broadcast(self, kind: bytes, data: bytes) -> None:
        """Send a frame to every client (dropping those too far behind)."""
        message = frame(kind, data)
        for client in list(self.clients):
            try:
                client.send.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        client.gone = True
        client.send.close()

    async def serve(
        self, listener: socket.socket, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept clients until cancelled (started with ``nursery.start``: ``adopt`` may be called
        once it returns)."""
        sock = trio.socket.from_stdlib_socket(listener)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            while True:
                conn, _ = await sock.accept()
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid not in (0, os.geteuid()):
                    conn.close()
                    continue
                nursery.start_soon(self._client, trio.SocketStream(conn))

    def adopt(self, sock: socket.socket) -> None:
        """A client connected before the container started (``run -it``'s): its frames wait for
        ``serve``'s nursery."""
        assert self.nursery is not None
        self.nursery.start_soon(self._client, trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    async def _client(self, stream: trio.SocketStream) -> None:
        """One client: its frames to the container, the container's to it, until either side ends
        (it disconnects, or ``finish`` has sent it everything)."""
        send, receive = trio.open_memory_channel[bytes](BUFFERED)
        client = _Client(stream, send, receive)
        self.clients.append(client)
        async with stream, trio.open_nursery() as nursery:

            async def write() -> None:
                async with receive:
                    async for message in receive:
                        try:
                            await stream.send_all(message)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                nursery.cancel_scope.cancel()

            async def read() -> None:
                await self._read(client)
                nursery.cancel_scope.cancel()

            nursery.start_soon(write)
            nursery.start_soon(read)
        self._drop(client)

    async def _read(self, client: _Client) -> None:
        buf = b""
        while True:
            try:
                data = await client.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if client.stdin and client.close_stdin:
                    self.on_input(b"")
                return
            buf += data
            while len(buf) >= _HEADER.size:
                kind, length = _HEADER.unpack(buf[: _HEADER.size])
                if len(buf) < _HEADER.size + length:
                    break
                payload, buf = buf[_HEADER.size : _HEADER.size + length], buf[_HEADER.size + length :]
                self._take(client, kind, payload)

    def _take(self, client: _Client, kind: bytes, payload: bytes) -> None:
        if kind == b"h":
            try:
                hello = json.loads(payload)
            except ValueError:
                return
            client.stdin, client.close_stdin = bool(hello.get("stdin")), bool(hello.get("close_stdin"))
        elif kind == b"i" and client.stdin and payload:
            self.on_input(payload)
        elif kind == b"e" and client.stdin and client.close_stdin:
            self.on_input(b"")
        elif kind == b"w" and len(payload) == 4:
            self.on_resize(*struct.unpack(">HH", payload))
        elif kind == b"s" and len(payload) == 4:
            self.on_signal(struct.unpack(">i", payload)[0])

    async def finish(self, code: int) -> None:
        """The container ended with ``code``: every client gets its output's rest, then the code;
        then their connections close."""
        message = exit_frame(code)
        for client in list(self.clients):
            try:
                client.send.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            client.send.close()
        with trio.move_on_after(5):  # (a client that reads nothing is not waited for long)
            while self.clients:
                await trio.sleep(0.01)

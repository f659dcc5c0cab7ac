"""A container's output: Docker's json-file log (``container.log``: one JSON object a line, split at
newlines, per stream), and the copies that a supervisor's tasks make of its pipes or pty, to the log,
an attached terminal and attached clients (``runner.hub``), and of an attached stdin into it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import trio

from store.images import now

from . import hub


class JsonLog:
    """Docker's json-file driver: one JSON object a line, split at newlines, per stream."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "ab", buffering=0)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.lost = 0  # bytes of output a full disk (or another write error) kept out of the log

    def _append(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError:  # a full disk: the container goes on, its output is lost (json-file does so)
            self.lost += len(data)

    def write(self, stream: str, data: bytes) -> None:
        buf = self.partial[stream] + data
        *lines, rest = buf.split(b"\n")
        out = []
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for line in lines:
            out.append(json.dumps({"log": (line + b"\n").decode(errors="replace"), "stream": stream, "time": stamp}))
        if len(rest) > 16384:
            out.append(json.dumps({"log": rest.decode(errors="replace"), "stream": stream, "time": stamp}))
            rest = b""
        self.partial[stream] = rest
        if out:
            self._append(("\n".join(out) + "\n").encode())

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._append(
                    (
                        json.dumps({"log": rest.decode(errors="replace"), "stream": stream, "time": now()}) + "\n"
                    ).encode()
                )
        try:
            self.file.close()
        except OSError:
            pass


async def pump_output(src: int, stream: str, log: JsonLog, out: int | None, clients: hub.Hub | None = None) -> None:
    """Copy a pipe or pty master to the log (and the attached terminal, and attached clients) until EOF."""
    reader = trio.lowlevel.FdStream(os.dup(src))
    async with reader:
        while True:
            try:
                data = await reader.receive_some(65536)
            except (trio.BrokenResourceError, OSError):  # a pty master reads EIO once the slave is gone
                return
            if not data:
                return
            log.write(stream, data)
            if clients is not None:
                clients.broadcast(b"o" if stream == "stdout" else b"r", data)
            if out is not None:
                try:
                    os.write(out, data)
                except OSError:  # the terminal went away: keep logging
                    out = None


async def feed_input(src: int, dst: int, on_eof_close: bool) -> None:
    """Copy the attached stdin to the container's stdin (pipe or pty master)."""
    reader = trio.lowlevel.FdStream(os.dup(src))
    writer = trio.lowlevel.FdStream(os.dup(dst))
    async with reader, writer:
        while True:
            try:
                data = await reader.receive_some(65536)
            except (trio.BrokenResourceError, OSError):
                break
            if not data:
                break
            try:
                await writer.send_all(data)
            except (trio.BrokenResourceError, OSError):
                break
    if on_eof_close:
        try:
            os.close(dst)
        except OSError:
            pass

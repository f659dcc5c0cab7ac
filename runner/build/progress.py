"""A build's progress, as BuildKit's ``--progress`` prints it (the only printing this package does).

``plain``: each step (a *vertex*) is numbered in the order it starts, its lines prefixed ``#N``::

    #5 [2/4] RUN echo hello
    #5 0.215 hello
    #5 DONE 0.3s

with ``#N CACHED`` for a step the cache gave, ``#N ERROR: ...`` for one that failed, a status line
(``#1 transferring dockerfile: 118B done``) where BuildKit has one, and a blank line after each.
``tty``: one line a finished step (`` => [2/4] RUN echo hello   0.3s``, ``=> CACHED ...``), the
output of a failed step, and BuildKit's ``[+] Building 1.2s (7/7) FINISHED``; nothing is redrawn.
``quiet``: nothing (``-q``). Warnings go out in every mode but quiet.
"""

from __future__ import annotations

import time
from typing import TextIO

STATUS_INTERVAL = 1.0  # seconds between two status lines of one long transfer


def size(n: float) -> str:
    """go-units HumanSize, as BuildKit prints sizes: ``118B``, ``2.048kB``, ``12.35MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}TB"


class Progress:
    def __init__(self, stream: TextIO, mode: str) -> None:
        self.stream, self.mode = stream, mode
        self.count = 0
        self.started = time.monotonic()
        self.finished = 0

    def write(self, text: str) -> None:
        if self.mode != "quiet":
            self.stream.write(text)
            self.stream.flush()

    def vertex(self, name: str) -> Vertex:
        self.count += 1
        return Vertex(self, self.count, name)

    def warn(self, text: str) -> None:
        self.write(f"{text}\n" if self.mode == "tty" else f"#0 {text}\n\n" if self.mode == "plain" else "")

    def summary(self, ok: bool) -> None:
        if self.mode == "tty":
            elapsed = time.monotonic() - self.started
            self.write(f"[+] Building {elapsed:.1f}s ({self.finished}/{self.count}) {'FINISHED' if ok else 'FAILED'}\n")


class Vertex:
    def __init__(self, progress: Progress, number: int, name: str) -> None:
        self.p, self.n, self.name = progress, number, name
        self.started = time.monotonic()
        self.partial = b""
        self.lines: list[str] = []  # kept for tty, which shows a failed step's output
        self.last_status = self.started  # an unfinished status only once the step has taken a second
        if progress.mode == "plain":
            progress.write(f"#{number} {name}\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status(self, text: str, done: bool = False, force: bool = False) -> None:
        """A status line (``transferring context: 2.5MB``); an unfinished one at most once a second."""
        now = time.monotonic()
        if not done and not force and now - self.last_status < STATUS_INTERVAL:
            return
        self.last_status = now
        if self.p.mode == "plain":
            self.p.write(f"#{self.n} {text}{' done' if done else f' {self.elapsed():.1f}s'}\n")

    def log(self, data: bytes) -> None:
        """Output of the step's command, by whole lines."""
        self.partial += data
        *whole, self.partial = self.partial.split(b"\n")
        for line in whole:
            self._line(line)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        self.lines.append(text)
        del self.lines[:-50]
        if self.p.mode == "plain":
            self.p.write(f"#{self.n} {self.elapsed():.3f} {text}\n")

    def _flush(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""

    def done(self) -> None:
        self._flush()
        self.p.finished += 1
        if self.p.mode == "plain":
            self.p.write(f"#{self.n} DONE {self.elapsed():.1f}s\n\n")
        elif self.p.mode == "tty":
            self.p.write(f" => {self.name:<60} {self.elapsed():.1f}s\n")

    def cached(self) -> None:
        self.p.finished += 1
        if self.p.mode == "plain":
            self.p.write(f"#{self.n} CACHED\n\n")
        elif self.p.mode == "tty":
            self.p.write(f" => CACHED {self.name}\n")

    def error(self, message: str) -> None:
        self._flush()
        if self.p.mode == "plain":
            self.p.write(f"#{self.n} ERROR: {message}\n\n")
        elif self.p.mode == "tty":
            self.p.write(f" => ERROR {self.name:<54} {self.elapsed():.1f}s\n")
            if self.lines:
                self.p.write(
                    "------\n" + f" > {self.name}:\n" + "".join(f"{line}\n" for line in self.lines[-10:]) + "------\n"
                )

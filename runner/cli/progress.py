"""Progress on a terminal, as Docker and podman draw it: one line per layer (``ID: Loading [==>  ]
1.2MB/4.5MB``), redrawn in place at most ten times a second, ending with each line's final state
(``ID: Loaded 4.5MB``). Off a terminal: nothing at all."""

from __future__ import annotations

import os
import time
from typing import TextIO

from .format import human_size

INTERVAL = 0.1  # seconds between redraws: a fast load calls back thousands of times a second
WIDTH = 40  # of the bar


class Bars:
    """The store's ``progress(item, done, total)``; ``finish()`` draws the last state once more."""

    def __init__(self, stream: TextIO, doing: str, done: str) -> None:
        self.stream, self.doing, self.done_word = stream, doing, done
        self.items: dict[str, tuple[int, int]] = {}  # in the order they came
        self.drawn = 0  # lines on the screen that are ours
        self.last = 0.0
        self.redraws = 0

    def __call__(self, item: str, done: int, total: int) -> None:
        self.items[item] = (done, total)
        now = time.monotonic()
        if now - self.last >= INTERVAL:
            self.last = now
            self._draw(final=False)

    def finish(self, ok: bool = True) -> None:
        if self.items:
            self._draw(final=ok)

    def _line(self, item: str, done: int, total: int, final: bool) -> str:
        if final:
            return f"{item}: {self.done_word} {human_size(total or done)}"
        if not total:
            return f"{item}: {self.doing} {human_size(done)}"
        filled = min(WIDTH, WIDTH * done // total)
        bar = "=" * filled + (">" if filled < WIDTH else "") + " " * (WIDTH - filled - 1)
        return f"{item}: {self.doing} [{bar}] {human_size(done)}/{human_size(total)}"

    def _draw(self, final: bool) -> None:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns or 80  # 0: a pty nobody sized
        except (OSError, ValueError):
            columns = 80
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # to the start of our first line
        lines = [self._line(item, d, t, final)[: max(columns - 1, 10)] for item, (d, t) in self.items.items()]
        self.stream.write(up + "".join(f"{line}\x1b[K\n" for line in lines))  # no wrapped line: the count holds
        self.stream.flush()
        self.drawn = len(lines)
        self.redraws += 1

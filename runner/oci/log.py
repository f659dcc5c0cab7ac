"""``strata-oci``'s messages as runc writes them: one line on stderr for an error, and with ``--log
FILE`` a logrus line in that file (``--log-format text``: ``time="…" level=error msg="…"``; ``json``:
``{"level": "error", "msg": …, "time": …}``, which containerd and podman read back). Shared by
``cli.py`` and ``entry.py``'s shortcuts, so that both say a failure alike; it imports no ``json``.
"""

from __future__ import annotations

import sys
import time

from .. import cjson


def now() -> str:
    """The time as runc writes it (RFC 3339, UTC, microseconds); ``datetime``'s import is ~2 ms of a
    create."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1_000_000):06d}Z"


class Log:
    """``--log FILE`` / ``--log-format text|json`` / ``--debug``: runc's logrus lines."""

    def __init__(self, path: str | None, fmt: str, debug: bool) -> None:
        self.path, self.fmt, self.debug_on = path, fmt, debug

    def _line(self, level: str, msg: str) -> str:
        if self.fmt == "json":
            return cjson.dumps({"level": level, "msg": msg, "time": now()})
        return f'time="{now()}" level={level} msg={cjson.dumps(msg)}'

    def _write(self, level: str, msg: str) -> None:
        if self.path:
            try:
                with open(self.path, "a") as f:
                    f.write(self._line(level, msg) + "\n")
            except OSError:
                pass
        elif level != "error":
            print(self._line(level, msg), file=sys.stderr)

    def error(self, msg: str) -> None:
        print(f"strata-oci: {msg}", file=sys.stderr)
        self._write("error", msg)

    def warning(self, msg: str) -> None:
        self._write("warning", msg)

    def debug(self, msg: str) -> None:
        if self.debug_on:
            self._write("debug", msg)

"""Container lifecycle events, as ``docker events`` reports them: one JSON object a line in
``ROOT/events.log``, appended by whatever makes the event happen (``run``/``create``: create; the
supervisor: start, die, oom; ``runner.lifecycle``: kill, stop, pause, unpause, rename; removing a
record: destroy), read back and followed by ``strata events``.

    {"status": "die", "id": ID, "from": IMAGE, "Type": "container", "Action": "die",
     "Actor": {"ID": ID, "Attributes": {"exitCode": "0", "image": IMAGE, "name": NAME, LABELS...}},
     "scope": "local", "time": SECONDS, "timeNano": NANOSECONDS}

Each event is one ``write`` of one line to a file opened ``O_APPEND``: writers never interleave.
The log is capped: past ``MAX_SIZE`` a writer moves it to ``events.log.1`` (the one before goes),
under a lock; a reader that follows notices the new file and goes on in it.

*Caveats*: an event is recorded once its change is done, so a reader may see ``stop`` after the
``die`` it caused (Docker's order too); a host crash may lose the last events (not fsynced).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

LOG = "events.log"
MAX_SIZE = 4 << 20  # bytes: the log is moved aside past this
POLL = 0.05  # seconds between looks at a followed log


def _path(root: str) -> str:
    return os.path.join(root, LOG)


def event(action: str, config: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    """The event ``action`` of the container whose record is ``config`` (its labels ride along as
    attributes, as Docker's)."""
    now = time.time_ns()
    cid = str(config.get("Id", ""))
    image = str(config.get("ImageRef") or config.get("Image") or "")
    attrs = {
        **{str(k): str(v) for k, v in ((config.get("Config") or {}).get("Labels") or {}).items()},
        "image": image,
        "name": str(config.get("Name", "")),
        **{k: str(v) for k, v in attributes.items()},
    }
    return {
        "status": action,
        "id": cid,
        "from": image,
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": attrs},
        "scope": "local",
        "time": now // 10**9,
        "timeNano": now,
    }


def record(root: str, action: str, config: dict[str, Any], **attributes: Any) -> None:
    """Append an event. Never fails the action it reports: a log that cannot be written (a full
    disk) loses the event."""
    line = (json.dumps(event(action, config, **attributes), sort_keys=True) + "\n").encode()
    path = _path(root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size > MAX_SIZE:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.replace(path, path + ".1")  # the next writer makes a new log
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lines(path: str) -> Iterator[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.endswith(b"\n"):
                    try:
                        yield json.loads(raw)
                    except ValueError:
                        continue
    except FileNotFoundError:
        return


def past(root: str) -> list[dict[str, Any]]:
    """Every event the log still holds, oldest first."""
    return [*_lines(_path(root) + ".1"), *_lines(_path(root))]


def _open(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _moved(f: BinaryIO, path: str) -> bool:
    try:
        return not os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return True


def _parsed(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        try:
            yield json.loads(raw)
        except ValueError:
            continue


def follow(root: str, stop: float | None = None) -> Iterator[dict[str, Any] | None]:
    """The events appended from now on, as they come (the log is polled), until ``stop`` (a time in
    seconds; None: for ever). Yields None at each look, so that a caller can watch the clock."""
    path = _path(root)
    f = _open(path)
    if f is not None:
        f.seek(0, os.SEEK_END)
    buf = b""
    try:
        while stop is None or time.time() < stop:
            if f is None:
                f = _open(path)  # made since we started: every line in it is new
            if f is not None:
                buf += f.read()
                *lines, buf = buf.split(b"\n")
                yield from _parsed(lines)
                if _moved(f, path):  # moved aside: the rest of it, then the new log from its start
                    *lines, _ = (buf + f.read()).split(b"\n")
                    yield from _parsed(lines)
                    f.close()
                    f, buf = _open(path), b""
            yield None
            time.sleep(POLL)
    finally:
        if f is not None:
            f.close()

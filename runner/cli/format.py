"""Docker's ways of showing sizes, ages and tables (docker/go-units and the CLI's tabwriter)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from store.images import parse_time

_UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]


def human_size(size: float) -> str:
    """go-units HumanSizeWithPrecision(size, 3): decimal units, 3 significant digits."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.3g}{_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def parse_when(value: object) -> datetime | None:
    """An RFC 3339 time from a config or state file; None when absent, zero (0001-…) or malformed."""
    if not isinstance(value, str) or not value or value.startswith("0001"):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def since(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "N/A"
    now = now or datetime.now(UTC)
    return human_duration((now - when).total_seconds()) + " ago"


def quoted(text: str) -> str:
    """A value in a message, as Go's %q shows it: in double quotes, on one line, escapes for what
    cannot be printed as it is (a newline, a NUL)."""
    return json.dumps(text, ensure_ascii=False)


def ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The CLI's tabwriter (minwidth 10, padding 3); the last column is not padded."""
    cols = len(header)
    widths = [max(10, max(len(r[i]) for r in [header, *rows]) + 3) for i in range(cols - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(cols - 1)] + [row[-1]]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)

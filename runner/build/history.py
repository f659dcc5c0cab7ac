"""The strings Docker's classic builder writes into an image's history, and the Go formatting they
come from (pure).

Each step's ``created_by`` is its probe command joined by spaces (moby ``image.NewChildImage``):
a metadata step's probe is ``SHELL + ["#(nop) ", COMMENT]`` (hence two spaces: ``/bin/sh -c #(nop)
ENV a=b`` after ``#(nop)``), WORKDIR's, COPY's and ADD's is ``SHELL + ["#(nop) " + COMMENT]`` (one
space; COPY's comment ends with a space), RUN's is the command itself, after ``|N K=V...`` when
build args are in scope. Comments use Go's ``%q`` and ``%v`` (``CMD ["sh" "-c" "x"]``,
``VOLUME [/data]``, ``HEALTHCHECK &{["CMD-SHELL" "x"] "5s" "3s" "0s" "0s" '\\x00'}``).
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_SHELL = ["/bin/sh", "-c"]
_NAMED = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-zµμ]+)")


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out) + '"'


def go_quote_rune(value: int) -> str:
    """Go's ``%q`` of an int: a quoted rune literal (``'\\x03'``)."""
    ch = chr(value)
    if ch == "'":
        return "'\\''"
    if ch == "\\":
        return "'\\\\'"
    if ch in _NAMED:
        return f"'{_NAMED[ch]}'"
    if ch.isprintable():
        return f"'{ch}'"
    return f"'\\x{value:02x}'" if value < 0x80 else f"'\\u{value:04x}'"


def go_strings_q(items: list[str] | None) -> str:
    """``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items or []) + "]"


def go_strings_v(items: list[str] | None) -> str:
    """``%v`` of a ``[]string``: ``[a b]``."""
    return "[" + " ".join(items or []) + "]"


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` -> nanoseconds (``ValueError`` as Go's words)."""
    original = text
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text == "0":
        return 0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m or not m[1] or m[1] == ".":
            raise ValueError(f'time: invalid duration "{original}"')
        if m[2] not in _UNITS:
            raise ValueError(f'time: unknown unit "{m[2]}" in duration "{original}"')
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    return sign * int(round(total))


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``0s``, ``500ms``, ``1.5s``, ``1m30s``, ``1h0m0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        if u < 1_000:
            return f"{sign}{u}ns"
        if u < 1_000_000:
            return f"{sign}{_frac(u, 3)}µs"
        return f"{sign}{_frac(u, 6)}ms"
    seconds, rest = divmod(u, 1_000_000_000)
    text = f"{seconds % 60}" + (("." + f"{rest:09d}".rstrip("0")) if rest else "") + "s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        hours = minutes // 60
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def _frac(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    return f"{whole}" + (("." + f"{rest:0{digits}d}".rstrip("0")) if rest else "")


def healthcheck_q(health: dict[str, Any]) -> str:
    """``%q`` of a ``*HealthConfig`` (Test, Interval, Timeout, StartPeriod, StartInterval, Retries)."""
    durations = " ".join(
        go_quote(go_duration(int(health.get(k, 0)))) for k in ("Interval", "Timeout", "StartPeriod", "StartInterval")
    )
    return f"&{{{go_strings_q(health.get('Test'))} {durations} {go_quote_rune(int(health.get('Retries', 0)))}}}"


def nop(shell: list[str] | None, comment: str) -> list[str]:
    """A metadata step's probe command (withCmdComment)."""
    return [*(shell or DEFAULT_SHELL), "#(nop) ", comment]


def nop_string(shell: list[str] | None, comment: str) -> list[str]:
    """WORKDIR's, COPY's and ADD's probe command (withCmdCommentString)."""
    return [*(shell or DEFAULT_SHELL), "#(nop) " + comment]


def with_build_args(args: list[str], cmd: list[str]) -> list[str]:
    """RUN's probe command when build args are in scope (prependEnvOnCmd): ``|N`` and the sorted
    ``K=V`` pairs first."""
    if not args:
        return cmd
    pairs = sorted(args)
    return [f"|{len(pairs)}", *pairs, *cmd]

"""``.dockerignore``: which context paths a build may not see, with Docker's rules (moby's
``patternmatcher`` and its ``ignorefile`` reader; pure).

Reading: one pattern a line; lines starting with ``#`` are comments; white space trimmed; a leading
``!`` makes an exception; each pattern is cleaned as Go's ``filepath.Clean`` does and loses a leading
``/``. Matching (``MatchesOrParentMatches``): a path is excluded when the last pattern that matches it
or one of its parent directories is not an exception. ``*`` and ``?`` never cross a ``/``; ``**``
crosses any number of directories (``**/x`` also matches ``x``; a trailing ``**`` matches
everything below); ``[a-z]`` classes and ``\\`` escapes as ``filepath.Match``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = set(".+()|{}$")


def clean(path: str) -> str:
    """Go's ``path.Clean``: one slash between names, no ``.``, ``..`` resolved lexically."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    text = "/".join(out)
    return ("/" + text) if rooted else (text or ".")


def read_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, as moby's ``ignorefile.ReadAll`` gives them."""
    patterns = []
    for n, line in enumerate(text.split("\n")):
        if n == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append(("!" if invert else "") + pattern)
    return patterns


@dataclass
class _Pattern:
    text: str
    exclusion: bool
    kind: str  # exact | prefix | suffix | regexp
    regex: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _compile(text: str, exclusion: bool) -> _Pattern:
    regex = "^"
    kind = "exact"
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            if i + 1 < len(text) and text[i + 1] == "*":
                start = i
                i += 1
                if i + 1 < len(text) and text[i + 1] == "/":
                    i += 1
                if i + 1 >= len(text):  # "**" at the end: everything below
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex += ".*"
                        kind = "regexp"
                else:
                    regex += "(.*/)?"
                    kind = "regexp"
                if start == 0:
                    kind = "suffix"
            else:
                regex += "[^/]*"
                kind = "regexp"
        elif ch == "?":
            regex += "[^/]"
            kind = "regexp"
        elif ch in _ESCAPE:
            regex += "\\" + ch
        elif ch == "\\":
            if i + 1 < len(text):
                i += 1
                regex += "\\" + text[i]
                kind = "regexp"
            else:
                regex += "\\\\"
        elif ch in "[]":
            regex += ch
            kind = "regexp"
        else:
            regex += ch
        i += 1
    compiled = None
    if kind == "regexp":
        try:
            compiled = re.compile(regex + "$")
        except re.error:
            raise ValueError(f"syntax error in pattern {text!r}") from None
    return _Pattern(text, exclusion, kind, compiled)


class Matcher:
    """Docker's ``PatternMatcher`` over the patterns of one ``.dockerignore``."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern:
                continue
            pattern = clean(pattern)
            exclusion = pattern.startswith("!")
            if exclusion:
                if len(pattern) == 1:
                    raise ValueError('illegal exclusion pattern: "!"')
                pattern = pattern[1:]
            self.patterns.append(_compile(pattern, exclusion))
        self.exclusions = any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether the context path ``path`` (relative, ``/``-separated) is left out."""
        path = clean(path)
        if path == "." or not self.patterns:
            return False
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        parents = parent.split("/") if parent != "." else []
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # an inclusion already matched, or an exception with nothing to undo
            hit = pattern.match(path)
            if not hit:
                hit = any(pattern.match("/".join(parents[: n + 1])) for n in range(len(parents)))
            if hit:
                matched = not pattern.exclusion
        return matched

"""Dockerfile text -> nodes, as BuildKit's ``frontend/dockerfile/parser`` reads it (pure: text in,
nodes out; nothing is expanded or run).

Parser directives (``# escape=``, ``# syntax=``, ``# check=``) count only before anything else (a
comment, a blank line or an instruction ends them); ``escape`` is ``\\`` or a backtick. A line
ending in the escape character (spaces after it allowed) continues on the next; comment lines and
empty lines inside a continued instruction are skipped, and continuation lines keep their leading
white space (Docker's ``RUN a \\`` + ``  b`` is ``a   b``). RUN, COPY and ADD take heredocs
(``<<EOF``, ``<<-EOF`` strips leading tabs, a quoted name is not expanded): the lines after the
instruction, up to the name alone on a line. Leading ``--name[=value]`` words are the builder flags.

Every node keeps its first and last line: each error the build reports names one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from . import words
from .errors import BuildError

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")
HEREDOC_INSTRUCTIONS = ("RUN", "COPY", "ADD")


@dataclass
class Heredoc:
    name: str
    content: str  # every line with its newline (tabs stripped for <<-)
    expand: bool  # the name was not quoted: the builder expands variables in it (COPY)
    chomp: bool


@dataclass
class Node:
    keyword: str  # upper case: RUN, COPY...
    args: str  # what follows the keyword and its flags, trimmed
    flags: list[str]  # the builder flags as written: ["--from=build", "--chown=1:1"]
    original: str  # the whole instruction, continuation lines joined
    line: int  # 1-based
    end_line: int
    heredocs: list[Heredoc] = field(default_factory=list)


@dataclass
class Parsed:
    nodes: list[Node]
    escape: str
    directives: dict[str, str]


def _continues(line: str, escape: str) -> tuple[str, bool]:
    """(the line without a trailing escape, whether it continues on the next)."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape):
        return stripped[: -len(escape)], True
    return line, False


def _is_comment(line: str) -> bool:
    return line.lstrip(" \t").startswith("#")


def split_flags(rest: str, where: str) -> tuple[list[str], str]:
    """BuildKit's extractBuilderFlags: leading ``--flag[=value]`` words (quotes allowed in the
    value), up to the first other word or a bare ``--``; returns (flags, what remains)."""
    flags: list[str] = []
    pos = 0
    while True:
        while pos < len(rest) and rest[pos] in " \t":
            pos += 1
        if not rest.startswith("--", pos):
            return flags, rest[pos:].strip()
        end = pos
        quote = ""
        while end < len(rest) and (quote or rest[end] not in " \t"):
            if quote and rest[end] == quote:
                quote = ""
            elif not quote and rest[end] in "'\"":
                quote = rest[end]
            end += 1
        if quote:
            raise BuildError(f"{where}: unterminated quote in flag {rest[pos:end]!r}")
        word = rest[pos:end]
        pos = end
        if word == "--":
            return flags, rest[pos:].strip()
        flags.append(words.expand(word, {}, "\\") if ("'" in word or '"' in word) else word)


def heredocs_in(line: str, escape: str) -> list[Heredoc]:
    """The heredocs a RUN/COPY/ADD line opens, in order (content filled by the parser)."""
    found = []
    for word in words.raw_words(line, escape):
        m = _HEREDOC.match(word)
        if not m or not m[3]:
            continue
        try:
            name, expand = words.unquote(m[3], escape)
        except ValueError:
            continue
        if name and not any(ch.isspace() for ch in name):
            found.append(Heredoc(name, "", expand, m[2] == "-"))
    return found


def parse(text: str, name: str = "Dockerfile") -> Parsed:
    """The nodes of ``text``; ``name`` is how errors call the file (``Dockerfile:7: ...``)."""
    lines = text.split("\n")
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    directives: dict[str, str] = {}
    escape_line = 0
    i = 0
    while i < len(lines):  # directives: only before anything else
        m = _DIRECTIVE.match(lines[i].lstrip(" \t"))
        if not m or m[1].lower() not in _DIRECTIVES:
            break
        key = m[1].lower()
        if key in directives:
            raise BuildError(f"{name}:{i + 1}: only one {key} parser directive can be used")
        directives[key] = m[2]
        escape_line = i + 1 if key == "escape" else escape_line
        i += 1
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise BuildError(f"{name}:{escape_line}: invalid escape token '{escape}' does not match ` or \\")
    nodes: list[Node] = []
    i = 0
    while i < len(lines):
        start = i
        first = lines[i].lstrip(" \t")
        i += 1
        if not first.strip() or _is_comment(first):
            continue
        joined, more = _continues(first, escape)
        while more and i < len(lines):
            raw = lines[i]
            i += 1
            if _is_comment(raw):
                continue
            if not raw.strip():
                continue  # an empty continuation line (Docker warns, and goes on)
            part, more = _continues(raw, escape)
            joined += part
        node = _node(joined, start + 1, i, name)
        if node is None:
            continue
        if node.keyword in HEREDOC_INSTRUCTIONS and "<<" in joined:
            for doc in heredocs_in(node.args, escape):
                body = []
                while True:
                    if i >= len(lines):
                        raise BuildError(f"{name}:{start + 1}: unterminated heredoc {doc.name}")
                    raw = lines[i]
                    i += 1
                    candidate = raw.lstrip("\t") if doc.chomp else raw
                    if candidate == doc.name:
                        break
                    body.append(candidate + "\n")
                doc.content = "".join(body)
                node.heredocs.append(doc)
            node.end_line = i
        nodes.append(node)
    return Parsed(nodes, escape, directives)


def _node(line: str, first: int, last: int, name: str) -> Node | None:
    line = line.strip()
    if not line:
        return None
    parts = re.split(r"[ \t]+", line, maxsplit=1)
    keyword = parts[0].upper()
    rest = parts[1] if len(parts) > 1 else ""
    flags, args = split_flags(rest, f"{name}:{first}")
    return Node(keyword, args, flags, line, first, last)


def json_array(args: str) -> list[str] | None:
    """``args`` as an exec form (a JSON array of strings), or None if it is not one (then the
    instruction's shell form applies, as in Docker)."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value

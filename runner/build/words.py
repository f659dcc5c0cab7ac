"""Variable expansion and word splitting in a Dockerfile's arguments, as BuildKit's
``frontend/dockerfile/shell`` lexer does it (pure: text and an environment in, text out).

``expand`` is ``ProcessWord``: quotes removed, ``$NAME`` and ``${NAME}`` with the modifiers
``:-``, ``-``, ``:+``, ``+``, ``:?``, ``?``, ``#``/``##``, ``%``/``%%`` and ``/``/``//`` replaced, the
escape character taking the next character literally; whitespace is kept. ``expand_words`` is
``ProcessWords``: the same, then split on unquoted whitespace (EXPOSE's ``$PORTS`` gives several).
Unset variables expand to the empty string. Errors are ``ValueError`` with BuildKit's words; the
caller adds the Dockerfile line.

*Caveats*: ``$@``-style special parameters expand to nothing, as BuildKit's do for an unset name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SPECIAL = set("@*#?-$!0")


class _Lexer:
    def __init__(
        self, text: str, env: Mapping[str, str], escape: str, raw_quotes: bool = False, raw_escapes: bool = False
    ) -> None:
        self.text, self.pos, self.env, self.escape = text, 0, env, escape
        self.raw_quotes, self.raw_escapes = raw_quotes, raw_escapes
        self.used: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def process(self, stop: str = "", raw_escapes: bool | None = None) -> tuple[str, list[str]]:
        """Until ``stop`` (consumed) or the end: (the word, its unquoted-whitespace-split words)."""
        raw = self.raw_escapes if raw_escapes is None else raw_escapes
        result: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.done()
            if ch == "$":
                value = self.dollar()
                result.append(value)
                words.add(value)
            elif ch in "'\"":
                value = self.single_quote() if ch == "'" else self.double_quote()
                result.append(value)
                words.add_raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if raw:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add(ch)
                result.append(ch)
        if stop:
            raise ValueError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.done()

    def single_quote(self) -> str:
        first = self.next()
        out = [first] if self.raw_quotes else []
        while True:
            ch = self.next()
            if not ch:
                raise ValueError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        first = self.next()
        out = [first] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise ValueError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue  # an escape at the end of the word is dropped
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdigit():
                while self.peek().isdigit():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL:
                return self.next()
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> str | None:
        self.used.add(name)
        return self.env.get(name)

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return "$" if not name else self.lookup(name) or ""
        self.next()
        if not self.peek():
            raise ValueError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ValueError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            return self.lookup(name) or ""
        null_is_unset = ch == ":"
        if null_is_unset:
            ch = self.next()
        if ch in "+-?#%":
            try:
                word, _ = self.process("}", raw_escapes=ch in "#%")
            except ValueError:
                raise ValueError("syntax error: missing '}'") from None
            value = self.lookup(name)
            unset = value is None or (null_is_unset and value == "")
            if ch == "-":
                return word if unset else value or ""
            if ch == "+":
                return "" if unset else word
            if ch == "?":
                if unset:
                    empty = "empty" if value is not None else "unset"
                    raise ValueError(f"{name}: {word or f'is not allowed to be {empty}'}")
                return value or ""
            greedy = word.startswith(ch)
            pattern = _shell_pattern(word[1:] if greedy else word, greedy)
            value = value or ""
            if ch == "#":
                m = re.match(pattern, value)
                return value[m.end() :] if m else value
            best = None  # %: the shortest (or, greedy, the longest) matching suffix
            for start in range(len(value) + 1) if greedy else range(len(value), -1, -1):
                if re.fullmatch(pattern, value[start:]):
                    best = start
                    break
            return value if best is None else value[:best]
        if ch == "/":
            replace_all = self.peek() == "/"
            if replace_all:
                self.next()
            try:
                pattern, _ = self.process("/", raw_escapes=True)
                replacement, _ = self.process("}", raw_escapes=True)
            except ValueError:
                raise ValueError("syntax error: missing '}'") from None
            value = self.lookup(name) or ""
            regex = re.compile(_shell_pattern(pattern, True))
            return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)
        raise ValueError(f"unsupported modifier ({':' if null_is_unset else ''}{ch}) in substitution")


class _Words:
    """ProcessWords' splitting: unquoted whitespace ends a word; quoted text never does."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add(self, text: str) -> None:
        for ch in text:
            if ch.isspace():
                if self.in_word and self.word:
                    self.words.append(self.word)
                    self.word, self.in_word = "", False
            else:
                self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


def _shell_pattern(pattern: str, greedy: bool) -> str:
    """A shell wildcard (``*``, ``?``, ``\\`` escapes) as a regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``text`` with quotes removed and variables replaced (one word: whitespace kept)."""
    return _Lexer(text, env, escape).process()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """``expand``, then split on the whitespace that was not quoted."""
    return _Lexer(text, env, escape).process()[1]


def raw_words(text: str, escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, quotes and escapes kept, nothing expanded (the parser's
    ``parseWords``, and heredoc detection)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if not quote and ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        elif ch == escape and i + 1 < len(text) and quote != "'":
            word += [ch, text[i + 1]]
            i += 1
        else:
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            word.append(ch)
        i += 1
    if word:
        words.append("".join(word))
    return words


def unquote(word: str, escape: str = "\\") -> tuple[str, bool]:
    """A heredoc's name with its quotes removed, and whether it had none (its content expands)."""
    plain = _Lexer(word, {}, escape).process()[0]
    return plain, ("'" not in word and '"' not in word)

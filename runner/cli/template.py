"""``--format``'s Go templates (text/template with Docker's functions), the part scripts use:
fields (``{{.State.Status}}``, ``{{$.Name}}``), ``{{range}}``/``{{if}}``/``{{with}}`` with ``{{else}}``
and ``{{end}}`` (``range $k, $v := .Labels`` too), pipelines (``{{.Names | upper}}``), parentheses,
``{{-``/``-}}`` trimming, and the functions ``json``, ``join``, ``split``, ``index``, ``len``,
``lower``, ``upper``, ``title``, ``truncate``, ``pad``, ``print``, ``printf``, ``println``, ``eq``,
``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``, ``or``, ``not``. Values print as Go's ``%v``
prints them (``map[a:1]``, ``[x y]``, ``<nil>``); a nil at the top as ``<no value>``.

A field whose value is a Python callable is a method: ``{{.Label "com.x"}}`` calls it with its
arguments (``ps`` and ``images`` rows have ``Label``).

*Caveats*: no ``define``/``template``/``block``, no variables but ``$`` and range's; anything else is
refused with one line (``template parsing error: ...``), never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?[0-9]+(?:\.[0-9]+)?)|(?P<op>:=|[|(),])"""
    r"""|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"""
    r"""|(?P<field>\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))"""
)


def go_value(value: Any) -> str:
    """``fmt.Sprint``'s rendering of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(v)}" for k, v in sorted(value.items()) if not callable(v)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    return str(value)


def quote(text: str) -> str:
    return json.dumps(text)


class _Raw(str):
    """Already text (json's output): printed as it is."""


class _Error(Exception):
    pass


# -- parsing ----------------------------------------------------------------------------------------
@dataclass
class _Node:
    kind: str  # text, expr, if, range, with
    text: str = ""
    pipe: list[Any] = field(default_factory=list)  # commands: lists of operands
    names: list[str] = field(default_factory=list)  # range's variables
    body: list[_Node] = field(default_factory=list)
    other: list[_Node] = field(default_factory=list)  # else


def _tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    source = source.strip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            raise _Error(f"unexpected {quote(source[pos:].strip()[:20])} in command")
        pos = m.end()
        kind = next(k for k in ("str", "num", "op", "var", "field", "ident") if m.group(k) is not None)
        out.append((kind, m.group(kind)))
    return out


def _pipeline(tokens: list[tuple[str, str]]) -> list[Any]:
    """Commands (lists of operands) joined by ``|``; an operand is a token or a parenthesised
    pipeline (with a field chain after it)."""
    commands: list[list[Any]] = [[]]
    stack: list[list[list[Any]]] = []
    previous = ""
    for kind, value in tokens:
        if kind == "op" and value == "|":
            if not commands[-1]:
                raise _Error("missing value for command")
            commands.append([])
        elif kind == "op" and value == "(":
            stack.append(commands)
            commands = [[]]
        elif kind == "op" and value == ")":
            if not stack:
                raise _Error("unexpected right paren")
            inner, commands = commands, stack.pop()
            commands[-1].append(("pipe", inner))
        elif kind == "field" and commands[-1] and commands[-1][-1][0] == "pipe" and previous == ")":
            commands[-1][-1] = ("chain", commands[-1][-1], value)  # (.X).Field
        elif kind == "op":
            raise _Error(f"unexpected {quote(value)} in command")
        else:
            commands[-1].append((kind, value))
        previous = value
    if stack:
        raise _Error("unclosed left paren")
    if not all(commands):
        raise _Error("missing value for command")
    return commands


def _parse(template: str) -> list[_Node]:
    pieces: list[tuple[str, str]] = []  # (text, action) pairs, whitespace trimmed as asked
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    rest = template[pos:]
    if "{{" in rest:
        raise _Error("unclosed action")
    pieces.append(("text", rest.lstrip() if trim_next else rest))
    nodes, end, _ = _block(pieces, 0)
    if end is not None:
        raise _Error(f"unexpected {{{{{end}}}}}")
    return nodes


def _block(pieces: list[tuple[str, str]], i: int) -> tuple[list[_Node], str | None, int]:
    """Nodes from ``pieces[i]`` on, up to an ``else``/``end`` (returned, with the index after it)."""
    nodes: list[_Node] = []
    while i < len(pieces):
        kind, value = pieces[i]
        i += 1
        if kind == "text":
            if value:
                nodes.append(_Node("text", value))
            continue
        words = value.strip()
        keyword = words.split(None, 1)[0] if words else ""
        if keyword in ("end", "else"):
            return nodes, words, i
        if keyword.startswith("/*") or not words:
            if not words:
                raise _Error("missing value for command")
            continue
        if keyword in ("define", "template", "block", "break", "continue"):
            raise _Error(f"{{{{{keyword}}}}} is not supported by strata")
        if keyword in ("if", "range", "with"):
            node, i = _control(keyword, words[len(keyword) :], pieces, i)
            nodes.append(node)
            continue
        nodes.append(_Node("expr", pipe=_pipeline(_tokens(words))))
    return nodes, None, i


def _control(keyword: str, rest: str, pieces: list[tuple[str, str]], i: int) -> tuple[_Node, int]:
    names: list[str] = []
    tokens = _tokens(rest)
    if keyword == "range" and any(k == "op" and v == ":=" for k, v in tokens):
        split = next(n for n, (k, v) in enumerate(tokens) if k == "op" and v == ":=")
        names = [v for k, v in tokens[:split] if k == "var"]
        if not names or not all(n.startswith("$") for n in names) or len(names) > 2:
            raise _Error("bad range variables")
        tokens = tokens[split + 1 :]
    if not tokens:
        raise _Error(f"missing value for {keyword}")
    node = _Node(keyword, pipe=_pipeline(tokens), names=names)
    node.body, end, i = _block(pieces, i)
    if end is not None and end.startswith("else"):
        after = end[4:].strip()
        if after.startswith("if") and keyword == "if":  # else if: an if inside the else
            inner, i = _control("if", after[2:], pieces, i)
            node.other = [inner]
            return node, i
        if after:
            raise _Error(f"unexpected {quote(after)} after else")
        node.other, end, i = _block(pieces, i)
    if end != "end":
        raise _Error(f"unexpected EOF in {keyword}")
    return node, i


# -- evaluation -------------------------------------------------------------------------------------
def _truth(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {}) and not (isinstance(value, float) and value == 0)


def _lookup(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        if not isinstance(value, dict):
            raise _Error(f"can't evaluate field {name} in type {_type(value)}")
        if name not in value:
            raise _Error(f"map has no entry for key {quote(name)}")
        value = value[name]
    return value


def _type(value: Any) -> str:
    return {
        str: "string",
        int: "int",
        float: "float64",
        bool: "bool",
        list: "[]interface {}",
        type(None): "interface {}",
    }.get(type(value), type(value).__name__)


def _printf(fmt: str, *args: Any) -> str:
    out, values = [], list(args)

    def take(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        value = values.pop(0) if values else None
        if verb == "q":
            return quote(go_value(value))
        if verb == "d" and isinstance(value, (int, float)):
            return str(int(value))
        return go_value(value)

    out.append(re.sub(r"%[-+ #0-9.]*([vsdqtf%])", take, fmt))
    return "".join(out)


def _funcs() -> dict[str, Callable[..., Any]]:
    def index(value: Any, *keys: Any) -> Any:
        for key in keys:
            try:
                value = value[key] if value is not None else None
            except (KeyError, IndexError, TypeError):
                value = None
        return value

    def truncate(value: Any, n: int) -> str:
        text = go_value(value)
        return text[:n] if len(text) > n else text

    return {
        "json": lambda v: _Raw(
            json.dumps(
                {k: x for k, x in v.items() if not callable(x)} if isinstance(v, dict) else v, separators=(",", ":")
            )
        ),  # (Go's encoding: compact)
        "join": lambda v, sep: str(sep).join(go_value(x) for x in (v or [])),
        "split": lambda v, sep: go_value(v).split(sep),
        "index": index,
        "len": lambda v: len(v) if v is not None else 0,
        "lower": lambda v: go_value(v).lower(),
        "upper": lambda v: go_value(v).upper(),
        "title": lambda v: go_value(v).title(),
        "truncate": truncate,
        "pad": lambda v, before, after: " " * int(before) + go_value(v) + " " * int(after),
        "print": lambda *a: "".join(go_value(x) for x in a),
        "println": lambda *a: " ".join(go_value(x) for x in a) + "\n",
        "printf": _printf,
        "eq": lambda a, *b: any(a == x for x in b),
        "ne": lambda a, b: a != b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
        "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
        "not": lambda a: not _truth(a),
    }


_FUNCS = _funcs()


class _Scope:
    def __init__(self, dot: Any, root: Any, variables: dict[str, Any]) -> None:
        self.dot, self.root, self.variables = dot, root, variables

    def operand(self, op: Any) -> Any:
        kind = op[0]
        if kind == "str":
            text = op[1]
            return text[1:-1] if text.startswith("`") else json.loads(text)
        if kind == "num":
            return float(op[1]) if "." in op[1] else int(op[1])
        if kind == "pipe":
            return self.pipeline(op[1])
        if kind == "chain":
            return _lookup(self.operand(op[1]), op[2])
        word = op[1]
        if kind == "field":
            return self.dot if word == "." else _lookup(self.dot, word)
        if kind == "var":
            name, _, path = word.partition(".")
            if name == "$":
                return _lookup(self.root, path)
            if name not in self.variables:
                raise _Error(f"undefined variable {quote(name)}")
            return _lookup(self.variables[name], path)
        if word in ("true", "false"):
            return word == "true"
        if word == "nil":
            return None
        if word in _FUNCS:
            return _FUNCS[word]()
        raise _Error(f"function {quote(word)} not defined")

    def command(self, words: list[Any], piped: list[Any]) -> Any:
        head = words[0]
        if head[0] == "ident" and head[1] in _FUNCS:
            args = [self.operand(w) for w in words[1:]] + piped
            try:
                return _FUNCS[head[1]](*args)
            except (TypeError, ValueError, IndexError) as e:
                raise _Error(f"error calling {head[1]}: {e}") from None
        value = self.operand(head)
        args = [self.operand(w) for w in words[1:]] + piped
        if callable(value):
            return value(*args)
        if args:
            raise _Error(f"can't give argument to non-function {head[1] if isinstance(head[1], str) else 'value'}")
        return value

    def pipeline(self, commands: list[list[Any]]) -> Any:
        value = self.command(commands[0], [])
        for words in commands[1:]:
            value = self.command(words, [value])
        return value


def _run(nodes: list[_Node], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "expr":
            value = scope.pipeline(node.pipe)
            out.append(value if isinstance(value, _Raw) else "<no value>" if value is None else go_value(value))
        elif node.kind == "if":
            _run(node.body if _truth(scope.pipeline(node.pipe)) else node.other, scope, out)
        elif node.kind == "with":
            value = scope.pipeline(node.pipe)
            if _truth(value):
                _run(node.body, _Scope(value, scope.root, scope.variables), out)
            else:
                _run(node.other, scope, out)
        elif node.kind == "range":
            value = scope.pipeline(node.pipe)
            items = (
                sorted(value.items())
                if isinstance(value, dict)
                else list(enumerate(value))
                if isinstance(value, list)
                else None
            )
            if items is None and value is not None:
                raise _Error(f"range can't iterate over {go_value(value)}")
            if not items:
                _run(node.other, scope, out)
            for key, item in items or []:
                variables = dict(scope.variables)
                if len(node.names) == 1:
                    variables[node.names[0]] = item
                elif len(node.names) == 2:
                    variables[node.names[0]], variables[node.names[1]] = key, item
                _run(node.body, _Scope(item, scope.root, variables), out)


def render(template: str, obj: Any) -> str:
    """``template`` applied to ``obj`` (a decoded JSON document, or a row with methods)."""
    try:
        nodes = _parse(template)
        out: list[str] = []
        _run(nodes, _Scope(obj, obj, {}), out)
    except _Error as e:
        raise UsageError(f"template parsing error: {template}: {e}") from None
    return "".join(out)


def rows(fmt: str | None, items: list[dict[str, Any]], names: dict[str, str]) -> list[str] | None:
    """``--format`` of a list verb, as Docker's CLI takes it: None (or ``table``) for the verb's own
    table (None is returned), ``json`` for one JSON object a line, ``table TEMPLATE`` for a table
    whose columns the template's tabs make (headed by the fields' names: ``names``), or a template
    per item. ``\\t`` and ``\\n`` in the text are a tab and a new line, as Docker's."""
    from .format import table

    if fmt is None or fmt.strip() == "table":
        return None
    if fmt.strip() == "json":
        return [render("{{json .}}", item) for item in items]
    body = fmt.strip()
    tabular = body.startswith("table ")
    body = (body[6:].strip() if tabular else body).replace("\\t", "\t").replace("\\n", "\n")
    try:
        _parse(body)  # (refused even when there is nothing to show, as Docker's)
    except _Error as e:
        raise UsageError(f"template parsing error: {body}: {e}") from None
    lines = [render(body, item) for item in items]
    if not tabular:
        return lines
    head = header(body, names).split("\t")
    cells = [line.split("\t") for line in lines]
    width = max([len(head), *(len(c) for c in cells)])
    if width == 1:
        return [head[0], *(c[0] for c in cells)]
    return table(_padded([head], width)[0], _padded(cells, width)).split("\n")


def _padded(rows: list[list[str]], width: int) -> list[list[str]]:
    return [row + [""] * (width - len(row)) for row in rows]


def header(template: str, names: dict[str, str]) -> str:
    """A ``table`` format's header row: the template with each field replaced by its column name
    (``names``: Docker's, as ``{"ID": "CONTAINER ID"}``; others upper-cased, as Docker's)."""

    def column(m: re.Match[str]) -> str:
        inner = m.group(2).strip()
        fm = re.search(r"\.([A-Za-z_][A-Za-z0-9_]*)", inner)
        if not fm:
            return ""
        name = fm.group(1)
        return names.get(name, re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).upper())

    return _ACTION.sub(column, template)

"""``--format``'s Go templates, the part scripts use: ``{{.State.Status}}``, ``{{json .Config}}``,
``{{index .Config.Labels "k"}}``, ``{{join .Args " "}}``, ``{{lower …}}``/``{{upper …}}``, ``{{len …}}``,
text between actions, and values printed as Go's ``%v`` prints them (``map[a:1]``, ``[x y]``, ``<nil>``).

*Caveats*: no ``range``, ``if``, variables or pipelines of more than one command (``{{.X | json}}``
is taken); anything else is refused with the template's own error, never guessed.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from .errors import UsageError

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def go_value(value: Any) -> str:
    """``fmt.Sprint``'s rendering of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    return str(value)


def _field(value: Any, path: str, template: str) -> Any:
    for name in path.split(".")[1:] if path != "." else []:
        if not isinstance(value, dict):
            raise UsageError(f"template parsing error: {template}: can't evaluate field {name} in a "
                             f"{type(value).__name__}")
        if name not in value:
            raise UsageError(f"template parsing error: {template}: map has no entry for key {quote(name)}")
        value = value[name]
    return value


def quote(text: str) -> str:
    return json.dumps(text)


def _operand(token: str, obj: Any, template: str) -> Any:
    if token.startswith("."):
        return _field(obj, token, template)
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?[0-9]+", token):
        return int(token)
    raise UsageError(f"template parsing error: {template}: function {quote(token)} not defined")


def _call(words: list[str], obj: Any, template: str) -> Any:
    name, args = words[0], [_operand(w, obj, template) for w in words[1:]]
    if name.startswith(".") or name.startswith('"'):
        if args:
            raise UsageError(f"template parsing error: {template}: {name} is not a function")
        return _operand(name, obj, template)
    if name == "json" and len(args) == 1:
        return _Raw(json.dumps(args[0]))
    if name in ("lower", "upper") and len(args) == 1:
        return getattr(go_value(args[0]), name)()
    if name == "len" and len(args) == 1 and isinstance(args[0], (str, list, dict)):
        return len(args[0])
    if name == "join" and len(args) == 2 and isinstance(args[0], list):
        return str(args[1]).join(go_value(v) for v in args[0])
    if name == "index" and len(args) >= 2:
        value = args[0]
        for key in args[1:]:
            try:
                value = value[key] if value is not None else None
            except (KeyError, IndexError, TypeError):
                value = None
        return value
    raise UsageError(f"template parsing error: {template}: function {quote(name)} not defined or wrong arguments")


class _Raw(str):
    """Already text (json's output): printed as it is."""


def render(template: str, obj: Any) -> str:
    """``template`` applied to ``obj`` (a decoded JSON document)."""
    out = []
    pos = 0
    for m in _ACTION.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        try:
            stages = [shlex.split(stage, posix=False) for stage in m[1].split("|")]
        except ValueError:
            raise UsageError(f"template parsing error: {template}: bad action {{{{{m[1]}}}}}") from None
        if not stages or not all(stages):
            raise UsageError(f"template parsing error: {template}: missing value for command")
        value = _call(stages[0], obj, template)
        for stage in stages[1:]:  # {{.X | json}}: the value becomes the last argument
            value = _call([*stage, "."], value, template) if len(stage) == 1 else _call(stage, obj, template)
        # a nil at the top prints as text/template prints it; inside a map or a list, as fmt does
        out.append(value if isinstance(value, _Raw) else "<no value>" if value is None else go_value(value))
    if "{{" in template[pos:]:
        raise UsageError(f"template parsing error: {template}: unclosed action")
    out.append(template[pos:])
    return "".join(out)

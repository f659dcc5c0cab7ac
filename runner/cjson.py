"""JSON read and written by ``_json``, the C half of the ``json`` package, without importing the
package: ``import json`` compiles its regular expressions, and ``re`` brings ``enum``, ``functools``
and ``collections`` with it (~10 ms, the largest import of a ``strata-oci create``, which reads one
config and writes one state). ``loads`` and ``dumps`` return what ``json.loads`` and ``json.dumps``
(default arguments, ``sort_keys`` apart) return: the same C code does the work. A text the C scanner
does not take whole is handed to ``json.loads``, so that every error is ``json``'s own, word for word.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SPACE = " \t\n\r"  # json.decoder.WHITESPACE


class _Decoder:
    """What ``_json.make_scanner`` reads of its context: ``json.JSONDecoder()``'s settings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_Decoder)  # type: ignore[arg-type]  # (typeshed wants a scanner as the context)


def loads(text: str) -> Any:
    """``json.loads(text)``."""
    try:
        value, end = _scan(text, len(text) - len(text.lstrip(_SPACE)))
        if not text[end:].strip(_SPACE):
            return value
    except (StopIteration, ValueError):  # no value where one should start, or a malformed one
        pass
    import json  # (here: a text that is not one JSON document, which json.loads refuses in its words)

    return json.loads(text)


def _default(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: object, sort_keys: bool = False) -> str:
    """``json.dumps(value, sort_keys=sort_keys)``: ASCII, ``", "`` and ``": "`` between items, circular
    references and NaN as ``json`` takes them."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    encode = _json.make_encoder({}, _default, _json.encode_basestring_ascii, None, ": ", ", ", sort_keys, False, True)
    return "".join(encode(value, 0))

"""The command line's grammar errors, as Docker's CLI words them: one line, then a hint.

``Parser`` is the ``argparse.ArgumentParser`` of ``strata`` and of every verb (``parser_class=``): its
``error`` raises ``ParseError`` with argparse's message reworded (``invalid argument "abc" for
"--cpu-shares" flag: not an integer``, ``'bogus' is not a strata command.``) instead of printing a
usage block and exiting 2; ``main`` prints it and exits 125, as Docker does for any usage error.
``--help`` is argparse's own.

No abbreviations: ``--na x`` is an unknown flag, not ``--name x`` (argparse's ``allow_abbrev`` is off,
as Docker's CLI takes only the flags it defines); short flags still cluster (``-it``).
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Set
from typing import Any, NoReturn

from .errors import ParseError
from .format import quoted

_REPR = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""  # a str's repr, as argparse's %r shows it
_QUOTED = r'("(?:[^"\\]|\\.)*")'  # a value as FlagValueError shows it
_VERB_METAVAR = "COMMAND"


class FlagValueError(argparse.ArgumentTypeError):
    """What a ``type=`` function raises: the value and why it is refused."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{quoted(value)}: {reason}")


class HelpFormatter(argparse.HelpFormatter):
    """Flags as Docker's help lists them: ``-e, --env NAME[=VALUE]`` (argparse repeats the value)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{', '.join(action.option_strings)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # the innermost verb's defaults win (argparse copies a subparser's namespace over its parent's),
        # so after parsing ``_prog`` names the verb whose --help to point at
        self.set_defaults(_prog=self.prog)

    def error(self, message: str) -> NoReturn:
        remainders = {
            a.metavar if isinstance(a.metavar, str) else a.dest for a in self._actions if a.nargs == argparse.REMAINDER
        }
        raise reworded(message, self.prog, remainders)


def _flags(name: str) -> str:
    return name.replace("/", ", ")  # argparse's "-t/--time", as Docker's "-t, --time"


def reworded(message: str, prog: str, remainders: Set[str] = frozenset()) -> ParseError:
    """argparse's ``message`` for the parser ``prog``, as the ParseError Docker's CLI would give.
    ``remainders``: the positionals that take what is left, maybe nothing (a command and its args)."""
    hint = f"See '{prog} --help'."
    if m := re.fullmatch(rf"argument {_VERB_METAVAR}: invalid choice: {_REPR} \(choose from .*\)", message, re.S):
        return ParseError(f"{m[1]} is not a {prog} command.", hint[:-1])  # Docker's: no full stop here
    if m := re.fullmatch(rf"argument (.+?): invalid choice: {_REPR} \(choose from (.*)\)", message, re.S):
        choices = ", ".join(str(c) for c in ast.literal_eval(f"[{m[3]}]"))
        return ParseError(
            f'invalid argument {quoted(ast.literal_eval(m[2]))} for "{_flags(m[1])}" flag: choose from {choices}', hint
        )
    if m := re.fullmatch(rf"argument (.+?): invalid (\S+) value: {_REPR}", message, re.S):
        reason = {"int": "not an integer", "float": "not a number"}.get(m[2], f"not a valid {m[2]}")
        return ParseError(
            f'invalid argument {quoted(ast.literal_eval(m[3]))} for "{_flags(m[1])}" flag: {reason}', hint
        )
    if m := re.fullmatch(rf"argument (.+?): {_QUOTED}: (.*)", message, re.S):
        return ParseError(f'invalid argument {m[2]} for "{_flags(m[1])}" flag: {m[3]}', hint)
    if m := re.fullmatch(rf"argument (.+?): ignored explicit argument {_REPR}", message, re.S):
        return ParseError(
            f'invalid argument {quoted(ast.literal_eval(m[2]))} for "{_flags(m[1])}" flag: takes no value', hint
        )
    if m := re.fullmatch(r"argument (.+?): expected one argument", message):
        return ParseError(f"flag needs an argument: {_flags(m[1])}", hint)
    if m := re.fullmatch(r"the following arguments are required: (.*)", message):
        names = [n for n in m[1].split(", ") if n not in remainders] or m[1].split(", ")
        if names == [_VERB_METAVAR]:
            return ParseError(f"'{prog}' requires a command", hint)
        missing = "an argument" if len(names) == 1 else "arguments"
        return ParseError(f"'{prog}' is missing {missing}: {', '.join(names)}", hint)
    return ParseError(" ".join(message.split()), hint)  # whatever else argparse says, on one line


def unrecognized(extras: list[str], prog: str) -> ParseError:
    """What ``parse_known_args`` left over: an unknown flag or an argument too many."""
    first = extras[0]
    if first.startswith("-") and first != "-":
        return ParseError(f"unknown flag: {first.split('=', 1)[0]}", f"See '{prog} --help'.")
    return ParseError(f"'{prog}' got an unexpected argument: {first}", f"See '{prog} --help'.")


def int64(value: str) -> int:
    """A ``type=`` for Docker's int64 flags: decimal digits with an optional sign, in range."""
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise FlagValueError(value, "not an integer")
    digits = value.lstrip("+-").lstrip("0")
    number = int(value) if len(digits) <= 19 else None  # no int() of a number no int64 holds (or 5000 digits)
    if number is None or not -(2**63) <= number < 2**63:
        raise FlagValueError(value, "value out of range")
    return number

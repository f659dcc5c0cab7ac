"""``strata-oci``'s entry (``runner/bin/strata-oci`` calls ``main``). The verbs engines call once per
container, each a fresh process, spelled as runc takes them: ``create [--bundle|-b DIR] [--pid-file F]
[--console-socket S] [--preserve-fds N] [--no-pivot] [--no-new-keyring] ID``, ``state ID``, ``start
ID``, ``kill [--all|-a] ID [SIGNAL]`` and ``delete [--force|-f] ID``, after ``--root``, ``--log`` and
``--log-format`` (each valued flag as ``--flag value`` or ``--flag=value``). They run here without
argparse: the cheap verbs with no more imports than ``control``'s, create with the runtime's alone, so
that Python's start-up is most of what they cost. Every other verb or flag (``--debug``,
``--systemd-cgroup``, ...), a value argparse might read otherwise (missing, empty, or starting with
``-``), and a container with hooks for a cheap verb go to ``cli.py`` (argparse and the whole runtime),
which parses and answers them as before: this is a shortcut, never a second grammar. Errors are said
by the same ``log.Log`` as there, word for word.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from .log import Log

_VALUED = ("--root", "--log", "--log-format")
# each verb's flags: the name it is known by here, and whether it takes a value
_FLAGS: dict[str, dict[str, tuple[str, bool]]] = {
    "state": {},
    "start": {},
    "kill": {"--all": ("all", False), "-a": ("all", False)},
    "delete": {"--force": ("force", False), "-f": ("force", False)},
    "create": {
        "--bundle": ("bundle", True),
        "-b": ("bundle", True),
        "--pid-file": ("pid_file", True),
        "--console-socket": ("console_socket", True),
        "--preserve-fds": ("preserve_fds", True),
        "--no-pivot": ("no_pivot", False),  # (taken and ignored, as cli.py does: see runtime.py)
        "--no-new-keyring": ("no_new_keyring", False),
    },
}


def _valued(argv: list[str], i: int) -> tuple[str, str, int] | None:
    """The valued flag at ``argv[i]``, ``--flag=value`` or ``--flag value``: (flag, value, the index
    after it); None where argparse might read it otherwise (no value, an empty one, or one that
    starts with ``-``)."""
    name, eq, value = argv[i].partition("=")
    if not eq:
        if i + 1 >= len(argv):
            return None
        i, value = i + 1, argv[i + 1]
    if not value or value.startswith("-"):
        return None
    return name, value, i + 1


def _parse(argv: list[str]) -> tuple[dict[str, str], str, dict[str, str], list[str]] | None:
    """(global options, verb, the verb's flags by name, with "" for a switch, positionals) for a verb
    spelled as runc takes it; None for anything else."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        found = _valued(argv, i)
        if found is None or found[0] not in _VALUED:
            return None
        name, options[name], i = found
    if i >= len(argv) or argv[i] not in _FLAGS:
        return None
    verb, known = argv[i], _FLAGS[argv[i]]
    flags: dict[str, str] = {}
    positionals: list[str] = []
    i += 1
    while i < len(argv):
        arg = argv[i]
        name = arg.partition("=")[0]
        if arg in known and not known[arg][1]:
            flags[known[arg][0]] = ""
            i += 1
        elif name in known and known[name][1]:
            found = _valued(argv, i)
            if found is None:
                return None
            flags[known[name][0]], i = found[1], found[2]
        elif arg.startswith("-") or arg == "":
            return None
        else:
            positionals.append(arg)
            i += 1
    if options.get("--log-format", "text") not in ("text", "json") or not positionals:
        return None
    if len(positionals) > (2 if verb == "kill" else 1):
        return None
    if not flags.get("preserve_fds", "0").isdecimal():  # (argparse's ``int`` says what is wrong)
        return None
    return options, verb, flags, positionals


def _run(options: dict[str, str], verb: str, flags: dict[str, str], positionals: list[str]) -> int | None:
    """The verb's exit code, or None where ``cli`` is to run it (hooks to run)."""
    from ..errors import NoSuchContainer, RunnerError
    from . import control, statedir

    root = options.get("--root") or control.default_root()
    cid = positionals[0]
    try:
        if verb == "state":
            sys.stdout.write(statedir.to_json(control.get(root, cid).oci_state()) + "\n")
        elif verb == "start":
            c = control.get(root, cid)
            if c.hooks("poststart"):
                return None
            control.start(c)
        elif verb == "kill":
            signal = control.parse_signal(positionals[1] if len(positionals) > 1 else "SIGTERM")
            control.kill(control.get(root, cid), signal, "all" in flags)
        elif verb == "delete":
            try:
                if control.get(root, cid).hooks("poststop"):
                    return None
            except NoSuchContainer:
                pass
            control.delete(root, cid, "force" in flags)
        else:  # create
            from .runtime import Runtime

            Runtime(root, warn=_log(options).warning).create(
                cid,
                flags.get("bundle", "."),
                flags.get("pid_file"),
                flags.get("console_socket"),
                int(flags.get("preserve_fds", "0")),
            )
    except RunnerError as e:
        return _fail(options, str(e))
    except OSError as e:  # a system call the runtime did not expect to fail: still one line
        return _fail(options, f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
    return 0


def _log(options: dict[str, str]) -> Log:
    from .log import Log

    return Log(options.get("--log"), options.get("--log-format", "text"), False)


def _fail(options: dict[str, str], message: str) -> int:
    _log(options).error(message)
    return 1


def _end(code: int) -> NoReturn:
    """End a create at once, without the interpreter's finalization. PID 1 was forked from this
    process and shares its memory copy-on-write: finalization (the garbage collector, every module
    torn down) writes to most of the heap, and each page written is a page copied, ~15 ms in all
    after the engine could go on. Nothing is lost by skipping it: no thread runs and no atexit
    handler is registered, and no file is open for writing but stdout and stderr, flushed here (the
    state and pid files are written whole and closed, the log is opened and closed for each line)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """The exit code; a create (by the shortcut) ends the process itself (``_end``)."""
    args = sys.argv[1:] if argv is None else argv
    quick = _parse(args)
    if quick is not None:
        code = _run(*quick)
        if code is not None:
            if quick[1] == "create":
                _end(code)
            sys.stdout.flush()
            return code
    from .cli import main as full

    return full(args)

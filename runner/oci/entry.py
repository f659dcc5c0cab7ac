"""``strata-oci``'s entry (``runner/bin/strata-oci`` calls ``main``). The cheap verbs as engines call them
once per container, each a fresh process (``state ID``, ``start ID``, ``kill [--all] ID [SIGNAL]``,
``delete [--force] ID`` after ``--root``, ``--log`` and ``--log-format``), run here with no more
imports than ``control``'s: Python's start-up is then most of what they cost. Every other verb or
flag (``--debug``, ``--systemd-cgroup``, ...), and a container with hooks for the verb, go to
``cli.py`` (argparse and the whole runtime), which parses and answers them as before: this is a
shortcut, never a second grammar.
"""

from __future__ import annotations

import sys

_VALUED = ("--root", "--log", "--log-format")
_FLAGS = {"kill": ("--all", "-a"), "delete": ("--force", "-f")}


def _parse(argv: list[str]) -> tuple[dict[str, str], str, set[str], list[str]] | None:
    """(global options, verb, verb flags, positionals) for a cheap verb spelled as runc takes it;
    None for anything else."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name not in _VALUED:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            i, value = i + 1, argv[i + 1]
        options[name] = value
        i += 1
    if i >= len(argv) or argv[i] not in ("state", "start", "kill", "delete"):
        return None
    verb, flags, positionals = argv[i], set(), []
    for arg in argv[i + 1 :]:
        if arg in _FLAGS.get(verb, ()):
            flags.add(arg.lstrip("-")[0])
        elif arg.startswith("-") or arg == "":
            return None
        else:
            positionals.append(arg)
    if options.get("--log-format", "text") not in ("text", "json") or not positionals:
        return None
    if len(positionals) > (2 if verb == "kill" else 1):
        return None
    return options, verb, flags, positionals


def _run(options: dict[str, str], verb: str, flags: set[str], positionals: list[str]) -> int | None:
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
            control.kill(control.get(root, cid), signal, "a" in flags)
        else:
            try:
                if control.get(root, cid).hooks("poststop"):
                    return None
            except NoSuchContainer:
                pass
            control.delete(root, cid, "f" in flags)
    except RunnerError as e:
        return _fail(options, str(e))
    except OSError as e:  # a system call the runtime did not expect to fail: still one line
        return _fail(options, f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
    return 0


def _fail(options: dict[str, str], message: str) -> int:
    from .cli import _Log  # (an error: the log's imports are no longer worth saving)

    _Log(options.get("--log"), options.get("--log-format", "text"), False).error(message)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quick = _parse(args)
    if quick is not None:
        code = _run(*quick)
        if code is not None:
            sys.stdout.flush()
            return code
    from .cli import main as full

    return full(args)

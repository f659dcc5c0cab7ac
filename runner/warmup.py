"""What a zygote holds for the commands it forks: every module of strata imported, the work each
command would repeat done once, and the sources it was made from (a change makes it stale)."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

PACKAGES = ("store", "unionfs", "runner")


def sources() -> dict[str, int]:
    """strata's loaded source files and their mtimes: a change makes this zygote stale."""
    roots = tuple(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + p + os.sep for p in PACKAGES)
    found = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path).startswith(roots):
            try:
                found[path] = os.stat(path).st_mtime_ns
            except OSError:
                found[path] = -1
    return found


def changed(sources: dict[str, int]) -> bool:
    for path, mtime in sources.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def import_everything() -> None:
    """The point of a zygote: every module of strata (and so trio and pyfuse3) imported once."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def warm() -> None:
    """Work commands would repeat, done once here for the forks: the default seccomp program
    (libseccomp takes ~10 ms to generate it; the forks find it in ``seccomp``'s cache), the
    system's TLS roots (~20 ms to parse for every push, pull and login), the ``idna`` codec (the
    socket module imports it at a registry's first connection: ~2 ms) and argparse's patterns."""
    from store.registry import system_roots  # (urllib3 and ssl are imported in the zygote anyway)

    from .errors import RunnerError
    from .supervisor import container_filter

    system_roots()
    "localhost".encode("idna")
    _parse_every_verb()

    try:
        container_filter({})
    except (OSError, RunnerError):  # no libseccomp: each start says so itself
        pass


def _parse_every_verb() -> None:
    """Parse each verb's bare command line once (most fail: no arguments), so that the regular
    expressions argparse compiles from each parser's arguments as it parses (``re``'s cache: 2 ms
    of a 5 ms ``strata images``) are compiled here, once, rather than in every fork."""
    from .cli import parser

    top = parser()
    todo: list[tuple[argparse.ArgumentParser, list[str]]] = [(top, [])]
    while todo:
        node, words = todo.pop()
        try:
            top.parse_known_args(words)
        except (Exception, SystemExit):  # noqa: BLE001 - a parse error, as expected
            pass
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((sub, [*words, name]) for name, sub in action.choices.items())

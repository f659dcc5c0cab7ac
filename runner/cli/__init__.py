"""The ``strata`` command: Docker's verbs, flags and output columns.

This package is the only part of strata that prints and picks exit codes. An error the packages
raise on purpose becomes one line on stderr: exit 1 for image commands (``StoreError``), 125 for
container commands (``RunnerError``, as Docker) or the code a ``StartFailed`` carries (126: cannot
run, 127: not found); a command line that does not parse, a line and a hint to ``--help``, exit 125
(``parsing``); anything else is a bug and keeps its traceback. One module per verb group: ``images``,
``build``, ``registry`` (login, logout), ``run`` (run, create; its flags in ``runflags``,
``netflags``, ``mountflags``), ``listing`` (ps, top, inspect, logs), ``containers`` (stop ... export,
rename, pause), ``attach``, ``cp``, ``exec``, ``stats``, ``volumes`` (``volume
create|ls|inspect|rm|prune``), ``network`` (``network create|ls|inspect|rm``, ``port``), ``events``,
``prune`` (``container prune``, ``image prune``, ``system prune``, ``system df``), ``version``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from store import Store, StoreError

from ..errors import RunnerError, StartFailed
from . import attach, build, containers, cp, events, images, listing, prune, registry, run, stats, version, volumes
from . import exec as exec_verb
from . import network as network_verbs
from .errors import ParseError, UsageError
from .parsing import Parser, unrecognized

_CONTAINER_COMMANDS = {
    "run",
    "create",
    "ps",
    "top",
    "logs",
    "stop",
    "kill",
    "start",
    "wait",
    "rm",
    "exec",
    "diff",
    "commit",
    "export",
    "attach",
    "cp",
    "rename",
    "pause",
    "unpause",
    "stats",
    "events",
    "container",
}


@functools.cache
def parser() -> argparse.ArgumentParser:
    """Built once per process (about 10 ms: argparse looks up translations for every string); the
    zygote builds it before it forks, so the commands it runs find it ready."""
    parser = Parser(prog="strata", description="Images, union mounts and containers.")
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="store root (default $STRATA_ROOT, /var/lib/strata for root, else $XDG_DATA_HOME/strata)",
    )
    parser.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"strata version {version.strata_version()}",
        help="print strata's version and exit (strata version: more)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True, parser_class=Parser)
    images.add_parsers(sub)
    build.add_parsers(sub)
    registry.add_parsers(sub)
    for verbs in (run, listing, containers, attach, cp, exec_verb, stats, volumes, network_verbs, events, prune):
        verbs.add_parsers(sub)  # (Docker's order in --help)
    version.add_parsers(sub)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args, extras = parser().parse_known_args(argv)
    if extras:
        raise unrecognized(extras, args._prog)
    return args


def _open_stdio() -> None:
    """A closed fd 0, 1 or 2 reads and writes /dev/null (as the zygote's client gives the command):
    nothing opened later lands there by chance, and ``sys.stdin`` and friends exist."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # fd itself, the lowest free one, but close-on-exec:
            os.dup2(null, fd)  # a dup2 to itself would keep that flag
            os.set_inheritable(fd, True)
            if null != fd:
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def main(argv: Sequence[str] | None = None) -> int:
    _open_stdio()
    try:
        args = parse(argv)
    except ParseError as e:
        print(f"strata: {e}", file=sys.stderr)
        print(e.hint, file=sys.stderr)
        return 125
    store = Store(args.root)
    failure = 125 if args.verb in _CONTAINER_COMMANDS else 1
    try:
        store.root.check_access()
        return int(args.func(store, args))
    except ParseError as e:  # a grammar rule argparse cannot say (exec with no command)
        print(f"strata: {e}", file=sys.stderr)
        print(e.hint, file=sys.stderr)
        return 125
    except (StoreError, RunnerError, UsageError) as e:
        message = str(e)
        if args.verb == "run" and isinstance(e, StoreError) and "No such image" in message:
            message = f"Unable to find image '{args.image}' locally (strata run does not pull: strata pull it first)"
        print(f"Error: {message}", file=sys.stderr)
        return e.code if isinstance(e, StartFailed) else failure
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141

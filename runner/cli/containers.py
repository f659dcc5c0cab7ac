"""``strata`` commands on a container's life and changes: stop, kill, start, wait, rm, diff, commit,
export. The life cycle itself is ``runner.lifecycle``'s; Docker's flags, output and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from store import Store

from .. import layerdiff, lifecycle
from ..containers import Container, Containers
from ..errors import RunnerError, StartFailed
from ..signals import parse_signal
from ..volumes import Volumes
from .errors import UsageError


# -- life cycle -------------------------------------------------------------------------------------
def cmd_stop(store: Store, args: argparse.Namespace) -> int:
    sig = parse_signal(args.signal) if args.signal else None
    for ref in args.containers:
        lifecycle.stop(Containers(store.root.path).get(ref), args.time, sig, store.root.path)
        print(ref)
    return 0


def cmd_kill(store: Store, args: argparse.Namespace) -> int:
    sig = parse_signal(args.signal)
    for ref in args.containers:
        lifecycle.send_signal(Containers(store.root.path).get(ref), sig, store.root.path)
        print(ref)
    return 0


def cmd_start(store: Store, args: argparse.Namespace) -> int:
    if (args.attach or args.interactive) and len(args.containers) > 1:
        raise RunnerError("you cannot start and attach multiple containers at once")
    for ref in args.containers:
        c = Containers(store.root.path).get(ref)
        if args.attach or args.interactive:
            return _start_attached(store.root.path, c, args)
        try:
            lifecycle.start(store.root.path, c)
        except StartFailed as e:  # Docker's words; the exit code stays 125
            raise RunnerError(f"failed to start container {ref}: {e}") from None
        print(ref)
    return 0


def _start_attached(root: str, c: Container, args: argparse.Namespace) -> int:
    """``start -a [-i]``: attached from its start, as ``run``; its exit code is ours."""
    import socket

    from .attach import attach
    from .runflags import DEFAULT_DETACH_KEYS, detach_keys

    if c.state().get("Running"):
        raise RunnerError(f"container {c.name} is running: attach to it (strata attach)")
    stdin = bool(args.interactive and c.config["Config"]["OpenStdin"])
    if stdin and c.config["Config"]["Tty"] and not os.isatty(0):
        print("the input device is not a TTY", file=sys.stderr)
        return 1
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            size = os.get_terminal_size(1) if c.config["Config"]["Tty"] and os.isatty(1) else None
            lifecycle.start(root, c, client=theirs.fileno(), console_size=(size.lines, size.columns) if size else None)
        except StartFailed as e:
            raise RunnerError(f"failed to start container {c.name}: {e}") from None
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return attach(
        c, stdin, detach_keys(args.detach_keys or DEFAULT_DETACH_KEYS), proxy=True, close_stdin=stdin, sock=ours
    )


def cmd_rename(store: Store, args: argparse.Namespace) -> int:
    lifecycle.rename(store.root.path, Containers(store.root.path).get(args.container), args.name)
    return 0


def cmd_pause(store: Store, args: argparse.Namespace) -> int:
    status = 0
    for ref in args.containers:
        try:
            (lifecycle.pause if args.verb == "pause" else lifecycle.unpause)(
                store.root.path, Containers(store.root.path).get(ref)
            )
            print(ref)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_wait(store: Store, args: argparse.Namespace) -> int:
    for ref in args.containers:
        print(lifecycle.wait(Containers(store.root.path).get(ref)))
    return 0


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    """Each container in turn: one that cannot go is an error line, and the others still go."""
    status = 0
    containers = Containers(store.root.path)
    for ref in args.containers:
        try:
            container = containers.get(ref)
            lifecycle.remove(store.root.path, container, args.force)
            if args.volumes:  # its anonymous volumes that no other container uses
                Volumes(store.root.path).release(container.config)
            print(ref)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


# -- changes: diff, commit, export -------------------------------------------------------------------
def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    c = Containers(store.root.path).get(args.container)
    for kind, path in layerdiff.changes(c.path("upper"), c.config["LowerDirs"]):
        print(f"{kind} {path}")
    return 0


def cmd_commit(store: Store, args: argparse.Namespace) -> int:
    c = Containers(store.root.path).get(args.container)
    created_by = " ".join(c.config["Command"])
    data = layerdiff.UpperData(layerdiff.union_lowers(c))  # metacopies keep their data below
    with lifecycle.frozen(c, args.pause.lower() not in ("false", "0", "no")):  # nothing writes to the upper
        image_id = store.commit(
            c.config["Image"],
            c.path("upper"),
            args.repository,
            created_by,
            comment=args.message or "",
            author=args.author or "",
            changes=args.change or [],
            data_of=data.data_of,
            private=data.private,
        )
    print(image_id)
    return 0


def cmd_export(store: Store, args: argparse.Namespace) -> int:
    from store.tarwrite import write_entries

    c = Containers(store.root.path).get(args.container)
    init = [c.path("init")] if os.path.isdir(c.path("init")) else []  # /etc/hosts and friends, as docker export
    entries = layerdiff.flatten(c.path("upper"), init + c.config["LowerDirs"])
    data = layerdiff.UpperData(layerdiff.union_lowers(c))  # metacopies keep their data below
    if not args.output or args.output == "-":
        if sys.stdout.isatty():
            raise RunnerError("cowardly refusing to write a tar to a terminal: use -o or redirect")
        write_entries(entries, sys.stdout.buffer, data.data_of, data.private)
        return 0
    target = os.path.abspath(args.output)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        out = open(tmp, "wb")
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror}") from None
    try:
        with out:
            write_entries(entries, out, data.data_of, data.private)
        try:
            os.replace(tmp, target)
        except OSError as e:  # a directory there, say
            raise UsageError(f"cannot write {target}: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return 0


# -- argument parsing -----------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    p = sub.add_parser("stop", help="the stop signal (SIGTERM), then SIGKILL after -t seconds")
    p.add_argument(
        "-t",
        "--time",
        type=float,
        metavar="SECONDS",
        help="seconds to wait for it to end before SIGKILL (default: its --stop-timeout, else 10; -1: for ever)",
    )
    p.add_argument(
        "-s",
        "--signal",
        metavar="SIGNAL",
        help="the signal to send first (default: its --stop-signal or STOPSIGNAL, else SIGTERM)",
    )
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("kill", help="send a signal (SIGKILL by default)")
    p.add_argument(
        "-s",
        "--signal",
        default="KILL",
        metavar="SIGNAL",
        help="a signal name (TERM, SIGHUP, RTMIN+1) or number (default KILL)",
    )
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("start", help="start exited containers again (same writable layer)")
    p.add_argument("-a", "--attach", action="store_true", help="attach its output (and exit with its code)")
    p.add_argument("-i", "--interactive", action="store_true", help="attach its input too (-i containers)")
    p.add_argument("--detach-keys", dest="detach_keys", metavar="KEYS", help="the keys that detach (with -a)")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container", help="a name or an id (prefix)")
    p.add_argument("name", help="its new name")
    p.set_defaults(func=cmd_rename)

    for verb, what in (
        ("pause", "freeze every process of running containers (the cgroup freezer)"),
        ("unpause", "let paused containers run again"),
    ):
        p = sub.add_parser(verb, help=what)
        p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
        p.set_defaults(func=cmd_pause)

    p = sub.add_parser("wait", help="wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first (default: refused)")
    p.add_argument(
        "-v", "--volumes", action="store_true", help="remove the container's anonymous volumes too (named ones stay)"
    )
    p.add_argument("containers", nargs="+", help="names or ids (prefixes)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("diff", help="what a container changed: A added, C changed, D deleted")
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("commit", help="a new image from a container's changes")
    p.add_argument("-m", "--message", help="the commit message (default: none)")
    p.add_argument("-a", "--author", help="the author, as 'Name <email>' (default: none)")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction (CMD, ENV, LABEL...) to the new image; repeatable",
    )
    p.add_argument(
        "-p", "--pause", default="true", metavar="BOOL", help="freeze a running container while packing (default true)"
    )
    p.add_argument("container", help="a name or an id (prefix)")
    p.add_argument("repository", nargs="?", help="tag for the image, NAME[:TAG] (default: none, untagged)")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("export", help="a container's whole tree as a tar")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout, not a terminal)")
    p.add_argument("container", help="a name or an id (prefix)")
    p.set_defaults(func=cmd_export)

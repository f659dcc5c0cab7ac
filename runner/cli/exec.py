"""``strata exec``: a command in a running container, as Docker's: stdin only with -i, a pty from the
container's own /dev/pts with -t, -d leaves it running. The process that joins the container is
``runner.lifecycle``'s; this module picks its stdio and relays a terminal."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from store import Store

from .. import lifecycle
from ..containers import Containers
from ..errors import ContainerConflict
from . import terminal
from .errors import ParseError
from .run import NOT_A_TTY, check_env


def _exec_env(cfg: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The container's environment, then TERM for -t, then -e (NAME alone: this one's value, if set)."""
    env = list(cfg["Env"])
    for item in (["TERM=xterm"] if args.tty else []) + list(args.env or []):
        key = item.split("=", 1)[0]
        if "=" not in item:
            if key not in os.environ:
                continue
            item = f"{key}={os.environ[key]}"
        env = [e for e in env if e.split("=", 1)[0] != key] + [item]
    return env


def cmd_exec(store: Store, args: argparse.Namespace) -> int:
    """Docker's exec: stdin only with -i, a pty with -t (from the container's own /dev/pts), -d
    leaves the command running and returns once it has started."""
    if not args.command:  # REMAINDER takes nothing as well: say it as a missing argument
        raise ParseError(f"'{args._prog}' is missing an argument: command", f"See '{args._prog} --help'.")
    if args.tty and args.interactive and not os.isatty(0):
        print(NOT_A_TTY, file=sys.stderr)
        return 1
    check_env(args.env or [])
    c = Containers(store.root.path).get(args.container)
    state = c.state()
    if not state.get("Running"):
        raise ContainerConflict(f"Container {c.id} is not running")
    if state.get("Paused"):
        raise ContainerConflict(f"Container {c.id} is paused, unpause the container before exec")
    status_r, status_w = os.pipe()
    spec = lifecycle.join_spec(
        c,
        state["Pid"],
        args.command,
        _exec_env(c.config["Config"], args),
        args.workdir,
        args.user,
        bool(args.tty and not args.detach),
        status_w,
    )
    opened = [status_r, status_w]
    master = None
    try:
        if args.detach:
            null = os.open(os.devnull, os.O_RDWR)
            opened.append(null)
            stdio: tuple[int, int, int] | None = (null, null, null)
        elif args.tty:
            master, slave = terminal.container_pty(state["Pid"])
            opened += [master, slave]
            stdio = (slave, slave, slave)
        elif not args.interactive:
            null = os.open(os.devnull, os.O_RDONLY)
            opened.append(null)
            stdio = (null, 1, 2)
        else:
            stdio = None  # the client's own stdin, stdout and stderr
        pid = lifecycle.join(spec, stdio, args.detach, [status_r] + ([master] if master is not None else []))
        for fd in opened[1:]:
            if fd != master:
                os.close(fd)
        opened = [status_r] + ([master] if master is not None else [])
        if master is not None:
            pidfd = os.pidfd_open(pid)
            opened.append(pidfd)
            with terminal.raw(0 if args.interactive else None), terminal.following_size(1, master):
                terminal.relay(master, 0 if args.interactive else None, 1, pidfd)
        code = lifecycle.wait_joined(pid, status_r)  # StartFailed: its code is the exit code
    finally:
        for fd in opened:
            os.close(fd)
    return 0 if args.detach else code


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run the command in the background; print nothing")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open and attach it to the command")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY (/dev/pts/N in the container)")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        metavar="NAME[=VALUE]",
        help="set an environment variable (NAME alone: its value here); repeatable",
    )
    p.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory in the container (default: the container's)"
    )
    p.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user name or uid, maybe with a group (default: the container's user)",
    )
    p.add_argument("container", help="the container: a name or an id (prefix)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=cmd_exec)

"""``strata`` registry commands: login, logout; and the flags pull and push share with them
(``--authfile``, ``--tls-verify``, ``--cert-dir``), as podman and skopeo spell them.

A password never goes through argv (where ``ps`` shows it): ``--password-stdin``, or a prompt
that does not echo on a terminal."""

from __future__ import annotations

import argparse
import sys
import termios
from typing import Any

from store.authfile import default_path

from .errors import UsageError
from .parsing import FlagValueError


def _bool(value: str) -> bool:
    """A ``type=`` for ``--tls-verify[=true|false]``."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise FlagValueError(value, "not true or false")


def add_remote_flags(p: argparse.ArgumentParser, platform: bool = False) -> None:
    p.add_argument(
        "--authfile",
        metavar="FILE",
        help="credentials file, containers' auth.json or Docker's config.json "
        "(default: $XDG_CONFIG_HOME/strata/auth.json)",
    )
    p.add_argument(
        "--tls-verify",
        type=_bool,
        nargs="?",
        const=True,
        metavar="true|false",
        help="verify the registry's TLS certificate (default true); false also allows plain HTTP "
        "(always allowed for loopback registries that do not speak TLS)",
    )
    p.add_argument(
        "--cert-dir",
        metavar="DIR",
        help="the registry's CA certificates (*.crt) and client certificate (*.cert + *.key) "
        "(default: the first of ~/.config/containers/certs.d/HOST:PORT, "
        "/etc/containers/certs.d/HOST:PORT, /etc/docker/certs.d/HOST:PORT; "
        "$STRATA_CERTS_D replaces those roots)",
    )
    if platform:
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="the image to take from a multi-platform index (default: this host's, e.g. linux/amd64)",
        )


def remote_options(args: argparse.Namespace) -> Any:
    from store.registry import RemoteOptions  # urllib3's import cost, for these commands only

    return RemoteOptions(
        tls_verify=args.tls_verify,
        cert_dir=args.cert_dir,
        authfile=args.authfile,
        platform=getattr(args, "platform", None),
    )


def _prompt(text: str, secret: bool) -> str:
    """A line from the terminal on stdin, not echoed if ``secret``."""
    if not sys.stdin.isatty():
        raise UsageError("cannot prompt: stdin is not a terminal (use -u USER and --password-stdin)")
    sys.stderr.write(text)
    sys.stderr.flush()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    if secret:
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    try:
        line = sys.stdin.readline()
    finally:
        if secret:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            sys.stderr.write("\n")
    return line.rstrip("\r\n")


def cmd_login(args: argparse.Namespace) -> int:
    from store.registry import login

    user = args.username if args.username is not None else _prompt("Username: ", secret=False)
    if args.password_stdin:
        if args.username is None:
            raise UsageError("--password-stdin needs --username (the password alone is on stdin)")
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = _prompt("Password: ", secret=True)
    if not user or not password:
        raise UsageError("a username and a password are needed")
    login(args.registry, user, password, remote_options(args))
    print("Login Succeeded!")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from store.registry import logout

    if args.all == (args.registry is not None):
        raise UsageError("logout takes a registry or --all")
    gone = logout(None if args.all else args.registry, remote_options(args))
    path = args.authfile or default_path()
    if args.all:
        print(f"Removed login credentials for all registries from {path}")
        return 0
    if not gone:
        raise UsageError(f"not logged in to {args.registry} (in {path})")
    print(f"Removed login credentials for {args.registry}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "login",
        help="log in to a registry (credentials kept in an auth file, 0600)",
        description="Check a user and password against a registry and keep them for pull and "
        "push. The password is read from stdin (--password-stdin) or a prompt, "
        "never from the command line.",
    )
    p.add_argument(
        "registry",
        metavar="REGISTRY",
        help="HOST[:PORT], or HOST[:PORT]/NAMESPACE for credentials that hold for that namespace only",
    )
    p.add_argument("-u", "--username", metavar="USER", help="the user (default: asked on the terminal)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: asked on the terminal, not echoed)",
    )
    add_remote_flags(p)
    p.set_defaults(func=lambda _store, args: cmd_login(args))

    p = sub.add_parser("logout", help="forget a registry's credentials")
    p.add_argument("registry", nargs="?", metavar="REGISTRY", help="HOST[:PORT][/NAMESPACE] as logged in to")
    p.add_argument("-a", "--all", action="store_true", help="forget every registry's credentials in the file")
    p.add_argument("--authfile", metavar="FILE", help="credentials file (default: $XDG_CONFIG_HOME/strata/auth.json)")
    p.set_defaults(func=lambda _store, args: cmd_logout(args), tls_verify=None, cert_dir=None)

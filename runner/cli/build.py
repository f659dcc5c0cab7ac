"""``strata build``: Docker's flags for a Dockerfile build (``runner.build`` does the work); the
progress goes to stderr as BuildKit's does, the image id to stdout with ``-q``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from store import Store

from ..build import BuildError, Options, Progress, Request, build
from .errors import UsageError

PROGRESS = ("auto", "plain", "tty")


def _pairs(items: list[str] | None, what: str, from_env: bool) -> dict[str, str]:
    """``K=V`` flags; ``K`` alone takes this environment's value (--build-arg, as Docker's CLI), or is
    empty (--label)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid {what} {item!r}: a name is required")
        if not eq and from_env:
            if key not in os.environ:
                continue
            value = os.environ[key]
        out[key] = value
    return out


def cmd_build(store: Store, args: argparse.Namespace) -> int:
    if args.pull != "never":
        raise UsageError(
            f"--pull {args.pull}: strata build does not pull (only --pull never, the default): "
            "strata pull the base image first"
        )
    mode = "quiet" if args.quiet else args.progress
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() else "plain"
    request = Request(
        args.context,
        args.file,
        list(args.tag or []),
        Options(_pairs(args.build_arg, "--build-arg", True), args.target or "", _pairs(args.label, "--label", False)),
        no_cache=args.no_cache,
        network=args.network,
    )
    progress = Progress(sys.stderr, mode)
    stdin = sys.stdin.buffer if "-" in (args.context, args.file) else None
    if stdin is not None and sys.stdin.isatty():
        raise UsageError("the build context (or Dockerfile) is to come from stdin, but stdin is a terminal")
    try:
        image_id = build(store, request, progress, stdin)
    except BuildError:
        progress.summary(False)
        raise
    progress.summary(True)
    if args.quiet:
        print(image_id)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="build an image from a Dockerfile",
        description="Build an image from the Dockerfile in CONTEXT (a directory, or - for a tar on "
        "stdin), step by step, reusing the steps an earlier build made (the cache).",
    )
    p.add_argument(
        "-t",
        "--tag",
        action="append",
        metavar="NAME[:TAG]",
        help="tag the image (default tag latest); repeatable (default: untagged)",
    )
    p.add_argument(
        "-f",
        "--file",
        metavar="PATH",
        help="the Dockerfile, relative to here, or - for stdin (default: CONTEXT/Dockerfile)",
    )
    p.add_argument(
        "--build-arg",
        action="append",
        dest="build_arg",
        metavar="NAME[=VALUE]",
        help="a value for an ARG (NAME alone: its value here, if set); repeatable",
    )
    p.add_argument("--target", metavar="STAGE", help="build this stage and those it needs (default: the last one)")
    p.add_argument(
        "--no-cache", action="store_true", dest="no_cache", help="run every step again (default: reuse cached steps)"
    )
    p.add_argument(
        "--pull",
        default="never",
        metavar="never",
        help="strata build never pulls: base images must be here (default never)",
    )
    p.add_argument(
        "--progress",
        choices=PROGRESS,
        default="auto",
        help="plain: every step's output as BuildKit prints it; tty: one line a step (default auto: "
        "tty on a terminal, else plain)",
    )
    p.add_argument("--label", action="append", metavar="KEY[=VALUE]", help="a label on the image; repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id (default: progress on stderr)")
    p.add_argument(
        "--network",
        default="bridge",
        metavar="MODE",
        help="RUN's network, as run's: bridge, none (a loopback only; ADD of a URL is refused) or host "
        "(default bridge)",
    )
    p.add_argument("context", metavar="CONTEXT", help="the build context: a directory, or - for a tar on stdin")
    p.set_defaults(func=cmd_build)

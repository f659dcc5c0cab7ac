"""``strata volume create|ls|inspect|rm|prune``: Docker's flags, output and errors (exit 1, as its
volume verbs). The volumes themselves are ``runner.volumes``'."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from store import Store

from ..errors import NoSuchVolume, RunnerError
from ..volumes import DRIVER, Volume, Volumes
from . import filters, template
from .format import human_size, table

VOLUME_FILTERS = ("dangling", "name", "label", "driver")
PRUNE_WARNING = {
    False: "WARNING! This will remove anonymous local volumes not used by at least one container.",
    True: "WARNING! This will remove all local volumes not used by at least one container.",
}


def _labels(given: list[str] | None) -> dict[str, str]:
    out = {}
    for item in given or []:
        key, _, value = item.partition("=")
        if not key:
            raise RunnerError(f"invalid label {item!r}: a key is required")
        out[key] = value
    return out


def cmd_create(store: Store, args: argparse.Namespace) -> int:
    if args.name and args.name_flag:
        raise RunnerError(
            "conflicting options: cannot specify a volume-name through both --name and as a positional arg"
        )
    if args.driver != DRIVER:
        raise RunnerError(f'error looking up volume plugin {args.driver}: plugin "{args.driver}" not found')
    if args.opt:
        raise RunnerError(
            f"invalid option key: {args.opt[0].partition('=')[0]!r} (strata's local volumes take no options)"
        )
    volumes = Volumes(store.root.path)
    with volumes.locked():
        volume, _ = volumes.create(args.name or args.name_flag or None, _labels(args.label))
    print(volume.name)
    return 0


def _row(volume: Volume) -> dict[str, Any]:
    """``volume ls --format``'s fields."""
    return {
        "Name": volume.name,
        "Driver": DRIVER,
        "Scope": "local",
        "Mountpoint": volume.data,
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(volume.labels.items())),
        "Links": "N/A",
        "Size": "N/A",
    }


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, VOLUME_FILTERS)
    volumes = Volumes(store.root.path)
    used: set[str] | None = None
    rows = []
    for volume in volumes.all():
        if "dangling" in wanted:
            if used is None:
                used = {v.name for v in volumes.all() if volumes.users(v.name)}
            dangling = volume.name not in used
            if not any((value in ("true", "1")) == dangling for value in wanted["dangling"]):
                continue
        if "name" in wanted and not any(n in volume.name for n in wanted["name"]):
            continue
        if "driver" in wanted and DRIVER not in wanted["driver"]:
            continue
        if "label" in wanted and not filters.labels_match(wanted["label"], volume.labels):
            continue
        rows.append(_row(volume))
    if args.quiet:
        for r in rows:
            print(r["Name"])
    elif args.format == "json":
        for r in rows:
            print(json.dumps(r))
    elif args.format and args.format != "table":
        for r in rows:
            print(template.render(args.format, r))
    else:
        print(table(["DRIVER", "VOLUME NAME"], [[r["Driver"], r["Name"]] for r in rows]))
    return 0


def cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    """The volumes found, then one line for each that is not (as Docker's: exit 1)."""
    volumes = Volumes(store.root.path)
    docs, errors = [], []
    for name in args.volumes:
        try:
            docs.append(volumes.get(name).inspect())
        except NoSuchVolume as e:
            errors.append(str(e))
    if args.format:
        for doc in docs:
            print(template.render(args.format, doc))
    else:
        print(json.dumps(docs, indent=4))
    for error in errors:
        print(f"Error: {error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    """Each volume in turn: one that cannot go is an error line, and the others still go."""
    volumes = Volumes(store.root.path)
    status = 0
    for name in args.volumes:
        try:
            with volumes.locked():
                volumes.remove(name, args.force)
            print(name)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_prune(store: Store, args: argparse.Namespace) -> int:
    wanted = filters.parse(args.filter, ("label",))
    if not args.force:
        sys.stdout.write(f"{PRUNE_WARNING[args.all]}\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() != "y":
            print("Total reclaimed space: 0B")
            return 0
    removed, freed = Volumes(store.root.path).prune(args.all, wanted.get("label"))
    if removed:
        print("Deleted Volumes:\n" + "".join(f"{name}\n" for name in removed))
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "volume",
        help="manage volumes",
        description="Volumes: a container's data kept in the store, outside its layers.",
    )
    verbs = p.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)

    c = verbs.add_parser("create", help="create a volume (no name: a generated one); an existing name is kept")
    c.add_argument("-d", "--driver", default=DRIVER, help="the volume driver (only local; default local)")
    c.add_argument("--label", action="append", metavar="KEY[=VALUE]", help="a label on the volume; repeatable")
    c.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE", help="driver options (local takes none)")
    c.add_argument("--name", dest="name_flag", help=argparse.SUPPRESS)
    c.add_argument("name", nargs="?", help="the volume's name, [a-zA-Z0-9][a-zA-Z0-9_.-]+")
    c.set_defaults(func=cmd_create)

    c = verbs.add_parser("ls", aliases=["list"], help="list volumes")
    c.add_argument("-q", "--quiet", action="store_true", help="only volume names")
    c.add_argument(
        "-f",
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="dangling=true|false, name=TEXT, label=KEY[=VALUE], driver=local; repeatable",
    )
    c.add_argument(
        "--format", metavar="FORMAT", help="table (default), json (one object a line) or a Go template as '{{.Name}}'"
    )
    c.set_defaults(func=cmd_ls)

    c = verbs.add_parser("inspect", help="volumes as JSON")
    c.add_argument("-f", "--format", metavar="TEMPLATE", help="a Go template per volume, as '{{.Mountpoint}}'")
    c.add_argument("volumes", nargs="+", help="volume names")
    c.set_defaults(func=cmd_inspect)

    c = verbs.add_parser("rm", aliases=["remove"], help="remove volumes (not one a container uses)")
    c.add_argument("-f", "--force", action="store_true", help="no error for a volume that does not exist")
    c.add_argument("volumes", nargs="+", help="volume names")
    c.set_defaults(func=cmd_rm)

    c = verbs.add_parser("prune", help="remove the volumes no container uses (anonymous ones, or all with -a)")
    c.add_argument("-a", "--all", action="store_true", help="named volumes too (default: anonymous ones only)")
    c.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    c.add_argument("--filter", action="append", metavar="label=KEY[=VALUE]", help="only volumes with this label")
    c.set_defaults(func=cmd_prune)

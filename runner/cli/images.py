"""``strata`` image commands: images, history, tag, rmi, inspect (images), import, load, save, pull,
push, info, system check. Docker's flags and output columns."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from store import HistoryRow, Store, StoreError, TreeNode
from store.images import familiar

from ..containers import Containers
from ..errors import NoSuchContainer, RunnerError
from ..mounts import CONTAINER, LAYER, ImageMounts
from . import filters, prune, registry, template
from .errors import UsageError
from .format import ellipsis, human_size, parse_when, since, table
from .progress import Bars


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _progress(doing: str, done: str) -> Bars | None:
    """Bars on a terminal; silence otherwise."""
    return Bars(sys.stderr, doing, done) if sys.stderr.isatty() else None


@contextmanager
def _drawing(bars: Bars | None) -> Iterator[None]:
    """The bars' last state once the work ends: final words if it succeeded, else where it stopped."""
    try:
        yield
    except BaseException:
        if bars is not None:
            bars.finish(ok=False)
        raise
    if bars is not None:
        bars.finish()


def _stdin() -> BinaryIO:
    if sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is a terminal (use -i FILE)")
    return sys.stdin.buffer


# -- image commands -------------------------------------------------------------------------------
def _image_rows(store: Store, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per tag (``<none>`` for an untagged image), newest first, as ``images`` lists them:
    intermediate images only with -a, then REPO[:TAG] and the filters."""
    wanted = filters.parse(args.filter, filters.IMAGE_FILTERS)
    # REPO[:TAG] and reference= both hold; reference= given twice: either
    pattern_sets = ([[familiar(args.reference)]] if args.reference else []) + (
        [[familiar(p) for p in wanted["reference"]]] if "reference" in wanted else []
    )
    ids = store.images.ids()
    intermediate = {store.images.record(i).parent for i in ids}
    tagged = store.images.tags_by_image()
    created_of = {i: parse_when(store.images.config(i).get("created")) for i in ids}
    bounds = {
        key: [created_of[store.images.resolve(ref)] for ref in wanted.get(key, [])] for key in ("before", "since")
    }
    rows: list[dict[str, Any]] = []
    for image_id in ids:
        config = store.images.config(image_id)
        created = created_of[image_id]
        dangling = image_id not in tagged
        if "dangling" in wanted and dangling != (wanted["dangling"][-1] in ("true", "1")):
            continue
        if wanted.get("label") and not filters.labels_match(
            wanted["label"], (config.get("config") or {}).get("Labels")
        ):
            continue
        when = created.timestamp() if created else 0
        if any(b is None or when >= b.timestamp() for b in bounds["before"]):
            continue
        if any(b is not None and when <= b.timestamp() for b in bounds["since"]):
            continue
        shown_anyway = args.all or "dangling" in wanted
        tags = tagged.get(image_id) or ([] if image_id in intermediate and not shown_anyway else ["<none>:<none>"])
        for tag in tags:
            repo, t = tag.rsplit(":", 1)
            if args.reference and ":" not in args.reference.rsplit("/", 1)[-1] and repo == "<none>":
                continue
            if pattern_sets and (
                repo == "<none>" or not all(filters.reference_matches(ps, repo, t) for ps in pattern_sets)
            ):
                continue
            rows.append(
                {
                    "Repository": repo,
                    "Tag": t,
                    "ID": _short(image_id),
                    "FullID": image_id,
                    "CreatedSince": since(created),
                    "CreatedAt": config.get("created", ""),
                    "Size": human_size(store.images.size(image_id)),
                    "created": created,
                }
            )
    rows.sort(key=lambda r: r["created"].timestamp() if r["created"] else 0, reverse=True)
    return rows


def cmd_images(store: Store, args: argparse.Namespace) -> int:
    if args.tree:
        for line in _tree_lines(store.tree()):
            print(line)
        return 0
    rows = _image_rows(store, args)
    if args.quiet:
        for short in dict.fromkeys(r["FullID"] if args.no_trunc else r["ID"] for r in rows):  # each image once
            print(short)
        return 0
    items = [
        {
            **{k: v for k, v in r.items() if k not in ("created", "FullID")},
            "ID": r["FullID"] if args.no_trunc else r["ID"],
            "Digest": "<none>",
            "Containers": "N/A",
            "Label": _label_of(store.images.config(r["FullID"])),
        }
        for r in rows
    ]
    if (lines := template.rows(args.format, items, IMAGE_COLUMNS)) is not None:
        for line in lines:
            print(line)
        return 0
    print(
        table(
            ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            [
                [r["Repository"], r["Tag"], r["FullID"] if args.no_trunc else r["ID"], r["CreatedSince"], r["Size"]]
                for r in rows
            ],
        )
    )
    return 0


IMAGE_COLUMNS = {"ID": "IMAGE ID", "CreatedSince": "CREATED"}  # (the rest: upper case)


def _label_of(config: dict[str, Any]) -> Any:
    """An ``images`` row's ``Label`` method: ``{{.Label "org.opencontainers.image.version"}}``."""
    labels = (config.get("config") or {}).get("Labels") or {}
    return lambda key: labels.get(key, "")


def _tree_lines(roots: list[TreeNode], prefix: str = "") -> list[str]:
    """Old ``docker images --tree``: one node a layer, shared layers once, children indented. A layer
    that is the top of an image shows that image's id (the one ``images`` prints), with its tags;
    a layer that is no image's top shows ``layer`` and its chain id (``ls ROOT/layers``)."""
    lines = []
    for i, node in enumerate(roots):
        last = i == len(roots) - 1
        ident = " ".join(_short(i) for i in node.images) if node.images else f"layer {_short(node.chain_id)}"
        text = f"{ident} Size: {human_size(node.size)} (virtual {human_size(node.virtual_size)})"
        if node.tags:
            text += " Tags: " + ", ".join(node.tags)
        lines.append(f"{prefix}{'└─' if last else '├─'}{text}")
        lines.extend(_tree_lines(node.children, prefix + ("  " if last else "│ ")))
    return lines


def cmd_history(store: Store, args: argparse.Namespace) -> int:
    rows: list[HistoryRow] = store.history(args.image)
    if args.quiet:
        print("\n".join(r.id if args.no_trunc and r.id else _short(r.id) if r.id else "<missing>" for r in rows))
        return 0
    if args.format == "json":
        for r in rows:
            print(
                json.dumps(
                    {
                        "ID": r.id or "<missing>",
                        "CreatedAt": r.created,
                        "CreatedSince": since(parse_when(r.created)),
                        "CreatedBy": r.created_by,
                        "Size": human_size(r.size),
                        "Comment": r.comment,
                    }
                )
            )
        return 0
    out = []
    for r in rows:
        ident = (r.id if args.no_trunc else _short(r.id)) if r.id else "<missing>"
        created_by = r.created_by.replace("\t", " ")
        out.append(
            [
                ident,
                since(parse_when(r.created)) if r.created else "N/A",
                created_by if args.no_trunc else ellipsis(created_by, 45),
                human_size(r.size),
                r.comment,
            ]
        )
    print(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], out))
    return 0


def cmd_tag(store: Store, args: argparse.Namespace) -> int:
    store.tag(args.source, args.target)
    return 0


def cmd_rmi(store: Store, args: argparse.Namespace) -> int:
    status = 0
    for ref in args.images:
        try:
            for line in store.rmi(
                ref,
                force=args.force,
                holders=lambda image_id: [
                    *Containers(store.root.path).using_image(image_id),
                    *ImageMounts(store.root.path).using_image(image_id, store.images.chain(image_id)),
                ],
            ):
                print(line)
        except StoreError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_mount(store: Store, args: argparse.Namespace) -> int:
    """``strata mount IMAGE [DIR]``: the image read-only at DIR (default: under the store), printed;
    ``strata mount``: the image mounts there are."""
    mounts = ImageMounts(store.root.path)
    if args.layer is not None:
        if args.image is not None and args.dir is not None:
            raise UsageError("mount --layer takes a layer and at most one directory")
        with store.root.writer():  # rmi takes it too: the layer stays while it is being mounted
            chain = _layer(store, args.layer)
            print(mounts.mount(f"{LAYER}:{chain}", [store.layers.diff_dir(chain)], args.image))
        return 0
    if args.image is None:
        names = {f"{CONTAINER}:{c.id}": c.name for c in Containers(store.root.path).all()}
        with store.root.writer():
            rows = [
                [m.image.partition(":")[2][:12], names.get(m.image, "<gone>"), m.mountpoint]
                if m.image.startswith(f"{CONTAINER}:")
                else [_short(m.image.partition(":")[2]), "<layer>", m.mountpoint]
                if m.image.startswith(f"{LAYER}:")
                else [_short(m.image), (store.images.tags_of(m.image) or ["<none>"])[0], m.mountpoint]
                for m in mounts.all()
            ]
        print(table(["ID", "NAME", "MOUNTPOINT"], rows))
        return 0
    try:
        container = Containers(store.root.path).get(args.image)
    except NoSuchContainer:
        container = None
    if container is not None:  # a container's name or id: its own files over its image's
        if container.state().get("Running"):  # the live union: where its processes write
            print(container.path("merged"))
            return 0
        lowers = [container.path("upper"), container.path("init"), *container.config["LowerDirs"]]
        print(mounts.mount(f"{CONTAINER}:{container.id}", [d for d in lowers if os.path.isdir(d)], args.dir))
        return 0
    with store.root.writer():  # rmi takes it too: no image loses its layers while it is being mounted
        image_id = store.images.resolve(args.image)
        lowers = [store.layers.diff_dir(c) for c in reversed(store.images.chain(image_id))]
        print(mounts.mount(image_id, lowers, args.dir))
    return 0


def _layer(store: Store, ref: str) -> str:
    """The chain id of the layer ``ref`` names: a chain id or diff id, whole or a unique prefix
    (with or without ``sha256:``)."""
    want = ref.removeprefix("sha256:").lower()
    if len(want) < 1 or any(ch not in "0123456789abcdef" for ch in want):
        raise RunnerError(f"invalid layer reference {ref!r}: a chain id or diff id (hex), or a prefix of one")
    found = set()
    for chain in store.layers.all():
        if chain.removeprefix("sha256:").startswith(want) or store.layers.info(chain).diff_id.removeprefix(
            "sha256:"
        ).startswith(want):
            found.add(chain)
    if not found:
        raise RunnerError(f"no such layer: {ref}")
    if len(found) > 1:
        raise RunnerError(f"layer reference {ref} is ambiguous: {len(found)} layers match")
    return found.pop()


def cmd_umount(store: Store, args: argparse.Namespace) -> int:
    mounts = ImageMounts(store.root.path)
    status = 0
    for ref in args.targets:
        try:
            try:
                found = mounts.of_container(Containers(store.root.path).get(ref).id)
            except NoSuchContainer:
                found = None
            with store.root.writer():
                mounts.unmount(found or mounts.find(ref, store.images.resolve))
            print(ref)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_import(store: Store, args: argparse.Namespace) -> int:
    progress = _progress("Importing", "Imported")
    with _drawing(progress):
        image_id = store.import_rootfs(
            args.file,
            args.reference,
            args.change or [],
            stdin=_stdin() if args.file == "-" else None,
            message=args.message,
            progress=progress,
        )
    print(image_id)
    return 0


def cmd_load(store: Store, args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress("Loading layer", "Loaded")
    with _drawing(progress):
        lines = store.load(
            args.input or "-", stdin=_stdin() if not args.input or args.input == "-" else None, progress=progress
        )
    for line in lines:
        print(line)
    return 0


def cmd_pull(store: Store, args: argparse.Namespace) -> int:
    options = registry.remote_options(args)
    progress = None if args.quiet else _progress("Downloading", "Pull complete")
    with _drawing(progress):
        local, digest, notes = store.pull(args.name, progress, options)
    for note in notes:
        print(note)
    if not args.quiet:
        print(f"Digest: {digest}")
        print(f"Status: Downloaded image for {local}")
    print(local)
    return 0


def cmd_push(store: Store, args: argparse.Namespace) -> int:
    options = registry.remote_options(args)
    progress = None if args.quiet else _progress("Pushing", "Pushed")
    with _drawing(progress):
        tag, digest = store.push(args.name, progress, options)
    print(f"{tag}: digest: {digest}")
    return 0


def cmd_save(store: Store, args: argparse.Namespace) -> int:
    target = os.path.abspath(args.output) if args.output and args.output != "-" else None
    if target is not None and not os.path.exists(os.path.dirname(target)):  # Docker's check, first
        raise UsageError(
            f'failed to save image: invalid output path: directory "{os.path.dirname(target)}" does not exist'
        )
    items = store.save_items(args.images)  # every reference resolved before a byte is written
    progress = _progress("Saving", "Saved")
    with _drawing(progress):
        if target is None:
            if sys.stdout.isatty():
                raise UsageError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
            store.save(items, sys.stdout.buffer, progress)
            return 0
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.")
        except OSError as e:
            raise UsageError(f"failed to save image: cannot write {target}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                store.save(items, out, progress)
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as a file the shell made (mkstemp's is 0600)
            try:
                os.replace(tmp, target)
            except OSError as e:  # a directory there, say
                raise UsageError(f"failed to save image: cannot write {target}: {e.strerror}") from None
        except BaseException:
            os.unlink(tmp)
            raise
    return 0


def cmd_info(store: Store, args: argparse.Namespace) -> int:
    containers = Containers(store.root.path).all()
    info = {
        **store.info(),
        "Containers": len(containers),
        "Running": sum(1 for c in containers if c.state().get("Running")),
    }
    if args.format == "json":
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_system_check(store: Store, args: argparse.Namespace) -> int:
    problems = store.check()
    for p in problems:
        print(p)
    for line in store.leftovers():  # no damage: space that the next writer frees
        print(line)
    from ..net import attach  # (root: what a killed supervisor left of a container's network)

    for line in attach.leftovers(store.root.path):
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("store is consistent")
    return 0


# -- argument parsing -----------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    p = sub.add_parser("images", help="list images", description="List images, newest first (one row per tag).")
    p.add_argument(
        "reference",
        nargs="?",
        metavar="REPOSITORY[:TAG]",
        help="only this repository (any tag), or this tag; shell patterns (*) allowed",
    )
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too (default: hidden)")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        metavar="KEY=VALUE",
        help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, since=IMAGE; "
        "repeatable (the same key: either value; different keys: all)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids (default: 12 digits)")
    p.add_argument(
        "--tree",
        action="store_true",
        help="draw the layer tree: shared layers once, each image's id and tags where its top layer is",
    )
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="table, json (one JSON object per line), 'table TEMPLATE' or a Go template, as "
        "'{{.Repository}}:{{.Tag}}' (default table)",
    )
    p.set_defaults(func=cmd_images)

    p = sub.add_parser(
        "history",
        help="show an image's history",
        description="The steps that built an image, newest first; <missing> for steps whose result is no local image.",
    )
    p.add_argument("image", help="the image: a tag or an id (prefix)")
    p.add_argument("--no-trunc", action="store_true", help="full ids and commands (default: shortened)")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="table, or json: one JSON object per line (default table)",
    )
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("tag", help="add a tag to an image", description="Make TARGET name the image SOURCE names.")
    p.add_argument("source", help="an image: a tag or an id (prefix)")
    p.add_argument("target", help="the new tag: [HOST[:PORT]/]NAME[:TAG] (default tag: latest)")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="remove images (untag; free layers no image uses)")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="remove an image by id even if several tags name it (default: refused)",
    )
    p.add_argument("images", nargs="+", help="tags or ids (prefixes)")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser(
        "mount", help="mount an image or a stopped container read-only, to inspect it (none: list the mounts)"
    )
    p.add_argument(
        "image",
        nargs="?",
        metavar="IMAGE|CONTAINER",
        help="an image (tag or id prefix) or a container (name or id; a running one: its live "
        "union's path is printed); none: list the mounts",
    )
    p.add_argument("dir", nargs="?", help="where (default: a directory under the store, printed)")
    p.add_argument(
        "--layer",
        metavar="LAYER",
        help="mount one layer as it is stored, its whiteouts shown as .wh. files: a chain id as "
        "`images --tree` shows it, or a diff id as `inspect` lists it (RootFS.Layers), or a "
        "unique prefix of either; then the one argument is the directory",
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", aliases=["unmount"], help="unmount image mounts (by image or directory)")
    p.add_argument("targets", nargs="+", metavar="IMAGE|DIR", help="what `strata mount` mounted")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("import", help="create a one-layer image from a rootfs tar, directory or -")
    p.add_argument("file", help="a tar (maybe compressed), a directory, or - for a tar on stdin")
    p.add_argument("reference", nargs="?", help="tag for the image, NAME[:TAG] (default: none, untagged)")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE...), "
        "e.g. 'CMD [\"/bin/sh\"]'; repeatable",
    )
    p.add_argument("-m", "--message", help="comment for the history entry (default: 'Imported from FILE')")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("load", help="load images from a docker save / OCI archive or layout")
    p.add_argument(
        "-i", "--input", metavar="FILE|DIR", help="tar archive (maybe compressed) or OCI layout dir (default: stdin)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress (default: bars on a terminal)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("pull", help="pull an image from a registry (HOST[:PORT]/NAME[:TAG|@DIGEST])")
    p.add_argument(
        "name",
        help="HOST[:PORT]/NAME[:TAG] (default tag: latest), or NAME@sha256:... (checked "
        "against the manifest's bytes; tags nothing); no host: Docker Hub",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the local name (default: progress too)")
    registry.add_remote_flags(p, platform=True)
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("push", help="push a local image to the registry its name names")
    p.add_argument("name", help="a local tag HOST[:PORT]/NAME[:TAG] (strata tag one first)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress (default: bars on a terminal)")
    registry.add_remote_flags(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("save", help="save images to a tar archive (Docker >= 25 / OCI layout)")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout, not a terminal)")
    p.add_argument("images", nargs="+", help="tags or ids (prefixes)")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("info", help="show the store root and counts")
    p.add_argument("--format", choices=["text", "json"], default="text", help="text or json (default text)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("system", help="store maintenance")
    system = p.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    c = system.add_parser("check", help="verify every blob, layer chain, image and tag")
    c.set_defaults(func=cmd_system_check)
    prune.add_system_parsers(system)  # system prune, system df

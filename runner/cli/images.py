"""``strata`` image commands: images, history, tag, rmi, inspect (images), import, load, save, pull,
push, info, system check. Docker's flags and output columns."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from store import HistoryRow, Store, StoreError, TreeNode

from ..containers import Containers
from ..errors import RunnerError
from ..mounts import ImageMounts
from .errors import UsageError
from .format import ellipsis, human_size, parse_when, since, table


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _progress(label: str) -> Callable[[int, int], None] | None:
    """A one-line progress bar on a terminal; silence otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total:
            width = 30
            filled = min(width, width * done // total)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            sys.stderr.write(f"\r{label} [{bar}] {human_size(done)}/{human_size(total)}\x1b[K")
        else:
            sys.stderr.write(f"\r{label} {human_size(done)}\x1b[K")
        sys.stderr.flush()

    return show


def _end_progress(progress: object) -> None:
    if progress is not None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _stdin() -> BinaryIO:
    if sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is a terminal (use -i FILE)")
    return sys.stdin.buffer


# -- image commands -------------------------------------------------------------------------------
def cmd_images(store: Store, args: argparse.Namespace) -> int:
    if args.tree:
        for line in _tree_lines(store.tree()):
            print(line)
        return 0
    rows: list[dict[str, Any]] = []
    ids = store.images.ids()
    intermediate = {store.images.record(i).parent for i in ids}
    tagged = store.images.tags_by_image()
    for image_id in ids:
        config = store.images.config(image_id)
        created = parse_when(config.get("created"))
        tags = tagged.get(image_id) or ([] if image_id in intermediate and not args.all else ["<none>:<none>"])
        if not tags:
            continue
        for tag in tags:
            repo, t = tag.rsplit(":", 1)
            rows.append({
                "Repository": repo, "Tag": t, "ID": _short(image_id), "FullID": image_id,
                "CreatedSince": since(created), "CreatedAt": config.get("created", ""),
                "Size": human_size(store.images.size(image_id)), "created": created,
            })
    rows.sort(key=lambda r: (r["created"].timestamp() if r["created"] else 0), reverse=True)
    if args.quiet:
        for short in dict.fromkeys(r["ID"] for r in rows):  # each image once, newest first
            print(short)
        return 0
    if args.format == "json":
        for r in rows:
            print(json.dumps({k: v for k, v in r.items() if k not in ("created", "FullID")}))
        return 0
    print(table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                [[r["Repository"], r["Tag"], r["ID"], r["CreatedSince"], r["Size"]] for r in rows]))
    return 0


def _tree_lines(roots: list[TreeNode], prefix: str = "") -> list[str]:
    """Old ``docker images --tree``: one node a layer, shared layers once, children indented."""
    lines = []
    for i, node in enumerate(roots):
        last = i == len(roots) - 1
        text = f"{_short(node.chain_id)} Size: {human_size(node.size)} (virtual {human_size(node.virtual_size)})"
        if node.tags:
            text += " Tags: " + ", ".join(node.tags)
        elif node.images:
            text += " Image: " + ", ".join(_short(i) for i in node.images)
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
            print(json.dumps({
                "ID": r.id or "<missing>", "CreatedAt": r.created, "CreatedSince": since(parse_when(r.created)),
                "CreatedBy": r.created_by, "Size": human_size(r.size), "Comment": r.comment,
            }))
        return 0
    out = []
    for r in rows:
        ident = (r.id if args.no_trunc else _short(r.id)) if r.id else "<missing>"
        created_by = r.created_by.replace("\t", " ")
        out.append([ident, since(parse_when(r.created)) if r.created else "N/A",
                    created_by if args.no_trunc else ellipsis(created_by, 45), human_size(r.size), r.comment])
    print(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], out))
    return 0


def cmd_tag(store: Store, args: argparse.Namespace) -> int:
    store.tag(args.source, args.target)
    return 0


def cmd_rmi(store: Store, args: argparse.Namespace) -> int:
    status = 0
    for ref in args.images:
        try:
            for line in store.rmi(ref, force=args.force, holders=lambda image_id: [
                    *Containers(store.root.path).using_image(image_id),
                    *ImageMounts(store.root.path).using_image(image_id)]):
                print(line)
        except StoreError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_mount(store: Store, args: argparse.Namespace) -> int:
    """``strata mount IMAGE [DIR]``: the image read-only at DIR (default: under the store), printed;
    ``strata mount``: the image mounts there are."""
    mounts = ImageMounts(store.root.path)
    if args.image is None:
        with store.root.writer():
            rows = [[_short(m.image), (store.images.tags_of(m.image) or ["<none>"])[0], m.mountpoint]
                    for m in mounts.all()]
        print(table(["IMAGE ID", "IMAGE", "MOUNTPOINT"], rows))
        return 0
    with store.root.writer():  # rmi takes it too: no image loses its layers while it is being mounted
        image_id = store.images.resolve(args.image)
        lowers = [store.layers.diff_dir(c) for c in reversed(store.images.chain(image_id))]
        print(mounts.mount(image_id, lowers, args.dir))
    return 0


def cmd_umount(store: Store, args: argparse.Namespace) -> int:
    mounts = ImageMounts(store.root.path)
    status = 0
    for ref in args.targets:
        try:
            with store.root.writer():
                mounts.unmount(mounts.find(ref, store.images.resolve))
            print(ref)
        except RunnerError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_import(store: Store, args: argparse.Namespace) -> int:
    progress = _progress("Importing")
    try:
        image_id = store.import_rootfs(
            args.file, args.reference, args.change or [], stdin=_stdin() if args.file == "-" else None,
            message=args.message, progress=progress,
        )
    finally:
        _end_progress(progress)
    print(image_id)
    return 0


def cmd_load(store: Store, args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress("Loading layers")
    try:
        lines = store.load(args.input or "-", stdin=_stdin() if not args.input or args.input == "-" else None,
                           progress=progress)
    finally:
        _end_progress(progress)
    for line in lines:
        print(line)
    return 0


def cmd_pull(store: Store, args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress("Pulling")
    try:
        local, digest, notes = store.pull(args.name, progress)
    finally:
        _end_progress(progress)
    for note in notes:
        print(note)
    if not args.quiet:
        print(f"Digest: {digest}")
        print(f"Status: Downloaded image for {local}")
    print(local)
    return 0


def cmd_push(store: Store, args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress("Pushing")
    try:
        tag, digest = store.push(args.name, progress)
    finally:
        _end_progress(progress)
    print(f"{tag}: digest: {digest}")
    return 0


def cmd_save(store: Store, args: argparse.Namespace) -> int:
    target = os.path.abspath(args.output) if args.output and args.output != "-" else None
    if target is not None and not os.path.exists(os.path.dirname(target)):  # Docker's check, first
        raise UsageError(f'failed to save image: invalid output path: directory "{os.path.dirname(target)}" '
                         "does not exist")
    items = store.save_items(args.images)  # every reference resolved before a byte is written
    progress = _progress("Saving")
    try:
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
    finally:
        _end_progress(progress)
    return 0


def cmd_info(store: Store, args: argparse.Namespace) -> int:
    containers = Containers(store.root.path).all()
    info = {**store.info(), "Containers": len(containers),
            "Running": sum(1 for c in containers if c.state().get("Running"))}
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
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("store is consistent")
    return 0


# -- argument parsing -----------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    p = sub.add_parser("images", help="list images")
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--tree", action="store_true", help="draw the layer tree")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("history", help="show an image's history")
    p.add_argument("image")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("tag", help="add a tag to an image")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="remove images (untag; free layers no image uses)")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("mount", help="mount an image read-only, to inspect it (no IMAGE: list the mounts)")
    p.add_argument("image", nargs="?")
    p.add_argument("dir", nargs="?", help="where (default: a directory under the store, printed)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", aliases=["unmount"], help="unmount image mounts (by image or directory)")
    p.add_argument("targets", nargs="+", metavar="IMAGE|DIR")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("import", help="create a one-layer image from a rootfs tar, directory or -")
    p.add_argument("file")
    p.add_argument("reference", nargs="?")
    p.add_argument("-c", "--change", action="append", help="apply a Dockerfile instruction, e.g. 'CMD [\"/bin/sh\"]'")
    p.add_argument("-m", "--message", help="commit message for the history entry")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("load", help="load images from a docker save / OCI archive or layout")
    p.add_argument("-i", "--input", help="tar archive (maybe compressed) or OCI layout dir; stdin if absent")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("pull", help="pull an image from a registry (HOST[:PORT]/NAME[:TAG])")
    p.add_argument("name")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("push", help="push a local image to the registry its name names")
    p.add_argument("name")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("save", help="save images to a tar archive (Docker >= 25 / OCI layout)")
    p.add_argument("-o", "--output", help="file to write (stdout if absent)")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("info", help="show the store root and counts")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("system", help="store maintenance")
    system = p.add_subparsers(dest="system_command", metavar="COMMAND", required=True)
    c = system.add_parser("check", help="verify every blob, layer chain, image and tag")
    c.set_defaults(func=cmd_system_check)

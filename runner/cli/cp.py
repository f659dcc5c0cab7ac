"""``strata cp``: files between a container and here, both ways, as Docker's: ``CONTAINER:SRC DEST``
or ``SRC CONTAINER:DEST``; ``-`` is a tar stream (out to stdout, in from stdin, unpacked into a
directory). Docker's rules for where a copy lands: into a directory that exists (under the source's
name; ``SRC/.``: its contents), over a file that exists, else as the new name (its parent must
exist). What is copied here belongs to the caller; what goes into the container belongs to its root
unless ``-a`` keeps the owners. The container's side is ``runner.containercopy``'s."""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from typing import Any

from store import Store

from .. import containercopy
from ..containers import Container, Containers
from ..errors import RunnerError
from .format import human_size


def split(arg: str) -> tuple[str | None, str]:
    """Docker's splitCpArg: ``NAME:PATH`` names a container unless the argument is an absolute path
    or starts with ``.`` (``./file:name`` is local)."""
    if arg.startswith("/"):
        return None, arg
    name, sep, path = arg.partition(":")
    if not sep or name.startswith("."):
        return None, arg
    return name, path


def _arcname(path: str) -> str:
    """The name a path's tar puts it under: its base name, or "." for ``DIR/.`` (its contents)."""
    if path.endswith("/.") or path in (".", "/"):
        return "."
    return posixpath.basename(path.rstrip("/")) or "."


def _renamer(old: str, new: str) -> Any:
    """Rename a tar's top entry ``old`` (and what is under it) to ``new``."""

    def rename(name: str) -> str:
        name = name.removeprefix("./") if old != "." else name
        if name == old or name.startswith(old + "/"):
            return new + name[len(old) :]
        return name

    return rename


def _size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        st = os.lstat(path)
        return st.st_size if os.path.isfile(path) and not os.path.islink(path) else 0
    return sum(
        os.lstat(os.path.join(d, f)).st_size
        for d, _, files in os.walk(path)
        for f in files
        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    )


def copy_out(root: str, c: Container, src: str, dest: str) -> None:
    found = containercopy.lookup(root, c, src)
    if not found.get("exists"):
        raise RunnerError(f"Could not find the file {src} in container {c.name}")
    arcname = _arcname(src)
    if dest == "-":
        containercopy.run_inside(root, c, lambda: containercopy.write_tar(src, arcname, 1))
        return
    target = os.path.abspath(dest)
    if os.path.isdir(target):
        into, rename = target, None
    elif os.path.lexists(target):
        if found.get("dir"):
            raise RunnerError("cannot copy directory to file")
        into, rename = os.path.dirname(target), _renamer(arcname, os.path.basename(target))
    else:
        if dest.endswith("/") and not found.get("dir"):
            raise RunnerError(f"destination directory {dest} does not exist")  # (Docker: "no such directory")
        if not os.path.isdir(os.path.dirname(target)):
            raise RunnerError(f"lstat {os.path.dirname(target)}: no such file or directory")
        into = os.path.dirname(target)
        if arcname == ".":
            os.mkdir(target)
            into, rename = target, None
        else:
            rename = _renamer(arcname, os.path.basename(target))
    r, w = os.pipe()

    def body() -> None:
        os.close(r)
        containercopy.write_tar(src, arcname, w)

    def meanwhile() -> None:
        os.close(w)
        try:
            containercopy.read_tar(into, r, keep_owners=False, rename=rename, host=True)
        finally:
            os.close(r)

    containercopy.run_inside(root, c, body, meanwhile)


def copy_in(root: str, c: Container, src: str, dest: str, keep_owners: bool) -> None:
    found = containercopy.lookup(root, c, dest)
    if src == "-":
        if not found.get("dir"):
            raise RunnerError(f'destination "{c.name}:{dest}" must be a directory')
        containercopy.run_inside(root, c, lambda: containercopy.read_tar(dest, 0, keep_owners))
        return
    local = os.path.abspath(src) + ("/." if src.endswith("/.") else "")
    if not os.path.lexists(local.removesuffix("/.")):
        raise RunnerError(f"lstat {local.removesuffix('/.')}: no such file or directory")
    is_dir = os.path.isdir(local) and not os.path.islink(local.removesuffix("/."))
    arcname = _arcname(src)
    if found.get("exists") and found.get("dir"):
        into, name = dest, arcname
    elif found.get("exists"):
        if is_dir:
            raise RunnerError("cannot copy directory to file")
        into, name = posixpath.dirname(dest.rstrip("/")) or "/", posixpath.basename(dest)
    else:
        if not found.get("parent"):
            raise RunnerError(
                f"Could not find the file {posixpath.dirname(dest.rstrip('/')) or '/'} in container {c.name}"
            )
        if dest.endswith("/") and not is_dir:
            raise RunnerError(f"destination directory {c.name}:{dest} does not exist")
        into, name = posixpath.dirname(dest.rstrip("/")) or "/", posixpath.basename(dest.rstrip("/"))
    r, w = os.pipe()

    def body() -> None:
        os.close(w)
        containercopy.read_tar(into, r, keep_owners)

    def meanwhile() -> None:
        os.close(r)
        try:
            containercopy.write_tar(local.removesuffix("/."), name, w)  # (".": its contents)
        finally:
            os.close(w)

    containercopy.run_inside(root, c, body, meanwhile)


def cmd_cp(store: Store, args: argparse.Namespace) -> int:
    if not args.source:
        raise RunnerError("source can not be empty")
    if not args.destination:
        raise RunnerError("destination can not be empty")
    (src_ref, src), (dest_ref, dest) = split(args.source), split(args.destination)
    if src_ref and dest_ref:
        raise RunnerError("copying between containers is not supported")
    if not src_ref and not dest_ref:
        raise RunnerError("must specify at least one container source")
    root = store.root.path
    sys.stdout.flush()
    if src_ref:
        c = Containers(root).get(src_ref)
        copy_out(root, c, src, dest)
        shown, size = dest, None
    else:
        assert dest_ref is not None
        c = Containers(root).get(dest_ref)
        copy_in(root, c, src, dest, bool(args.archive))
        shown, size = f"{dest_ref}:{dest}", _size(os.path.abspath(src)) if src != "-" else None
    if not args.quiet and os.isatty(1) and dest != "-":  # Docker's summary, on a terminal only
        if size is None and not src_ref:
            return 0
        total = size if size is not None else _size(os.path.abspath(dest))
        print(f"Successfully copied {human_size(total)} to {shown}", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "cp",
        help="copy files between a container and here (- : a tar stream)",
        description="strata cp CONTAINER:SRC DEST|-  or  strata cp SRC|- CONTAINER:DEST. A directory "
        "is copied whole (SRC/. : its contents); - is a tar on stdout or stdin.",
    )
    p.add_argument("-a", "--archive", action="store_true", help="keep the owners (default: the container's root)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary (there is none unless on a terminal)")
    p.add_argument("source", metavar="SRC", help="CONTAINER:PATH, a local path, or -")
    p.add_argument("destination", metavar="DEST", help="CONTAINER:PATH, a local path, or -")
    p.set_defaults(func=cmd_cp)

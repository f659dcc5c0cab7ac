"""The ``-o`` options of a union mount, in kernel overlayfs's and fuse-overlayfs's spelling, as
containers-storage passes them to its ``mount_program`` (``lowerdir=`` of its ``l/`` symlinks,
``upperdir=``, ``workdir=``, ``volatile``, empty items, ``fsync=0``, ``uidmapping=``/``gidmapping=``,
``xattr_permissions=2``, its ``mountopt`` such as ``nodev``). Parsing and checking only: nothing
here mounts.

Everything is checked before anything is mounted: an option neither ours nor one of the few FUSE
options known to be safe is refused, naming it, rather than handed to FUSE (where a typo would
pass silently, or a ``fsname=`` break ``-u``).

Caveats: ``context=`` (an SELinux label) is refused unless empty (what containers-storage sends, or
rather does not send, where SELinux is off): the daemon cannot label what it serves. fuse-overlayfs's
``squash_to_uid=``/``squash_to_gid=`` are refused in favour of one-id maps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnionError
from .owners import IdMap

OURS = (
    "lowerdir",
    "upperdir",
    "workdir",
    "log",
    "volatile",
    "xattr_permissions",
    "raw",
    "uidmapping",
    "gidmapping",
    "squash_to_uid",
    "squash_to_gid",
    "fsync",
    "context",
    "passthrough",
    "metacopy",
)
# FUSE's own options that only restrict the mount or open it to other users, passed on as given.
# Anything else FUSE takes (fsname=, subtype=, max_read=, blksize=, auto_unmount, ...) is refused.
FUSE_OPTIONS = ("allow_other", "default_permissions", "ro", "nodev", "nosuid", "noexec")
# In the workdir of a volatile mount, as kernel overlayfs's $workdir/work/incompat/volatile: made
# before mounting, removed when the daemon ends. Found at a mount, it says a volatile mount of this
# upper ended with the host (or was killed): its unsynced writes may be lost, so it is refused.
VOLATILE_MARK = os.path.join("incompat", "volatile")


@dataclass
class Options:
    lowers: list[str]
    upper: str | None
    work: str | None
    fuse: list[str]  # passed on to FUSE: FUSE_OPTIONS only
    log: str | None = None
    volatile: bool = False  # nothing is fsynced: copy-ups, fsync, fsyncdir (overlayfs's option of that name)
    owners_xattr: bool = False  # owners and modes in user.containers.override_stat (``owners``)
    raw: bool = False  # one layer as stored, whiteouts and opaque markers shown as the files they are
    uids: IdMap | None = None  # uidmapping=/gidmapping= (fuse-overlayfs's): owners as container ids
    gids: IdMap | None = None
    fsync: bool = True  # fsync=0 (fuse-overlayfs's): fsync and fsyncdir return at once
    passthrough: bool = True  # passthrough=0: never FUSE passthrough (every read and write by the daemon)
    # metacopy=on (kernel overlayfs's): copy-ups that need no data leave it below (``metacopy``). Off
    # by default, as in the kernel: containers-storage reads the upper of its mount program directly.
    metacopy: bool = False


def split_items(value: str) -> list[str]:
    """The comma-separated items of one ``-o`` value; a comma inside double quotes is part of its
    item (containers-storage quotes ``context="...:s0:c1,c2"``). Empty items are dropped."""
    items: list[str] = []
    item, quoted = "", False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(item)
            item = ""
        else:
            item += char
    items.append(item)
    return [i for i in items if i]


def parse_options(values: Sequence[str]) -> Options:
    """``-o`` values in kernel overlayfs / fuse-overlayfs spelling; lowerdir lists top-most first.
    UnionError (one line) for anything missing, unknown or inconsistent."""
    found: dict[str, str] = {}
    fuse: list[str] = []
    for value in values:
        for item in split_items(value):
            key, _, arg = item.partition("=")
            if key in OURS:
                found[key] = arg
            elif item in FUSE_OPTIONS:
                fuse.append(item)
            else:
                raise UnionError(f"unknown option {item!r} (--help lists the options)")
    if not found.get("lowerdir"):
        raise UnionError("missing -o lowerdir=DIR[:DIR...]")
    lowers = [d for d in found["lowerdir"].split(":") if d]
    upper, work = found.get("upperdir") or None, found.get("workdir") or None
    if (upper is None) != (work is None):
        raise UnionError("upperdir and workdir go together")
    for d in lowers + [d for d in (upper, work) if d]:
        if not os.path.isdir(d):
            raise UnionError(f"{d}: not a directory")
    if upper and work:
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            raise UnionError(f"workdir {work} must be on the same filesystem as upperdir {upper}")
        if os.path.realpath(work).startswith(os.path.realpath(upper) + "/") or os.path.realpath(upper).startswith(
            os.path.realpath(work) + "/"
        ):
            raise UnionError("upperdir and workdir must not be inside each other")
        mark = os.path.join(work, VOLATILE_MARK)
        if os.path.isdir(mark):
            raise UnionError(
                f"{mark}: a volatile mount of this upper did not end cleanly and may have lost "
                "writes; remove that directory to mount it anyway"
            )
    permissions = found.get("xattr_permissions", "0")
    if permissions not in ("0", "2"):  # (fuse-overlayfs's 1 keeps them under another name)
        raise UnionError(f"xattr_permissions={permissions}: only 0 and 2 (user.containers.override_stat) are supported")
    if found.get("fsync", "1") not in ("0", "1"):
        raise UnionError(f"fsync={found['fsync']}: 0 (fsync and fsyncdir return at once) or 1 expected")
    if found.get("passthrough", "1") not in ("0", "1"):
        raise UnionError(f"passthrough={found['passthrough']}: 0 (reads and writes through the daemon) or 1 expected")
    if found.get("metacopy", "off") not in ("on", "off"):
        raise UnionError(
            f"metacopy={found['metacopy']}: on (copy-ups that need no data leave it below) or off expected"
        )
    if found.get("context", "").strip('"'):
        raise UnionError(
            f"context={found['context']}: SELinux labels are not supported (the daemon cannot label "
            "what it serves); run the container with --security-opt label=disable"
        )
    raw = "raw" in found
    if raw and (upper or len(lowers) != 1):
        raise UnionError("raw shows one layer as it is stored: one lowerdir, no upperdir")
    for squash in ("squash_to_uid", "squash_to_gid"):
        if squash in found:
            raise UnionError(f"{squash} is not supported: give the map as uidmapping=0:ID:1,gidmapping=0:ID:1")
    maps = []
    for key in ("uidmapping", "gidmapping"):
        try:
            maps.append(IdMap.parse(found[key]) if key in found else None)
        except ValueError as e:
            raise UnionError(f"{key}={found[key]}: {str(e).split(': ', 1)[-1]}") from None
    return Options(
        lowers,
        upper,
        work,
        fuse,
        found.get("log"),
        "volatile" in found,
        permissions == "2",
        raw,
        uids=maps[0],
        gids=maps[1],
        fsync=found.get("fsync") != "0",
        passthrough=found.get("passthrough") != "0",
        metacopy=found.get("metacopy") == "on" and upper is not None,
    )

"""What a container changed, and its whole tree, read from its layer dirs without mounting anything.

``changes`` walks the upper dir only (its whiteouts are OCI ``.wh.`` files), asking the image's layers
only about the names it meets, so its cost grows with the change, not with the image: ``D`` for a
whiteout, ``C`` for a name the image has, ``A`` for a new one; parent dirs of changes show as ``C``,
as ``docker diff`` does.

``flatten`` lists the merged tree (upper over lowers, whiteouts applied) with the real file behind
each name, for ``strata export``.

A container's union copies metadata alone up where it can (``unionfs.metacopy``): an upper file may
keep its data in a lower layer. ``UpperData`` says where, for whatever writes an upper's files out
without mounting it (``commit``, ``export``, a build step's layer); ``union_lowers`` are the lower
layer dirs a container's union is mounted with (where that data may be).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unionfs import metacopy, whiteout
from unionfs.layers import LayerSet, join

if TYPE_CHECKING:
    from .containers import Container

MOUNTPOINTS = "mountpoints"  # volumemounts.LAYER: the layer of a container's mount destinations


def union_lowers(c: Container) -> list[str]:
    """The lower layer dirs of container ``c``'s union, top-most first (as its supervisor mounts it)."""
    return [c.path("init"), c.path(MOUNTPOINTS), *c.config["LowerDirs"]]


class UpperData:
    """Where the files of an upper over ``lowers`` keep their data: ``data_of(path)`` and the
    ``private`` xattrs not to write out, as ``store.tarwrite`` takes them."""

    def __init__(self, lowers: list[str]) -> None:
        self.lowers = lowers
        self.private = metacopy.PRIVATE_XATTRS

    def data_of(self, path: str) -> str:
        return metacopy.data_path(path, self.lowers)


def changes(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """[(kind, /path)] sorted by path; kind is A, C or D."""
    image = LayerSet(None, lowers)
    out: list[tuple[str, str]] = []
    try:

        def walk(rel: str, below: list[int] | None) -> None:
            for name in sorted(os.listdir(os.path.join(upper, rel) if rel else upper)):
                if name == whiteout.OPAQUE:
                    continue
                if whiteout.is_special(name):
                    out.append(("D", "/" + join(rel, name[len(whiteout.PREFIX) :])))
                    continue
                child = join(rel, name)
                found = image.resolve(below, rel, name) if below else None
                out.append(("C" if found else "A", "/" + child))
                path = os.path.join(upper, child)
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    opaque = os.path.lexists(os.path.join(path, whiteout.OPAQUE))
                    walk(child, found.dir_layers if found and found.is_dir and not opaque else None)

        walk("", image.root_dirs())
    finally:
        image.close()
    return sorted(out, key=lambda change: change[1])


def flatten(upper: str, lowers: list[str]) -> Iterator[tuple[str, os.stat_result, str]]:
    """(name, lstat, real path) for every entry of the merged tree, parents before children."""
    layers = LayerSet(None, [upper, *lowers])
    try:

        def walk(rel: str, dirs: list[int]) -> Iterator[tuple[str, os.stat_result, str]]:
            for name in sorted(layers.listdir(dirs, rel)):
                found = layers.resolve(dirs, rel, name)
                if found is None:
                    continue
                child = join(rel, name)
                yield child, found.st, os.path.join(layers.paths[found.layer], child)
                if found.is_dir:
                    yield from walk(child, found.dir_layers)

        yield from walk("", layers.root_dirs())
    finally:
        layers.close()

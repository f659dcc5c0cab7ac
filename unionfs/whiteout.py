"""Whiteout and opaque-directory spellings, read in every form, written in OCI form only.

Read (kernel overlayfs's Documentation/filesystems/overlayfs.rst and OCI image-spec layer.md):
  - ``.wh.NAME`` (an OCI whiteout) or a char device 0/0 named NAME (an overlay whiteout) hides NAME
    in the layers below;
  - ``.wh..wh..opq`` in a directory, or the xattr ``trusted.overlay.opaque`` / ``user.overlay.opaque``
    = ``y`` on it, hides everything below that directory.
Written: only ``.wh.NAME`` files and ``.wh..wh..opq``, so an upper dir tars straight into a layer and
needs no root. The spelling is shared with ``store`` by spec, not by import.
"""

from __future__ import annotations

import os
import stat

PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def is_special(name: str) -> bool:
    """Names that are markers, never shown in listings and never creatable through the mount."""
    return name.startswith(PREFIX)


def whiteout_name(name: str) -> str:
    return PREFIX + name


def is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dir_fd: int) -> bool:
    """True when the directory open at ``dir_fd`` hides the layers below it."""
    try:
        os.stat(OPAQUE, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        pass
    for key in _OPAQUE_XATTRS:
        try:
            if os.getxattr(dir_fd, key) == b"y":
                return True
        except OSError:
            continue
    return False


def is_whited_out(dir_fd: int, name: str) -> bool:
    """True when ``name`` is hidden by a whiteout in the directory open at ``dir_fd``."""
    try:
        os.stat(whiteout_name(name), dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False

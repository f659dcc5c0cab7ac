"""A lower layer's directory on a private mount of its own, read-only and noatime, as kernel
overlayfs clones its layers' mounts (``clone_private_mount``): whatever this process does through
it (a read, a FUSE passthrough read through a backing file, an exec mapping one) cannot write the
layer or move an atime in it. Layers are shared by every container of their images.

The mount is a detached clone of the directory's mount tree (open_tree(2) with OPEN_TREE_CLONE, then
mount_setattr(2): Linux 5.12), reached only through the directory fd returned (and what is opened
from it); it goes with the last of those. As with kernel overlayfs, the layer's filesystem can be
unmounted from the host meanwhile (it stays in use, out of sight, until the union's daemon ends),
and a mount made under the layer after the clone is not seen through it.

Making one needs CAP_SYS_ADMIN over this process's mount namespace (root, or the owner of a user
namespace with a mount namespace of its own, as podman's rootless mount programs run): elsewhere
``clone`` returns None, and the caller opens the directory itself (as on any other failure, a host at
its ``fs.mount-max`` say: the clone only adds a protection). A mount namespace made with a user
namespace locks the atime mode of the mounts it was given: there the clone is read-only alone, and
lower files are opened O_NOATIME (``copydata.open_lower``), which that namespace's root may do.
"""

from __future__ import annotations

import ctypes
import os
import struct

_OPEN_TREE = 428  # asm-generic's numbers, as x86_64's and aarch64's (a wrong one: ENOSYS, no clone)
_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOATIME = 0x10
_MOUNT_ATTR__ATIME = 0x70  # the atime mode's bits: cleared, then NOATIME set

_libc = ctypes.CDLL(None)
_libc.syscall.restype = ctypes.c_long


def clone(fd: int) -> int | None:
    """An fd on the directory ``fd`` on a read-only, noatime clone of its mount tree (read-only
    alone where the atime mode is locked); None where none could be made (see the module's doc).
    ``fd`` stays as it is."""
    tree = _libc.syscall(
        ctypes.c_long(_OPEN_TREE),
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH | _AT_RECURSIVE),
    )
    if tree < 0:
        return None
    try:
        if not (
            _set(tree, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOATIME, _MOUNT_ATTR__ATIME)
            or _set(tree, _MOUNT_ATTR_RDONLY, 0)
        ):
            return None
        # open_tree's fd is an O_PATH one, which f*xattr and getdents refuse
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tree)
    except OSError:
        return None
    finally:
        os.close(tree)


def _set(tree: int, attr_set: int, attr_clr: int) -> bool:
    """mount_setattr(2) on the whole cloned tree; False if it failed."""
    # struct mount_attr {__u64 attr_set, attr_clr, propagation, userns_fd}
    attr = struct.pack("=QQQQ", attr_set, attr_clr, 0, 0)
    done = _libc.syscall(
        ctypes.c_long(_MOUNT_SETATTR),
        ctypes.c_int(tree),
        ctypes.c_char_p(b""),
        ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE),
        ctypes.c_char_p(attr),
        ctypes.c_size_t(len(attr)),
    )
    return int(done) == 0

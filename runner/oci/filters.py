"""Seccomp programs kept across ``strata-oci`` processes: generating one with libseccomp takes
~14 ms for podman's default profile, and every ``create`` (and ``exec``) is a fresh process that
would generate the same program again. The programs live in ``<root>/@seccomp/`` (``@`` is in no
container id), one file per profile: the profile's canonical JSON, the program and its flags, and
what generated it (strata's ``seccomp.py`` and the libseccomp file mapped then, each by device,
inode, size and mtime). A file is used only if all of that matches, else the program is generated
and the file written again (atomically); anything unreadable is a miss. The root is the caller's
own (0700), so what is read there was written by strata-oci for this user.
"""

from __future__ import annotations

import marshal
import os
import zlib

from .. import cjson, seccomp
from .statedir import _write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any

DIRECTORY = "@seccomp"


def prepare(root: str, profile: dict[str, Any]) -> seccomp.Filter:
    """``seccomp.prepare(profile)``, through the cache under ``root``. Raises what it raises."""
    key = cjson.dumps(profile, sort_keys=True)
    path = os.path.join(root, DIRECTORY, f"{zlib.crc32(key.encode()):08x}-{len(key)}")
    found = _load(path, key)
    if found is not None:
        return seccomp.Filter(*found)
    made = seccomp.prepare(profile)
    library = _library()
    if library is not None:
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            _write_atomic(path, marshal.dumps((key, made.program, made.flags, _generator(), library)), 0o600)
        except OSError:
            pass  # no cache: the next create generates it again
    return made


def _load(path: str, key: str) -> tuple[bytes, int] | None:
    try:
        with open(path, "rb") as f:
            stored, program, flags, generator, library = marshal.load(f)
        if stored != key or generator != _generator() or library != _identity(library[0]):
            return None
    except (OSError, EOFError, ValueError, TypeError, IndexError):
        return None
    if not isinstance(program, bytes) or not isinstance(flags, int):
        return None
    return program, flags


def _identity(path: str) -> tuple[str, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _generator() -> tuple[str, int, int, int, int] | None:
    return _identity(seccomp.__file__)


def _library() -> tuple[str, int, int, int, int] | None:
    """The libseccomp this process generated with (after ``seccomp.prepare``): from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and os.path.basename(fields[5]).startswith("libseccomp.so"):
                    return _identity(fields[5])
    except OSError:
        pass
    return None

"""Errors of the union filesystem, and the one place they become FUSE replies.

    UnionError          bad mount options or layer dirs (raised before mounting; the CLI prints it)

Inside the filesystem, code raises ``OSError`` with an errno. ``fuse_boundary`` (used on every
Operations handler) turns an ``OSError`` into ``pyfuse3.FUSEError`` with the same errno, and anything
unexpected into a logged traceback and EIO: a bad state never crashes the daemon.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

log = logging.getLogger("unionfs")

T = TypeVar("T")
P = ParamSpec("P")


class UnionError(Exception):
    """A mount that cannot be made: the message says why, in one line."""


def fuse_boundary(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("unionfs: %s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def oserror(code: int, what: str = "") -> OSError:
    return OSError(code, errno.errorcode.get(code, str(code)), what)

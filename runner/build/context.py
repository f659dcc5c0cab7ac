"""The build context and its Dockerfile, as the ``docker build`` CLI finds them.

A directory is read where it is: nothing is copied, COPY reads only the files it names (and hashes
them once). A tar on stdin (plain or compressed) is unpacked once, with the store's safe extraction,
into the build's scratch directory, its transfer shown as it goes; anything else on stdin is a
Dockerfile with an empty context (``strata build - < Dockerfile``). ``-f`` names the Dockerfile
(relative to the current directory; ``-`` for stdin), else ``CONTEXT/Dockerfile`` (or
``dockerfile``). ``.dockerignore`` is ``DOCKERFILE.dockerignore`` next to the Dockerfile if there
is one (BuildKit's rule), else the context's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from store.compression import NONE, decompressing
from store.errors import StoreError
from store.extract import extract
from store.tarstream import TarReader

from .dockerignore import Matcher, read_patterns
from .errors import BuildError
from .progress import Progress, size
from .trees import DirTree


@dataclass
class Context:
    tree: DirTree
    dockerfile: str  # its text
    name: str  # how errors call it: the -f path as given, else "Dockerfile"


class _Counting:
    """A stream that reports how much has been read through it."""

    def __init__(self, inner: BinaryIO, report: object) -> None:
        self.inner, self.report, self.total = inner, report, 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.total += len(data)
        self.report(self.total)  # type: ignore[operator]
        return data


def open_context(
    path: str, dockerfile: str | None, stdin: BinaryIO | None, scratch: str, progress: Progress
) -> Context:
    """The context at ``path`` (a directory, or ``-``: stdin) and its Dockerfile."""
    if path == "-":
        if dockerfile == "-":
            raise BuildError("invalid argument: can't use stdin for both build context and dockerfile")
        assert stdin is not None
        root = os.path.join(scratch, "context")
        os.mkdir(root, 0o700)
        text = _from_stdin(stdin, root, progress)
        if text is not None:  # stdin held a Dockerfile: the context is empty
            return _with_ignore(Context(DirTree(root), text, "Dockerfile"), None, progress)
        return _load(root, dockerfile, progress, inside=True)
    if not os.path.isdir(path):
        raise BuildError(f"unable to prepare context: path {path!r} not found (a directory, or - for a tar on stdin)")
    if dockerfile == "-":
        assert stdin is not None
        return _with_ignore(
            Context(DirTree(path), stdin.read().decode("utf-8", "replace"), "Dockerfile"), None, progress
        )
    return _load(path, dockerfile, progress, inside=False)


def _load(root: str, dockerfile: str | None, progress: Progress, inside: bool) -> Context:
    if dockerfile is None:
        name = "Dockerfile"
        file = os.path.join(root, name)
        if not os.path.lexists(file) and os.path.lexists(os.path.join(root, "dockerfile")):
            file = os.path.join(root, "dockerfile")
    else:
        name = dockerfile
        file = os.path.join(root, dockerfile) if inside else os.path.abspath(dockerfile)
    vertex = progress.vertex(f"[internal] load build definition from {os.path.basename(name)}")
    try:
        with open(file, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        vertex.error(f"failed to read dockerfile: {e.strerror}")
        raise BuildError(f"failed to read dockerfile {name}: {e.strerror}") from None
    vertex.status(f"transferring dockerfile: {size(len(text.encode()))}", done=True)
    vertex.done()
    context = Context(DirTree(root), text, name)
    return _with_ignore(context, file + ".dockerignore", progress)


def _with_ignore(context: Context, beside: str | None, progress: Progress) -> Context:
    """The ``.dockerignore`` in force: next to the Dockerfile, else the context's own."""
    vertex = progress.vertex("[internal] load .dockerignore")
    candidates = ([beside] if beside else []) + [os.path.join(context.tree.root, ".dockerignore")]
    text = ""
    for candidate in candidates:
        try:
            with open(candidate, encoding="utf-8", errors="replace") as f:
                text = f.read()
            break
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BuildError(f"cannot read {candidate}: {e.strerror}") from None
    try:
        context.tree.ignore = Matcher(read_patterns(text)) if text else None
    except ValueError as e:
        raise BuildError(f".dockerignore: {e}") from None
    vertex.status(f"transferring context: {size(len(text.encode()))}", done=True)
    vertex.done()
    return context


def _from_stdin(stdin: BinaryIO, root: str, progress: Progress) -> str | None:
    """Unpack a tar from stdin into ``root``; or, if stdin is no tar, return its text (a Dockerfile)."""
    kind, plain = decompressing(stdin, "stdin")
    head = plain.read(512)
    if kind == NONE and (len(head) < 512 or head[257:262] != b"ustar"):
        return (head + plain.read()).decode("utf-8", "replace")
    vertex = progress.vertex("[internal] load build context")

    class _Joined:
        def __init__(self) -> None:
            self.first = head

        def read(self, n: int = -1) -> bytes:
            if self.first:
                data, self.first = (
                    (self.first, b"") if n < 0 or n >= len(self.first) else (self.first[:n], self.first[n:])
                )
                return data
            return plain.read(n)

    counted = _Counting(_Joined(), lambda total: vertex.status(f"transferring context: {size(total)}"))  # type: ignore[arg-type]
    try:
        extract(TarReader(counted, "stdin"), root, "the build context on stdin")  # type: ignore[arg-type]
    except StoreError as e:
        vertex.error(str(e))
        raise BuildError(f"the build context on stdin: {e}") from None
    vertex.status(f"transferring context: {size(counted.total)}", done=True)
    vertex.done()
    return None

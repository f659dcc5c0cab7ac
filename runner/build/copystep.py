"""COPY and ADD: their sources found (in the context, a built stage or an image; a heredoc; for ADD
with a network, a URL), their checksum (the cache key: ``file:``, ``dir:`` or ``multi:``, moby's
spelling), and the copy into a step's upper.

Source paths are relative to their tree whatever their leading ``/``; wildcards match as Go's
``filepath.Match`` against every path of the tree (moby's copyWithWildcards); more than one source
needs a destination ending in ``/``. In the context, a path through ``..`` or a symlink that leads
out of it is refused ("forbidden path outside the build context"), and what ``.dockerignore``
leaves out does not exist.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import stat
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .copying import DestinationError, Owner, Upper, is_archive, lookup_owner
from .dockerignore import clean
from .errors import BuildError
from .plan import CopyPlan
from .trees import Checksums, DirTree, Escape, Tree, glob, has_wildcards, join, resolve

URL_TIMEOUT = 60.0


@dataclass
class Source:
    tree: Tree | None  # None: ``data`` (a heredoc)
    rel: str  # resolved inside the tree
    name: str  # the base name it lands as in a destination directory
    checksum: str
    data: bytes = b""
    unpack: bool = False  # ADD: a local archive, unpacked
    remote: bool = False  # ADD: downloaded (never unpacked)


def checksum_of(sources: list[Source]) -> str:
    if len(sources) == 1:
        return sources[0].checksum
    return "multi:" + hashlib.sha256(",".join(s.checksum for s in sources).encode()).hexdigest()


def probe_comment(plan: CopyPlan, sources: list[Source]) -> str:
    """``COPY [--chown=X ][--chmod=N ]<checksum> in <dest> `` (moby's, plus --chmod, which the classic
    builder did not have and which must change the key)."""
    chown = f"--chown={plan.chown} " if plan.chown else ""
    chmod = f"--chmod={plan.chmod:04o} " if plan.chmod is not None else ""
    return f"{plan.keyword} {chown}{chmod}{checksum_of(sources)} in {plan.dest} "


def find_sources(plan: CopyPlan, tree: Tree, sums: Checksums, where: str, what: str) -> list[Source]:
    """Every source of ``plan`` found in ``tree`` (``what`` names it in errors), URLs left out."""
    found: list[Source] = []
    for pattern in plan.sources:
        if pattern.startswith("<<"):
            name = pattern[2:]
            data = plan.heredocs[name]
            found.append(Source(None, name, name, _data_checksum(name, data), data))
            continue
        if "://" in pattern:
            continue
        path = pattern.lstrip("/")
        path = path[2:] if path.startswith("./") else path
        if has_wildcards(path):
            matches = glob(tree, path)
            if not matches:
                raise BuildError(
                    f"{where}: {plan.keyword} failed: no source files were specified ({pattern!r} "
                    f"matches nothing in {what})"
                )
            for rel in matches:
                found.append(
                    _source(tree, sums, rel, posixpath.basename(rel), f"{where}: {plan.keyword} failed", pattern, what)
                )
            continue
        cleaned = clean(path)
        if tree.strict and (cleaned == ".." or cleaned.startswith("../")):
            raise BuildError(f"{where}: {plan.keyword} failed: forbidden path outside the build context: {pattern}")
        cleaned = "" if cleaned == "." else cleaned
        found.append(
            _source(tree, sums, cleaned, posixpath.basename(cleaned), f"{where}: {plan.keyword} failed", pattern, what)
        )
    return found


def _source(tree: Tree, sums: Checksums, rel: str, name: str, where: str, pattern: str, what: str) -> Source:
    try:
        real = resolve(tree, rel)
    except Escape as e:
        raise BuildError(f"{where}: forbidden path outside the build context: {pattern} ({e})") from None
    if tree.lstat(real) is None:
        if isinstance(tree, DirTree):
            raise BuildError(f"{where}: file not found in build context or excluded by .dockerignore: {pattern}")
        raise BuildError(f"{where}: {pattern}: no such file or directory in {what}")
    return Source(tree, real, name, sums.of(real))


def _data_checksum(name: str, data: bytes) -> str:
    header = f"name{name}mode420uid0gid0size{len(data)}typeflag0linknameunamegnamedevmajor0devminor0"
    return "file:" + hashlib.sha256(header.encode() + data).hexdigest()


def download(plan: CopyPlan, scratch: str, network: bool, where: str) -> list[Source]:
    """ADD's URL sources, fetched into ``scratch`` (mode 0600, dated by Last-Modified, as moby's
    downloadSource), or refused when the build has no network."""
    found = []
    for n, url in enumerate(s for s in plan.sources if "://" in s and not s.startswith("<<")):
        if not network:
            raise BuildError(
                f"{where}: ADD {url}: the build has no network (--network none): build without it, "
                "or COPY a file downloaded beforehand"
            )
        name = posixpath.basename(urllib.parse.urlparse(url).path)
        if not name and plan.target.endswith("/"):
            raise BuildError(f"{where}: ADD {url}: cannot determine a file name for it")
        directory = os.path.join(scratch, f"download-{n}")
        os.makedirs(directory, mode=0o700)
        path = os.path.join(directory, name or "__unnamed__")
        try:
            with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response, open(path, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                modified = response.headers.get("Last-Modified")
        except (OSError, ValueError) as e:
            raise BuildError(f"{where}: ADD {url}: {getattr(e, 'reason', e)}") from None
        os.chmod(path, 0o600)
        when = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0
        os.utime(path, (when, when))
        tree = DirTree(directory)
        found.append(
            Source(tree, os.path.basename(path), name, Checksums(tree).of(os.path.basename(path)), remote=True)
        )
    return found


def perform(upper: Upper, plan: CopyPlan, sources: list[Source], preserve: bool, where: str) -> None:
    """Copy ``sources`` to the plan's destination in ``upper``. ``preserve``: keep the sources' owners
    (COPY --from without --chown)."""
    try:
        owner: Owner | None = lookup_owner(upper.view, plan.chown) if plan.chown else None
    except LookupError as e:
        raise BuildError(f"{where}: --chown={plan.chown}: {e}") from None
    new_dirs = owner or (0, 0)
    copied: Owner | None = owner if owner is not None else (None if preserve else (0, 0))
    ends_slash = plan.target.endswith("/")
    try:
        target = upper.resolve(plan.target)
        for source in sources:
            st = source.tree.lstat(source.rel) if source.tree is not None else None
            if st is not None and source.tree is not None and _is_dir(st.st_mode):
                upper.make_dirs(target, new_dirs)
                upper.copy_tree(source.tree, source.rel, target, copied, plan.chmod)
                continue
            if source.unpack and source.tree is not None:
                upper.make_dirs(target, (0, 0))
                upper.unpack(source.tree.real_path(source.rel), target, where)
                continue
            into = ends_slash or upper.is_dir(target)
            rel = join(target, source.name) if into and source.name else target
            upper.make_dirs(posixpath.dirname(rel), new_dirs)
            if upper.is_dir(rel):
                raise DestinationError(f"cannot copy {source.name or 'a file'} over the directory /{rel}")
            if source.tree is None:
                upper.write_file(rel, source.data, copied or (0, 0), plan.chmod if plan.chmod is not None else 0o644)
            else:
                assert st is not None
                upper.put(rel, source.tree, source.rel, st, copied, plan.chmod)
        upper.finish()
    except DestinationError as e:
        raise BuildError(f"{where}: {plan.keyword} failed: destination {plan.dest}: {e}") from None


def mark_archives(plan: CopyPlan, sources: list[Source], where: str) -> None:
    """ADD unpacks the local tars among its sources (recognised by content, not by name)."""
    if plan.keyword != "ADD":
        return
    for source in sources:
        if isinstance(source.tree, DirTree) and not source.remote:
            st = source.tree.lstat(source.rel)
            if st is not None and not _is_dir(st.st_mode):
                source.unpack = is_archive(source.tree.real_path(source.rel), where)


def _is_dir(mode: int) -> bool:
    return stat.S_ISDIR(mode)

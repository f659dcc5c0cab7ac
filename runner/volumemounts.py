"""A container's volumes, binds and tmpfs mounts on the host's side: the volumes made with its record
(``create``, image content copied into a new one), what each start makes before its union is mounted
(``prepare``: missing bind sources, the *mountpoints layer*). The runtime-spec mounts they become
are ``oci.spec.oci_mounts``'; ``oci.rootfs`` performs them inside the container's root.

The mountpoints layer (``containers/<id>/mountpoints``, a lower just below the init layer) holds the
directories (or empty files, for a file bound) that the mounts need and the container's layers lack,
so mounting them never writes into its upper: ``diff``, ``commit`` and ``export`` show neither the
mounts' contents nor their mountpoints, as Docker's do not. Each destination is resolved in the
container's layers as ``oci.rootfs`` resolves it in the mounted root (symlinks followed as if the
root were ``/``, ``..`` stopping there), so the directories are made where the mounts will land;
the layer dirs themselves are only read (``unionfs.layers``), never followed out of.

*Caveats*: a destination under a name the upper has removed (a whiteout) is made in the upper at
mount time; a hard link copied into a new volume becomes separate files; rootless, the files copied
into a new volume belong to the user (root in the container), whatever their owner in the image.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from unionfs import owners
from unionfs.layers import LayerSet, Resolved, join

from . import layerdiff
from .containers import Container, Containers
from .errors import RunnerError
from .oci.spec import oci_mounts
from .volumes import Volume, Volumes

LAYER = layerdiff.MOUNTPOINTS  # (the one place that names it, for those that read a union's lowers)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- resolution in a container's layers ----------------------------------------------------------
Path = list[tuple[str, Resolved | None]]  # a resolved path: each component and what the layers have there


def resolve(layers: LayerSet, path: str) -> Path:
    """``path`` resolved in the merged view of ``layers`` as if its root were ``/`` (securejoin's
    rules, as ``oci.rootfs.resolve_in_root``): symlinks followed (an absolute target restarts at the
    root), ``..`` stopping at the root, a missing name taken as a directory to be made."""
    done: Path = []
    pending = [p for p in reversed(path.split("/")) if p]
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        rel = "/".join(name for name, _ in done)
        parent = done[-1][1] if done else None
        if not done:
            found = layers.resolve(layers.root_dirs(), "", part)
        elif parent is not None and parent.is_dir:
            found = layers.resolve(parent.dir_layers, rel, part)
        else:
            found = None
        if found is not None and stat.S_ISLNK(found.st.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            with layers.at(found.layer, join(rel, part)) as (fd, name):
                target = os.readlink(name, dir_fd=fd)
            if target.startswith("/"):
                done = []
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        done.append((part, found))
    return done


def _through_dirs(path: Path) -> bool:
    """Is every component but the last a directory, or nothing yet (so the path can be made)?"""
    return all(found is None or found.is_dir for _, found in path[:-1])


def _copy_meta(layers: LayerSet, found: Resolved, rel: str, dir_fd: int, name: str) -> None:
    """Mode, owner (as root), times and an owners override of ``found`` onto ``name`` in ``dir_fd``."""
    st = found.st
    if os.geteuid() == 0:  # (an ordinary user cannot give files away: the override says the owner)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            with layers.at(found.layer, rel) as (fd, entry):
                try:
                    override = os.getxattr(f"/proc/self/fd/{fd}/{entry}", owners.XATTR, follow_symlinks=False)
                except OSError:
                    override = None
            if override is not None:
                try:
                    os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", owners.XATTR, override, follow_symlinks=False)
                except OSError:
                    pass
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _make_in_layer(layer_dir: str, layers: LayerSet, path: Path, directory: bool) -> None:
    """Make ``path`` in the mountpoints layer when the view lacks its last component: the
    directories above it that the view has, with their mode, owner and times (the layer above the
    image shows them), then what is missing (directories 0755, or an empty file)."""
    if not path or path[-1][1] is not None or not _through_dirs(path):
        return  # there already, or under a non-directory: the mount itself says what is wrong
    fd = os.open(layer_dir, _DIR)
    try:
        rel = ""
        for i, (name, found) in enumerate(path):
            rel = join(rel, name)
            last = i == len(path) - 1
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if last and not directory:
                    os.close(
                        os.open(
                            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd
                        )
                    )
                    os.chmod(name, 0o644, dir_fd=fd)  # whatever the umask
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    if found is not None:
                        _copy_meta(layers, found, rel, fd, name)
                    else:
                        os.chmod(name, 0o755, dir_fd=fd)
            if last:
                break
            nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


# -- image content into a new volume --------------------------------------------------------------
def _copy_tree(layers: LayerSet, dirs: list[int], rel: str, dst: int) -> None:
    for name in sorted(layers.listdir(dirs, rel)):
        found = layers.resolve(dirs, rel, name)
        if found is None:
            continue
        child, mode = join(rel, name), found.st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            sub = os.open(name, _DIR, dir_fd=dst)
            try:
                _copy_tree(layers, found.dir_layers, child, sub)
            finally:
                os.close(sub)
        elif stat.S_ISREG(mode):
            with layers.at(found.layer, child) as (fd, entry):
                src = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                out = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst
                )
                try:
                    while os.sendfile(out, src, None, 1 << 30):
                        pass
                finally:
                    os.close(out)
            finally:
                os.close(src)
        elif stat.S_ISLNK(mode):
            with layers.at(found.layer, child) as (fd, entry):
                os.symlink(os.readlink(entry, dir_fd=fd), name, dir_fd=dst)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dst)
        elif os.geteuid() == 0 and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, found.st.st_rdev, dir_fd=dst)
        else:
            continue  # a socket, or a device an ordinary user cannot make
        _copy_meta(layers, found, child, dst, name)


def _populate(volume: Volume, lowers: list[str], destination: str) -> None:
    """Docker's copy of the image's content at ``destination`` into a volume that is empty, with the
    directory's own mode and owner."""
    layers = LayerSet(None, lowers)
    try:
        path = resolve(layers, destination)
        if not path or path[-1][1] is None or not path[-1][1].is_dir or not _through_dirs(path):
            return
        if not volume.is_empty():
            return
        found = path[-1][1]
        assert found is not None
        rel = "/".join(name for name, _ in path)
        dst = os.open(volume.dir, _DIR)
        try:
            data = os.open("_data", _DIR, dir_fd=dst)
            try:
                _copy_tree(layers, found.dir_layers, rel, data)
            finally:
                os.close(data)
            _copy_meta(layers, found, rel, dst, "_data")
        finally:
            os.close(dst)
    finally:
        layers.close()


# -- create and start -----------------------------------------------------------------------------
def create(root: str, config: dict[str, Any], name: str | None, cid: str) -> Container:
    """Record the container and make the volumes it mounts (named ones on first use, anonymous
    ones), copying the image's content into each new empty one, all under the volumes' lock (no
    volume goes meanwhile). If a volume cannot be made, the record and the volumes made for it go:
    nothing is left."""
    volumes = Volumes(root)
    points = [m for m in config.get("MountPoints") or [] if m["Type"] == "volume"]
    with volumes.locked():
        container = Containers(root).create(config, name, cid)
        made: list[Volume] = []
        try:
            for m in points:
                volume, new = volumes.create(m["Name"], m.get("Labels"))
                if new:
                    made.append(volume)
                if m.get("CopyData"):
                    _populate(volume, config["LowerDirs"], m["Destination"])
        except (OSError, RunnerError) as e:
            Containers(root).remove(container)
            for volume in made:
                volumes.delete(volume)
            if isinstance(e, RunnerError):
                raise
            raise RunnerError(f"cannot create container: {e}") from None
    return container


def prepare(container: Container) -> None:
    """Before a start mounts the union: the missing sources of ``-v`` binds (as Docker's daemon
    makes them, 0755), and the mountpoints layer. ``RunnerError`` if either cannot be made."""
    config = container.config
    umask = os.umask(0o022)  # Docker's daemon's, not the caller's (a 077 would close them to the container)
    try:
        os.makedirs(container.path(LAYER), mode=0o755, exist_ok=True)
        for m in config.get("MountPoints") or []:
            if m["Type"] == "bind" and m.get("Create") and not os.path.lexists(m["Source"]):
                try:
                    os.makedirs(m["Source"], mode=0o755, exist_ok=True)
                except OSError as e:
                    raise RunnerError(
                        f"error while creating mount source path '{m['Source']}': mkdir {e.filename}: {e.strerror}"
                    ) from None
    finally:
        os.umask(umask)
    targets = [(m["destination"], m["type"] != "bind" or os.path.isdir(m["source"])) for m in oci_mounts(config)]
    if not targets:
        return
    layers = LayerSet(container.path("upper"), [container.path("init"), container.path(LAYER), *config["LowerDirs"]])
    try:
        for destination, directory in targets:
            try:
                _make_in_layer(container.path(LAYER), layers, resolve(layers, destination), directory)
            except OSError as e:
                raise RunnerError(f"cannot make the mountpoint {destination}: {e.strerror}") from None
    finally:
        layers.close()

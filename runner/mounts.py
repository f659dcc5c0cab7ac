"""Mounts for inspection: an image's layers, or a stopped container's writable layer over its image,
as one read-only union at a directory, or one layer as it is stored (its whiteouts shown as the
files they are: ``strata mount --layer``), served by a unionfs daemon of its own until ``strata
umount`` (podman's ``image mount`` and ``mount``). Rootless, the daemon shows the owners the
layers keep in their xattr (``unionfs.owners``) and the user's own files as root's, as the
container sees them: the same owners root's mount shows.

Records live in ``ROOT/mounts/<12 hex>.json`` for an image id, ``c-<12 hex>.json`` for a container
and ``l-<12 hex>.json`` for a layer (what: ``sha256:...``, ``container:<id>`` or ``layer:<chain id>``,
mountpoint, the daemon's pid and start time);
without a directory the mountpoint is the record's name without ``.json``. One image or container
has at most one mount. A record whose mount is gone (the daemon was killed, the host rebooted) counts as nothing and
is dropped by the next command that looks. ``rmi`` asks ``using_image`` so that no mounted image loses
its layers. Callers hold the store's writer lock, which orders mounts against ``rmi``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from store import StoreError
from store.root import write_json
from unionfs import mountinfo

from . import syscalls
from .errors import RunnerError
from .process import process_alive, start_time

_GRACE = 10.0  # seconds the daemon gets to exit once unmounted


@dataclass
class ImageMount:
    image: str
    mountpoint: str
    pid: int
    start_time: str | None  # the daemon's (``process.start_time``): a reused pid is not ours


def _shown(key: str) -> str:
    """``image 1a2b3c...``, ``container 4d5e6f...`` or ``layer 7a8b9c...``, as a message names a
    mount's subject."""
    kind, _, ident = key.partition(":")
    if kind in (CONTAINER, LAYER):
        return f"{kind} {ident.partition(':')[2][:12] if kind == LAYER else ident[:12]}"
    return f"image {ident[:12]}"


def _mounted(path: str) -> bool:
    """Is a unionfs mount at ``path``?"""
    return any(fstype == "fuse.unionfs" for _, fstype in mountinfo.mounts_at(path))


def check_fuse_device(device: str = "/dev/fuse") -> None:
    """An ordinary user mounts through fusermount3, which needs /dev/fuse open to it (libfuse gives up
    with no reason otherwise): say so, in one line, before anything is made."""
    if os.geteuid() != 0 and not os.access(device, os.R_OK | os.W_OK):
        raise RunnerError(
            f"cannot use {device}: permission denied (a union mount as an ordinary user needs it "
            "open to you: mode 0666, most distributions' default)"
        )


CONTAINER = "container"  # a record's key for a container: ``container:<id>``
LAYER = "layer"  # and for one layer: ``layer:sha256:<chain id>``
_PREFIX = {CONTAINER: "c-", LAYER: "l-"}


class ImageMounts:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "mounts")

    def _record(self, key: str) -> str:
        kind, _, ident = key.partition(":")
        if kind == LAYER:
            ident = ident.partition(":")[2]
        return os.path.join(self.dir, _PREFIX.get(kind, "") + ident[:12] + ".json")

    def _load(self, path: str) -> ImageMount | None:
        try:
            with open(path) as f:
                data = json.load(f)
            found = ImageMount(data["Image"], data["Mountpoint"], data["Pid"], data["StartTime"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found if _mounted(found.mountpoint) else None

    def all(self) -> list[ImageMount]:
        """The live mounts; records of mounts that are gone are removed."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        live = []
        for name in names:
            path = os.path.join(self.dir, name)
            found = self._load(path)
            if found is None:
                self._forget(path)
            else:
                live.append(found)
        return live

    def _forget(self, record: str) -> None:
        try:
            os.unlink(record)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(record[: -len(".json")])  # our own mountpoint, if it was one (and is empty)
        except OSError:
            pass

    def using_image(self, image_id: str, chain: Sequence[str] = ()) -> list[str]:
        """The mounts of the image, or of one of its layers (``chain``: their chain ids)."""
        keys = {image_id, *(f"{LAYER}:{c}" for c in chain)}
        return [f"mount at {m.mountpoint}" for m in self.all() if m.image in keys]

    def of_container(self, cid: str) -> ImageMount | None:
        """The inspection mount of container ``cid``, if there is one."""
        return self._load(self._record(f"{CONTAINER}:{cid}"))

    def mount(self, image_id: str, lowers: list[str], target: str | None) -> str:
        """Mount ``lowers`` (top-most first) read-only at ``target`` or our own directory; return the
        mountpoint. Mounting a mounted image again gives its mountpoint. A ``layer:`` key mounts its
        one lower raw (``unionfs -o raw``)."""
        record = self._record(image_id)
        current = self._load(record)
        if current is not None:
            if target is not None and os.path.realpath(target) != current.mountpoint:
                raise RunnerError(f"{_shown(image_id)} is already mounted at {current.mountpoint}")
            return current.mountpoint
        self._forget(record)
        if target is None:
            os.makedirs(self.dir, exist_ok=True)
            mountpoint = record[: -len(".json")]
            os.makedirs(mountpoint, exist_ok=True)
        else:
            mountpoint = os.path.realpath(target)
            if not os.path.isdir(mountpoint):
                raise RunnerError(f"{target}: not a directory")
            if _mounted(mountpoint):
                raise RunnerError(f"{target}: another image is mounted there")
            os.makedirs(self.dir, exist_ok=True)
        from unionfs.errors import UnionError  # trio and pyfuse3 load only for commands that mount
        from unionfs.mount import fork_serve

        check_fuse_device()
        options = ["raw"] if image_id.startswith(f"{LAYER}:") else []
        if os.geteuid() != 0:  # the layers' owners: kept in xattrs, the user's own files are root's
            options += ["xattr_permissions=2", f"uidmapping=0:{os.geteuid()}:1", f"gidmapping=0:{os.getegid()}:1"]
        try:
            pid, ready = fork_serve(mountpoint, lowers, options=options)
        except UnionError as e:
            self._forget(record)
            raise RunnerError(str(e)) from None
        with os.fdopen(ready, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message != "ok":
            os.waitpid(pid, 0)
            self._forget(record)
            raise RunnerError(message or "the unionfs daemon died before mounting")
        start = start_time(pid)  # the daemon outlives this command: init adopts it when we exit
        try:  # run-time state: not synced; a temp file of its own, so two mounts cannot mix theirs
            write_json(
                record, {"Image": image_id, "Mountpoint": mountpoint, "Pid": pid, "StartTime": start}, durable=False
            )
        except OSError as e:  # a mount nobody could find again: take it down
            self.unmount(ImageMount(image_id, mountpoint, pid, start))
            raise RunnerError(f"cannot record the mount of {_shown(image_id).split()[-1]}: {e.strerror}") from None
        return mountpoint

    def find(self, ref: str, resolve: Callable[[str], str]) -> ImageMount:
        """The mount at a path, or of an image reference (``resolve`` maps a reference to an id)."""
        mounts = self.all()
        paths = {os.path.abspath(ref), os.path.realpath(ref)}  # a dead mount cannot be stat'ed: both
        for m in mounts:
            if m.mountpoint in paths:
                return m
        by_image = {m.image: m for m in mounts}
        try:
            image_id: str | None = resolve(ref)
        except StoreError:
            image_id = None
        if image_id in by_image:
            return by_image[image_id]
        raise RunnerError(f"{ref}: not a mounted image or image mount")

    def unmount(self, m: ImageMount) -> None:
        """Unmount, wait for the daemon to exit, drop the record (and our own mountpoint)."""
        try:
            if os.geteuid() == 0:
                syscalls.umount2(m.mountpoint)
            else:
                res = subprocess.run(["fusermount3", "-u", m.mountpoint], capture_output=True, text=True)
                if res.returncode != 0:
                    raise OSError(res.stderr.strip() or f"fusermount3 -u {m.mountpoint} failed")
        except OSError as e:
            raise RunnerError(f"cannot unmount {m.mountpoint}: {os.strerror(e.errno) if e.errno else e}") from None
        if m.start_time is not None and process_alive(m.pid, m.start_time):
            try:
                fd = os.pidfd_open(m.pid)
            except ProcessLookupError:
                fd = -1
            if fd >= 0:
                try:
                    select.select([fd], [], [], _GRACE)  # readable once it has exited
                finally:
                    os.close(fd)
        self._forget(self._record(m.image))

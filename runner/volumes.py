"""Volumes, as Docker's ``local`` driver keeps them: ``ROOT/volumes/NAME/_data`` is what a container
mounts, ``volume.json`` next to it what ``volume inspect`` says (created, labels). Which containers
use a volume is read from their records (``MountPoints``), never kept here.

    volumes/lock            flock: creating and removing volumes, and creating a container that
                            mounts them (so no volume goes while a container takes it)
    volumes/NAME/_data      the volume's files (the mount source)
    volumes/NAME/volume.json {"CreatedAt", "Labels", "Options"}
    volumes/.tmp-*          a volume being made (renamed into place whole) or removed

A volume is visible once its directory has its final name, with ``_data`` and ``volume.json`` in
it. An *anonymous* volume (a 64-hex name, made for an image's ``VOLUME`` or ``-v /path``) carries
Docker's label ``com.docker.volume.anonymous``: ``prune`` without ``--all`` removes only those, and
``rm -v`` (or ``run --rm``) removes a container's own.

*Caveats*: only the ``local`` driver, with no options (``-o type=nfs`` and friends are refused).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from store.root import write_json

from . import userns
from .errors import NoSuchVolume, RunnerError, VolumeInUse

DRIVER = "local"
ANONYMOUS = "com.docker.volume.anonymous"  # Docker's label on the volumes it makes without a name
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"


def check_name(name: str) -> None:
    """Docker's local driver's rule for a volume name, in its words (``create NAME: ...``)."""
    if len(name) == 1:
        raise RunnerError(
            f"create {name}: volume name is too short, names should be at least two alphanumeric characters"
        )
    if not _NAME.fullmatch(name):
        raise RunnerError(
            f'create {name}: "{name}" includes invalid characters for a local volume name, only '
            f'"{NAME_CHARS}" are allowed. If you intended to pass a host directory, use absolute path'
        )


def anonymous_name() -> str:
    return secrets.token_hex(32)


@dataclass
class Volume:
    name: str
    dir: str  # volumes/NAME
    meta: dict[str, Any]

    @property
    def data(self) -> str:
        """The directory a container mounts (``Mountpoint``)."""
        return os.path.join(self.dir, "_data")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.meta.get("Labels") or {})

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS in self.labels

    def inspect(self) -> dict[str, Any]:
        """``docker volume inspect``'s object."""
        return {
            "CreatedAt": self.meta.get("CreatedAt", ""),
            "Driver": DRIVER,
            "Labels": self.labels,
            "Mountpoint": self.data,
            "Name": self.name,
            "Options": dict(self.meta.get("Options") or {}),
            "Scope": "local",
        }

    def is_empty(self) -> bool:
        try:
            with os.scandir(self.data) as it:
                return next(it, None) is None
        except FileNotFoundError:
            return True


class Volumes:
    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, "volumes")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The volumes' writer lock: held while volumes are made or removed, and while a container
        that mounts them is recorded (a volume in use is then always one a record names)."""
        os.makedirs(self.dir, mode=0o701, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def path(self, name: str) -> str:
        """Where the volume ``name`` lives (whether or not it exists); ``name`` must be valid."""
        check_name(name)
        return os.path.join(self.dir, name)

    def get(self, name: str) -> Volume:
        """The volume ``name``; ``NoSuchVolume`` (Docker's ``get NAME: no such volume``)."""
        if not _NAME.fullmatch(name):
            raise NoSuchVolume(f"get {name}: no such volume")
        path = os.path.join(self.dir, name)
        try:
            with open(os.path.join(path, "volume.json"), "rb") as f:
                meta = json.load(f)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NoSuchVolume(f"get {name}: no such volume") from None
        return Volume(name, path, meta)

    def all(self) -> list[Volume]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                out.append(self.get(name))
            except NoSuchVolume:  # the lock, a volume being made or removed
                continue
        return out

    def create(self, name: str | None = None, labels: dict[str, str] | None = None) -> tuple[Volume, bool]:
        """The volume ``name`` (None: an anonymous one), made if it does not exist (as Docker's
        ``volume create`` of an existing name, which gives it back). Returns it and whether it was
        made now. Call with the lock held."""
        labels = dict(labels or {})
        if name is None:
            name = anonymous_name()
            labels.setdefault(ANONYMOUS, "")
        path = self.path(name)
        try:
            return self.get(name), False
        except NoSuchVolume:
            pass
        os.makedirs(self.dir, mode=0o701, exist_ok=True)
        tmp = os.path.join(self.dir, f".tmp-{name}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o701)
            os.mkdir(os.path.join(tmp, "_data"))
            os.chmod(os.path.join(tmp, "_data"), 0o755)  # whatever the caller's umask
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta = {"CreatedAt": created, "Labels": labels, "Options": {}}
            write_json(os.path.join(tmp, "volume.json"), meta)
            os.rename(tmp, path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunnerError(f"create {name}: {e.strerror}") from None
        return Volume(name, path, meta), True

    def users(self, name: str) -> list[str]:
        """The ids of the containers whose records mount the volume ``name``."""
        from .containers import Containers

        return [
            c.id
            for c in Containers(self.root).all()
            if any(m.get("Type") == "volume" and m.get("Name") == name for m in c.config.get("MountPoints") or [])
        ]

    def remove(self, name: str, force: bool = False) -> None:
        """Remove the volume ``name``: refused while a container's record mounts it (Docker's
        ``remove NAME: volume is in use - [IDS]``); ``force``: a volume that does not exist is no
        error. Call with the lock held."""
        try:
            volume = self.get(name)
        except NoSuchVolume:
            if force:
                return
            raise
        if users := self.users(name):
            raise VolumeInUse(f"remove {name}: volume is in use - [{', '.join(users)}]")
        self.delete(volume)

    def delete(self, volume: Volume) -> None:
        """Remove ``volume`` whoever uses it (call with the lock held, having asked ``users``)."""
        gone = os.path.join(self.dir, f".tmp-{volume.name}-{secrets.token_hex(4)}")
        os.rename(volume.dir, gone)  # invisible at once, whatever rmtree leaves
        _rmtree(gone)

    def release(self, config: dict[str, Any]) -> None:
        """Remove the anonymous volumes a container's record (``config``, already removed) mounts and
        that no other container uses: ``rm -v``, ``run --rm``."""
        with self.locked():
            for m in config.get("MountPoints") or []:
                if m.get("Type") != "volume" or not m.get("Anonymous"):
                    continue
                try:
                    volume = self.get(m["Name"])
                except NoSuchVolume:
                    continue
                if volume.anonymous and not self.users(volume.name):
                    try:
                        self.delete(volume)
                    except OSError:  # (a clean-up: the volume stays, listed, for volume rm or prune)
                        continue

    def prune(self, every: bool = False, labels: list[str] | None = None) -> tuple[list[str], int]:
        """Remove the volumes no container uses (``every``: named ones too, else only anonymous
        ones), those with ``labels`` (``KEY`` or ``KEY=VALUE``) if given; (names, bytes freed)."""
        from .containers import Containers

        removed, freed = [], 0
        with self.locked():
            used = {
                m.get("Name")
                for c in Containers(self.root).all()
                for m in c.config.get("MountPoints") or []
                if m.get("Type") == "volume"
            }
            for volume in self.all():
                if volume.name in used or not (every or volume.anonymous):
                    continue
                if labels and not all(_label_matches(item, volume.labels) for item in labels):
                    continue
                size = disk_usage(volume.data)
                self.delete(volume)
                removed.append(volume.name)
                freed += size
        return removed, freed


def _label_matches(item: str, labels: dict[str, str]) -> bool:
    key, sep, value = item.partition("=")
    return key in labels and (not sep or labels[key] == value)


def disk_usage(path: str) -> int:
    """The bytes of the files below ``path`` (a file with several links counted once), as Docker's
    ``directory.Size``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _rmtree(path: str) -> None:
    """Remove a tree a container wrote. Rootless, what the container's other users made belongs to
    the user's subordinate ids, out of the user's reach: what is left is removed again in a user
    namespace mapped as the container's was (a fork: it must be single-threaded to unshare)."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path) or os.geteuid() == 0:
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            uids, gids = userns.mappings(os.getuid(), os.getgid())
            userns.enter({"linux": {"uidMappings": uids, "gidMappings": gids}})
            shutil.rmtree(path, ignore_errors=True)
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)

"""Container records on disk, next to the store: ``ROOT/containers/<id>/``.

    config.json     what was asked for: image, command, env, limits (written once, at create)
    state.json      what is happening: status, pids, exit code, times (replaced atomically)
    container.log   output, one JSON object a line (Docker's json-file driver)
    upper/ work/    the container's writable layer and the union filesystem's workdir
    merged/         the union mountpoint while the container runs
    hostname hosts resolv.conf   bind-mounted into the container

A container is visible once its config.json exists. Names are unique: creating takes
``containers/lock``. A ``running`` state whose supervisor is gone reads as exited with an error.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from store.images import now
from store.root import write_json

from .errors import ContainerConflict, NoSuchContainer, RunnerError

_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ADJ = ["brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quirky", "sharp", "tender", "vivid", "wise"]
_NOUN = ["babbage", "curie", "darwin", "euler", "gauss", "hopper", "lovelace", "noether", "pascal", "turing"]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of /proc/PID/stat (after the command name), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """Is ``pid`` alive and the same process (its start time, field 22 of /proc/PID/stat, matches)?"""
    fields = _stat_fields(pid) if pid else None
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


@dataclass
class Container:
    dir: str
    config: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.config["Id"])

    @property
    def name(self) -> str:
        return str(self.config["Name"])

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0, "OOMKilled": False,
                                 "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z",
                                 "Error": ""}
        try:
            with open(self.path("state.json"), "rb") as f:
                state = json.load(f)
        except FileNotFoundError:
            pass
        except ValueError:  # an unsynced state cut short by a crash of the host: nothing runs now
            state.update(Status="exited", ExitCode=255, Error="the container's state was lost in a crash")
        if state.get("Status") == "running" and not process_alive(state.get("SupervisorPid", 0),
                                                                 state.get("SupervisorStart")):
            state.update(Status="exited", Running=False, ExitCode=255,
                         Error=state.get("Error") or "the container's supervisor died")
        return state

    def set_state(self, read: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        """Change the state (``read``: what ``state()`` just gave, so as not to read it again)."""
        state = dict(read) if read is not None else self.state()
        state.update(changes)
        # not fsynced: after a crash of the host no container runs, whatever its state said
        write_json(self.path("state.json"), state, durable=False)
        return state


class Containers:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "containers")

    @contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def all(self) -> list[Container]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            path = os.path.join(self.dir, n, "config.json")
            try:
                with open(path) as f:
                    out.append(Container(os.path.join(self.dir, n), json.load(f)))
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
        return sorted(out, key=lambda c: c.config["Created"], reverse=True)

    def get(self, ref: str) -> Container:
        """By name (with or without a leading /), full id or unique id prefix, as Docker accepts."""
        ref = ref.lstrip("/") if ref.startswith("/") else ref
        every = self.all()
        for c in every:
            if c.name == ref or c.id == ref:
                return c
        matches = [c for c in every if c.id.startswith(ref)] if re.fullmatch(r"[0-9a-f]+", ref) else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RunnerError(f"multiple containers match {ref!r}: use more of the id")
        raise NoSuchContainer(f"No such container: {ref}")

    def create(self, config: dict[str, Any], name: str | None, cid: str | None = None) -> Container:
        """Make the record and its dirs; the config becomes visible last."""
        if name is not None and not _NAME.match(name):
            raise RunnerError(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        with self.locked():
            taken = {c.name for c in self.all()}
            if name is None:
                name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}"
                while name in taken:
                    name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}_{secrets.randbelow(100)}"
            name = name.lstrip("/")
            if name in taken:
                raise ContainerConflict(f'Conflict. The container name "/{name}" is already in use')
            cid = cid or secrets.token_hex(32)
            path = os.path.join(self.dir, cid)
            for sub in ("upper", "work", "merged"):
                os.makedirs(os.path.join(path, sub))
            config = {**config, "Id": cid, "Name": name, "Created": now()}
            # fsynced, unless the container is removed when it ends (--rm): after a crash of the
            # host such a record is only left to be removed
            write_json(os.path.join(path, "config.json"), config, durable=not config["HostConfig"]["AutoRemove"])
            return Container(path, config)

    def remove(self, container: Container) -> None:
        """Delete the record: the config goes first (one rename), then the rest."""
        gone = container.dir + ".removing"
        os.rename(container.dir, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def using_image(self, image_id: str) -> list[str]:
        return [c.name for c in self.all() if c.config.get("Image") == image_id]

"""Container records on disk, next to the store: ``ROOT/containers/<id>/``.

    config.json     what was asked for: image, command, env, limits (written once, at create)
    state.json      what is happening: status, pids, exit code, times (swapped in atomically)
    state.spare     the block the next state is written into (a full disk cannot lose an exit code)
    supervisor.lock flock held by the container's one supervisor for as long as it runs
    container.log   output, one JSON object a line (Docker's json-file driver)
    upper/ work/    the container's writable layer and the union filesystem's workdir
    merged/         the union mountpoint while the container runs
    hostname hosts resolv.conf   bind-mounted into the container

A container is visible once its config.json exists. Names are unique: creating takes
``containers/lock``. A state's ``Status`` is a ``State``. A ``starting`` or ``running`` state whose
supervisor no longer holds ``supervisor.lock`` reads as exited (255) with an error: the supervisor
died, and its container with it (``runner.init`` and PID 1 die with their parent); ``reclaim`` kills
and unmounts what may be left. Starting, stopping and removing are ``runner.lifecycle``'s.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from store.images import now
from store.root import write_atomic, write_json
from unionfs import mountinfo

from . import cgroups, events
from . import syscalls as sc
from .errors import ContainerConflict, NoSuchContainer, RunnerError
from .process import process_alive

_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
STATE_BLOCK = 4096  # a state.json's size: the blocks it and its spare keep for good
NAME_MAX = 253  # a container name is a DNS name (Docker's names resolve on its networks)
_ADJ = ["brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quirky", "sharp", "tender", "vivid", "wise"]
_NOUN = ["babbage", "curie", "darwin", "euler", "gauss", "hopper", "lovelace", "noether", "pascal", "turing"]


class State(enum.StrEnum):
    """A container's ``Status`` in state.json: the member's value is the string the file holds, and
    being a ``str`` a member compares equal to it (``state["Status"] == State.RUNNING``). ``paused`` is
    never recorded: a running container whose cgroup is frozen reads so. Docker's ``removing`` and
    ``dead`` do not exist here."""

    CREATED = "created"  # recorded, never started (a container without state.json reads so)
    STARTING = "starting"  # its supervisor is mounting the union and starting PID 1
    RUNNING = "running"  # PID 1 runs
    PAUSED = "paused"  # PID 1 runs, frozen (read from the cgroup, never recorded)
    RESTARTING = "restarting"  # PID 1 ended; its supervisor starts it again soon (its restart policy)
    EXITED = "exited"  # PID 1 ended, did not start, or its supervisor died


SUPERVISED = (State.STARTING, State.RUNNING, State.PAUSED, State.RESTARTING)  # a supervisor owns the container


def check_name(name: str) -> None:
    """Docker's container-name rule, and a DNS name's length."""
    if not _NAME.match(name):
        raise RunnerError(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    if len(name.lstrip("/")) > NAME_MAX:
        raise RunnerError(f"Invalid container name ({name}), longer than {NAME_MAX} characters")


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
        """The recorded state, and the truth where it differs: a starting or running container
        whose supervisor is gone is exited."""
        state = self.recorded()
        if state.get("Status") in SUPERVISED and not self.supervised():
            state.update(
                Status=State.EXITED,
                Running=False,
                Pid=0,
                ExitCode=255,
                Error=state.get("Error") or "the container's supervisor died",
            )
        elif state.get("Running") and cgroups.load(self.config["Cgroup"]["Version"], self.id).frozen():
            state.update(Status=State.PAUSED, Paused=True)
        return state

    def recorded(self) -> dict[str, Any]:
        """``state.json`` as the supervisor last wrote it."""
        state: dict[str, Any] = {
            "Status": State.CREATED,
            "Running": False,
            "Pid": 0,
            "ExitCode": 0,
            "OOMKilled": False,
            "StartedAt": "0001-01-01T00:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            "Error": "",
        }
        for attempt in range(3):
            try:
                with open(self.path("state.json"), "rb") as f:
                    state = json.load(f)
                break
            except FileNotFoundError:
                break
            except ValueError:  # read while the next state was written into this inode: read again
                if attempt == 2:  # an unsynced state cut short by a crash of the host: nothing runs now
                    state.update(Status=State.EXITED, ExitCode=255, Error="the container's state was lost in a crash")
        return state

    def supervised(self) -> bool:
        """Does a supervisor hold this container's lock (it is alive: the kernel drops a dead one's)?"""
        try:
            fd = os.open(self.path("supervisor.lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def supervise(self) -> int:
        """Take the supervisor's lock for the life of this process (the fd is returned; the caller's
        forks close it). ``ContainerConflict`` if a supervisor holds it and its container runs."""
        return self._lock(f"container {self.id} is already running")

    def _lock(self, conflict: str, timeout: float = 30.0) -> int:
        """``supervisor.lock``, exclusively. A supervisor that holds it and has recorded the end is
        still unmounting: it is waited for (its unmount is bounded); one whose container runs or is
        starting gives ``ContainerConflict(conflict)``."""
        try:
            fd = os.open(self.path("supervisor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # the record went meanwhile
            raise NoSuchContainer(f"No such container: {self.name}") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                # held: by a supervisor that runs the container (or another start, about to say so)
                if self.state().get("Status") in SUPERVISED or time.monotonic() > deadline:
                    os.close(fd)
                    raise ContainerConflict(conflict) from None
            time.sleep(0.01)

    def set_state(self, read: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        """Change the state (``read``: what ``state()`` just gave, so as not to read it again). Only the
        supervisor writes it (its lock makes it the only one).

        The new state is written into ``state.spare``, over the block it already has, and swapped with
        ``state.json`` in one ``renameat2(RENAME_EXCHANGE)``: once both exist, recording a state needs
        no free space, so a container that fills its disk still gets its exit code recorded. Not
        fsynced: after a crash of the host no container runs, whatever its state said."""
        state = dict(read) if read is not None else self.recorded()
        state.pop("Paused", None)  # (read from the cgroup, never recorded)
        state.update(changes)
        error = str(state.get("Error") or "")
        while len(json.dumps(error)) > 1024:  # the Error is the one field of any length: capped, encoded
            error = error[: len(error) * 3 // 4]
        state["Error"] = error
        data = json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"
        # padded to whole blocks with white space (JSON allows it), never truncated: the blocks stay
        data += b" " * (-len(data) % STATE_BLOCK)
        path, spare = self.path("state.json"), self.path("state.spare")
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        try:
            sc.rename_exchange(spare, path)
        except FileNotFoundError:  # the first state: the spare becomes it, and the next spare is made
            os.rename(spare, path)
            write_atomic(spare, data, durable=False)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):  # a filesystem without RENAME_EXCHANGE
                raise
            write_json(path, state, durable=False)
        return state

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold ``supervisor.lock`` as a supervisor would, so that no start begins meanwhile;
        ``ContainerConflict`` if a supervisor holds it (the container runs or is starting)."""
        fd = self._lock(
            f"You cannot remove a running container {self.id}. Stop the container before "
            "attempting removal or force remove"
        )
        try:
            yield
        finally:
            os.close(fd)

    def reclaim(self, locked: bool = False) -> None:
        """What a dead supervisor may have left: processes in the cgroup, the union daemon (by pid,
        checked against its start time), the mount, the cgroup itself. Killed, unmounted and removed
        by whoever notices first, holding the supervisor's lock (no start meanwhile); a no-op while a
        supervisor lives (it owns all of these). ``locked``: the caller holds the lock already."""
        if not locked:
            try:
                with self.claimed():
                    self.reclaim(locked=True)
            except ContainerConflict:
                pass
            return
        state = self.recorded()
        cg = cgroups.load(self.config["Cgroup"]["Version"], self.id, pid=state.get("Pid", 0))
        cg.thaw()  # a frozen (v1) process keeps a SIGKILL pending until it is thawed
        cg.kill_all()
        union = state.get("UnionPid", 0)
        if union and process_alive(union, state.get("UnionStart")):
            try:
                os.kill(union, signal.SIGKILL)
            except ProcessLookupError:
                pass
        merged = self.path("merged")
        if mountinfo.mounts_at(merged):
            try:
                sc.umount2(merged, sc.MNT_DETACH)
            except OSError:  # not ours to umount as an ordinary user: fusermount3 is
                subprocess.run(["fusermount3", "-u", "-z", merged], capture_output=True)
        cg.destroy()
        from .net import attach  # (only here: most commands never touch a network)

        attach.reclaim(self)  # its veth, published ports and address lease

    def leftovers(self) -> str:
        """What of an earlier run is still there (processes in the cgroup, a mount), or ''."""
        cg = cgroups.load(self.config["Cgroup"]["Version"], self.id, pid=self.recorded().get("Pid", 0))
        if cg.pids():
            return "processes of an earlier run are still in its cgroup"
        if mountinfo.mounts_at(self.path("merged")):
            return f"{self.path('merged')} is still mounted"
        return ""


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
            if n.endswith(".removing"):  # a record being removed (``remove`` renamed it first): gone
                continue
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
        if name is not None:
            check_name(name)
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
            config = {**config, "Id": cid, "Name": name, "Created": now()}
            try:
                for sub in ("upper", "work", "merged"):
                    os.makedirs(os.path.join(path, sub))
                # fsynced, unless the container is removed when it ends (--rm): after a crash of the
                # host such a record is only left to be removed
                write_json(os.path.join(path, "config.json"), config, durable=not config["HostConfig"]["AutoRemove"])
            except OSError as e:  # a full disk, say: nothing of the record stays
                shutil.rmtree(path, ignore_errors=True)
                raise RunnerError(f"cannot create container: {e.strerror}") from None
            return Container(path, config)

    def rename(self, container: Container, name: str) -> None:
        """Give ``container`` a new name (Docker's errors for a bad, the same or a taken one); its
        config.json is written again, atomically."""
        check_name(name)
        name = name.lstrip("/")
        with self.locked():
            if name == container.name:
                raise ContainerConflict("Renaming a container with the same name as its current name")
            for other in self.all():
                if other.name == name:
                    raise ContainerConflict(
                        f'Conflict. The container name "/{name}" is already in use by container '
                        f'"{other.id}". You have to remove (or rename) that container to be able '
                        "to reuse that name."
                    )
            config = {**container.config, "Name": name}
            write_json(container.path("config.json"), config, durable=not config["HostConfig"]["AutoRemove"])
            container.config = config

    def remove(self, container: Container, locked: bool = False) -> None:
        """Delete the record of a container that does not run (``ContainerConflict`` if it runs or is
        starting): what a dead supervisor left is reclaimed first, then the config goes (one rename),
        then the rest. ``locked``: the caller (its supervisor, for --rm) holds the lock already."""
        if not locked:
            with container.claimed():
                container.reclaim(locked=True)
                self.remove(container, locked=True)
            return
        gone = container.dir + ".removing"
        try:
            os.rename(container.dir, gone)
        except OSError:  # no room for the longer name in a full directory: the config goes first
            os.unlink(container.path("config.json"))
            gone = container.dir
        shutil.rmtree(gone, ignore_errors=True)
        events.record(os.path.dirname(self.dir), "destroy", container.config)

    def using_image(self, image_id: str) -> list[str]:
        return [c.name for c in self.all() if c.config.get("Image") == image_id]

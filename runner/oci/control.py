"""The verbs that act on a created container through its state dir alone: ``start``, ``kill``,
``delete`` (and ``state``, ``statedir``'s). conmon and podman call each once per container, each
a fresh process, so they import no more than ``os``, ``select``, ``_signal`` and the state dir
(``cgroups`` only where a container's members must be found otherwise or killed). The hooks they
take (poststart, poststop) are run by ``runtime.Runtime``, which calls these.
"""

from __future__ import annotations

import _signal
import os
import select
import time

from ..errors import NoSuchContainer, RunnerError
from ..process import process_alive
from .statedir import Container

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def default_root() -> str:
    """runc's choice for strata-oci: /run/strata-oci as root, else $XDG_RUNTIME_DIR/strata-oci."""
    if os.geteuid() == 0:
        return "/run/strata-oci"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime_dir, "strata-oci") if runtime_dir else f"/tmp/strata-oci-{os.getuid()}"


def check_id(cid: str) -> None:
    if not cid or cid in (".", "..") or set(cid) - _ID_CHARS:
        raise RunnerError(f"invalid id format: {cid}")


def get(root: str, cid: str) -> Container:
    check_id(cid)
    return Container(root, cid)


def parse_signal(text: str) -> int:
    """``15``, ``TERM`` or ``SIGTERM`` (runc's spellings); ``signal.Signals`` would import ``enum``."""
    if text.isdigit():
        number = int(text)
        if number not in _signal.valid_signals():
            raise RunnerError(f"unknown signal {text!r}")
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    found = getattr(_signal, name, None) if name.isalnum() else None
    if not isinstance(found, int):
        raise RunnerError(f"unknown signal {text!r}")
    return found


def start(c: Container) -> None:
    """Let a created container's PID 1 exec its command (runc's ``handleFifo``): open the fifo, take
    PID 1's byte, wait (bounded) until its end closes on exec, and remove the fifo."""
    status = c.status()
    if status == "stopped":
        raise RunnerError("cannot start a container that has stopped")
    if status != "created":
        raise RunnerError("cannot start an already running container")
    pidfd = c.pidfd()
    try:
        fd = os.open(c.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(pidfd)
        raise RunnerError("cannot start an already running container") from None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if fd in ready:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    data = b""
                if data[:1] == b"1":  # a startContainer hook failed; PID 1 ends
                    raise RunnerError(data[1:].decode(errors="replace"))
                if data[:1] == b"0":
                    _wait_exec(poller, fd, pidfd)
                    break
                if not ready.get(pidfd):
                    poller.unregister(fd)  # a writer came and went without a byte: PID 1 ends
                    continue
            if pidfd in ready:
                raise RunnerError("cannot start a container that has stopped")
    finally:
        os.close(fd)
        os.close(pidfd)
    os.unlink(c.fifo)


def _wait_exec(poller: select.poll, fifo: int, pidfd: int, timeout: float = 10.0) -> None:
    """PID 1 has written its byte; its end of the fifo closes on exec (or exit): wait for that, bounded."""
    poller.unregister(pidfd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = dict(poller.poll((deadline - time.monotonic()) * 1000))
        if ready.get(fifo, 0) & (select.POLLHUP | select.POLLERR):
            return
        if ready.get(fifo, 0) & select.POLLIN and not os.read(fifo, 4096):
            return


def kill(c: Container, sig: int, all_processes: bool = False) -> None:
    """``sig`` to PID 1 (``all_processes``: first to every member of its cgroup)."""
    status = c.status()
    if status == "stopped":
        raise RunnerError("container not running")
    pidfd = c.pidfd()
    try:
        if all_processes:
            for pid in c.cgroup_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        _signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        raise RunnerError("container not running") from None
    finally:
        os.close(pidfd)
    if status == "paused" and sig == _signal.SIGKILL:  # a frozen process takes no signal until thawed
        c.cgroup().thaw()


def delete(root: str, cid: str, force: bool = False) -> Container | None:
    """Remove a stopped container's cgroup and state dir (a created one is killed first, a running
    or paused one only with ``force``); the container it was, for its poststop hooks. A missing one
    is an error, but with ``force`` (None then)."""
    try:
        c = get(root, cid)
    except NoSuchContainer:
        if not force:
            raise
        _remove_dir(os.path.join(root, cid))
        return None
    status = c.status()
    if status in ("running", "paused") and not force:
        raise RunnerError(f"cannot delete container {cid} that is not stopped: {status}")
    dirs = c.cgroup_dirs()
    if status == "stopped" and dirs is not None and not c.cgroup_pids():
        for d in dirs:  # the usual end (podman's ``delete --force`` after the exit): empty groups
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
    else:
        _destroy(c, status)
    if c.cgroup_pids():
        raise RunnerError(f"container {cid}: processes of its cgroup will not die: not deleted")
    _remove_dir(c.dir)
    return c


def _destroy(c: Container, status: str) -> None:
    """Kill what remains of the container and remove its cgroup (and what ``update`` added)."""
    from . import resources

    cgroup = c.cgroup()
    if status != "stopped":
        cgroup.thaw()
        try:
            os.kill(c.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(c.pid, c.state.get("pid_start"))
    cgroup.destroy()
    resources.remove(cgroup)


def _wait_gone(pid: int, start: str | None, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``pid`` has exited: a pidfd polls readable then (we need not be its parent)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if process_alive(pid, start):
            select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _remove_dir(directory: str) -> None:
    """A state dir holds files only (state, fifo, temporaries): ``shutil.rmtree`` without its imports."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            import shutil

            shutil.rmtree(os.path.join(directory, name))
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass

"""A container's life cycle as driven from outside its supervisor: start it under a detached
supervisor, signal, stop, wait for, freeze and remove it; and ``exec``'s process that joins a
running container. What happens while a container runs is ``runner.supervisor``'s; its record and
``State`` are ``runner.containers``'. Nothing here prints: failures are ``RunnerError``s, and
``StartFailed`` carries the exit code of what did not start (125, 126 or 127).

*Caveats*: waiting polls ``state.json`` (every 20 ms); a container stopped or killed while its
supervisor is dead is reclaimed (``Container.reclaim``), not signalled.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import cgroups, events, init
from .containers import SUPERVISED, Container, Containers, State
from .errors import ContainerConflict, RunnerError, StartFailed
from .mounts import ImageMounts
from .restarts import STOPPED
from .signals import parse_signal

KILL_WAIT = 30.0  # seconds to wait for the end a SIGKILL brings (the supervisor records it, then unmounts)
STOP_TIMEOUT = 10  # seconds stop waits after the stop signal, when neither the command nor the container says


# -- start ----------------------------------------------------------------------------------------
def start_detached(
    root: str, container: Container, client: int | None = None, console_size: tuple[int, int] | None = None
) -> int:
    """Fork a detached supervisor (its own session, stdio on /dev/null) for ``container`` of the
    store at ``root``; return PID 1's pid once it runs, or raise ``StartFailed``. A fork of this
    process, not a fresh interpreter: the imports are done. ``client``: a connected attach socket
    it serves from the start (``run -it``: nothing the container writes is missed);
    ``console_size``: a -t container's terminal size to start with."""
    from . import detached  # with trio and pyfuse3: only commands that start need them
    from .children import fork_detached

    def supervise(ready: int) -> int:
        os.chdir("/")
        return detached.run(root, container.id, ready, client, console_size)

    sys.stdout.flush()  # what this process has buffered is written once, by this process
    sys.stderr.flush()
    _pid, r = fork_detached(supervise, failure=125, keep=() if client is None else (client,))
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    if message.startswith("ok "):
        return int(message.split()[1])
    if message.startswith("error "):
        _, code, error = message.split(" ", 2)
        raise StartFailed(error, int(code))
    raise StartFailed("the supervisor died before the container started", 125)


def start(
    root: str, container: Container, client: int | None = None, console_size: tuple[int, int] | None = None
) -> None:
    """Start a container that does not run (again, on the same upper) under a detached supervisor;
    one that runs is left alone. ``ContainerConflict`` while it is mounted for inspection.
    ``client``, ``console_size``: ``start_detached``'s."""
    if container.state().get("Running"):
        return
    if (mounted := ImageMounts(root).of_container(container.id)) is not None:
        raise ContainerConflict(
            f"container {container.name} is mounted at {mounted.mountpoint} for inspection: strata umount it first"
        )
    start_detached(root, container, client, console_size)


# -- signals and the end --------------------------------------------------------------------------
def wait_exited(container: Container, timeout: float | None) -> bool:
    """Poll the state until the supervisor has recorded the end; false if ``timeout`` seconds
    passed first (None: no bound)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while container.state().get("Status") in SUPERVISED:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def wait(container: Container) -> int:
    """Wait for the container's end; its exit code (a container that does not run: the last one)."""
    wait_exited(container, None)
    code: int = container.state().get("ExitCode", 0)
    return code


def send_signal(container: Container, sig: int, root: str | None = None) -> None:
    """Send ``sig`` to PID 1 (a paused container is thawed after, so that it takes it). A container
    that does not run is a ``RunnerError``, after what a dead supervisor left is reclaimed (nothing
    runs when we say so). ``root``: the store's, to record the ``kill`` event in."""
    state = container.state()
    if not state.get("Running") or not state.get("Pid"):
        container.reclaim()
        raise RunnerError(f"Cannot kill container: {container.name}: container {container.id} is not running")
    if root is not None:  # before the signal: the ``die`` it may cause is recorded after it
        events.record(root, "kill", container.config, signal=sig)
    try:
        os.kill(state["Pid"], sig)
    except ProcessLookupError:
        pass
    if state.get("Paused"):
        _cgroup(container).thaw()


def stop_settings(container: Container, timeout: float | None, sig: int | None) -> tuple[int, float | None]:
    """The signal and the wait of a stop: those given, else the container's (``--stop-signal``, the
    image's STOPSIGNAL; ``--stop-timeout``), else SIGTERM and 10 s. A wait of -1: no bound."""
    cfg = container.config["Config"]
    if sig is None:
        sig = parse_signal(cfg["StopSignal"]) if cfg.get("StopSignal") else signal.SIGTERM
    if timeout is None:
        timeout = cfg["StopTimeout"] if cfg.get("StopTimeout") is not None else STOP_TIMEOUT
    return sig, (None if timeout < 0 else timeout)


def stop(container: Container, timeout: float | None = None, sig: int | None = None, root: str | None = None) -> None:
    """The stop signal, then SIGKILL if it still runs ``timeout`` seconds later (``stop_settings``);
    returns once the end is recorded (bounded), and its supervisor will not start it again (its
    restart policy is for ends it did not ask for). A container that does not run: what a dead
    supervisor left is reclaimed. ``root``: record the ``stop`` event there."""
    first, wait = stop_settings(container, timeout, sig)
    state = container.state()
    if state.get("Status") in SUPERVISED:
        with open(container.path(STOPPED), "w"):  # before the signal: its supervisor reads it at the end
            pass
        if state.get("Running"):
            send_signal(container, first, root)
            if not wait_exited(container, wait) and container.state().get("Running"):
                send_signal(container, signal.SIGKILL, root)  # it ignored the stop signal for timeout seconds
                wait_exited(container, KILL_WAIT)
        _end_restarts(container)
    else:
        container.reclaim()  # a dead supervisor's leftovers: stopped now, as the state says
    if root is not None:
        events.record(root, "stop", container.config)


def _end_restarts(container: Container) -> None:
    """A supervisor waiting to start its container again (its restart policy) is sent SIGTERM, and
    ends; returns once it has (bounded)."""
    state = container.state()
    if state.get("Status") == State.RESTARTING and state.get("SupervisorPid"):
        try:
            os.kill(state["SupervisorPid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        wait_exited(container, KILL_WAIT)


# -- pause, rename --------------------------------------------------------------------------------------
def _cgroup(container: Container) -> cgroups.Cgroup:
    return cgroups.load(container.config["Cgroup"]["Version"], container.id, pid=container.recorded().get("Pid", 0))


def pause(root: str, container: Container) -> None:
    """Freeze every process of a running container (the cgroup freezer); Docker's errors."""
    state = container.state()
    if not state.get("Running"):
        raise ContainerConflict(f"Container {container.id} is not running")
    if state.get("Paused"):
        raise ContainerConflict(f"Container {container.id} is already paused")
    _cgroup(container).freeze(True)
    events.record(root, "pause", container.config)


def unpause(root: str, container: Container) -> None:
    state = container.state()
    if not state.get("Paused"):
        raise ContainerConflict(f"Container {container.id} is not paused")
    _cgroup(container).freeze(False)
    events.record(root, "unpause", container.config)


def rename(root: str, container: Container, name: str) -> None:
    """Give the container a new name (its id, state and files stay); Docker's errors."""
    old = container.name
    Containers(root).rename(container, name)
    events.record(root, "rename", container.config, oldName="/" + old)


def remove(root: str, container: Container, force: bool) -> None:
    """Remove the container, its record, upper and all: ``force`` kills it first if it runs and
    unmounts an inspection mount of it; without ``force`` either is a ``ContainerConflict``.
    Removing a record that went meanwhile is a no-op."""
    state = container.state()
    if state.get("Running") or state.get("Status") == State.RESTARTING:
        if not force:
            what = "running" if state.get("Running") else "restarting"
            raise ContainerConflict(
                f"You cannot remove a {what} container {container.id}. Stop the container "
                "before attempting removal or force remove"
            )
        with open(container.path(STOPPED), "w"):  # not to be started again by its restart policy
            pass
        # a restart already under way when that was written still happens: end what each look finds
        for _ in range(4):
            if state.get("Running"):
                send_signal(container, signal.SIGKILL, root)
                wait_exited(container, KILL_WAIT)
            elif state.get("Status") == State.RESTARTING:
                _end_restarts(container)
            elif state.get("Status") == State.STARTING:  # killed once it runs (or has failed)
                deadline = time.monotonic() + KILL_WAIT
                while container.state().get("Status") == State.STARTING and time.monotonic() < deadline:
                    time.sleep(0.02)
            else:
                break
            state = container.state()
    mounts = ImageMounts(root)
    mounted = mounts.of_container(container.id)
    if mounted is not None:
        if not force:
            raise ContainerConflict(
                f"container {container.name} is mounted at {mounted.mountpoint}: strata umount it first, or rm -f"
            )
        mounts.unmount(mounted)
    if os.path.exists(container.dir):
        Containers(root).remove(container)  # under the supervisor's lock: refused if a start began meanwhile


@contextmanager
def frozen(container: Container, freeze: bool = True) -> Iterator[None]:
    """Freeze a running container's processes for the block (nothing writes to its upper while
    ``commit`` packs it); thawed however the block ends. Not running, or ``freeze`` false: nothing."""
    pause = freeze and bool(container.state().get("Running"))
    cg = cgroups.load(container.config["Cgroup"]["Version"], container.id)
    if pause:
        cg.freeze(True)
    try:
        yield
    finally:
        if pause:
            cg.freeze(False)


# -- exec: a process that joins a running container -----------------------------------------------
def join_spec(
    container: Container,
    pid: int,
    args: list[str],
    env: list[str],
    workdir: str | None,
    user: str | None,
    tty: bool,
    status_fd: int,
) -> dict[str, Any]:
    """What ``init.join`` needs to run ``args`` in the container whose PID 1 is ``pid``: its
    namespaces, cgroup and seccomp filter; the container's working dir and user unless given.
    ``status_fd`` gets the joined process's report."""
    from .oci import privileges
    from .oci.spec import DEFAULT_CAPS
    from .supervisor import container_filter

    cfg = container.config["Config"]
    caps = privileges.of_container(container.config, DEFAULT_CAPS)
    return {
        "pid": pid,
        "args": args,
        "env": env,
        "cwd": workdir or cfg["WorkingDir"] or "/",
        "user": user or cfg["User"] or "0",
        "tty": tty,
        "status_fd": status_fd,
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "no_new_privs": privileges.no_new_privileges(container.config["HostConfig"].get("SecurityOpt")),
        "seccomp": container_filter(container.config),
        "cgroup_procs": cgroups.load(container.config["Cgroup"]["Version"], container.id).procs_files(),
    }


def join(spec: dict[str, Any], stdio: tuple[int, int, int] | None, detach: bool, close: list[int]) -> int:
    """Fork the process that joins the container (``init.join``, with ``stdio`` as its fds 0-2, and
    none of ``close``); with ``detach``, a grandchild in its own session that nothing waits for.
    Returns the pid to pass to ``wait_joined``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()  # this process is single-threaded: its fork may join the container's namespaces
    if pid:
        return pid
    code = 126
    try:
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        for fd in close:
            os.close(fd)
        if detach:
            os.setsid()
            if os.fork():
                code = 0
                return 0
        code = init.join(spec)
    finally:
        os._exit(code)


def wait_joined(pid: int, status_r: int) -> int:
    """Read the report on ``status_r`` (the read end of ``status_fd``'s pipe, left open) and wait for
    ``pid``; its exit code as a shell gives it. ``StartFailed`` if the command did not start."""
    with os.fdopen(os.dup(status_r), "rb") as f:
        report = f.read().decode(errors="replace").splitlines()
    _, status = os.waitpid(pid, 0)
    for line in report:
        if line.startswith("error "):
            _, failed, message = line.split(" ", 2)
            raise StartFailed(message, int(failed))
    return init.exit_code(status)

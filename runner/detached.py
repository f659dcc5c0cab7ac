"""The detached supervisor's process (``run -d``, ``start``, ``run -it``): the container's first run,
then the runs its restart policy asks for (``runner.restarts``), each a ``Supervisor`` of this same
process, which keeps ``supervisor.lock`` between them. While it waits to start it again, the state
says ``restarting``; ``lifecycle.stop`` and ``rm -f`` end the wait with SIGTERM (after marking the
container ``stopped``).
"""

from __future__ import annotations

import os
import signal
import time

import trio

from . import forwarding
from . import restarts as restarts_
from .containers import Container, Containers
from .supervisor import Supervisor


def run(
    root: str, cid: str, ready_fd: int, client: int | None = None, console_size: tuple[int, int] | None = None
) -> int:
    """Detached supervision, in a process forked by ``strata run -d`` / ``start`` (its own session):
    ``ok PID`` or ``error CODE MESSAGE`` goes to ``ready_fd`` once the container runs or cannot.
    ``client``, ``console_size``: ``Supervisor``'s, for the first run. Returns the last exit code."""
    container = Containers(root).get(cid)
    _forget_stop(container)  # a start by hand: an earlier stop is not this run's
    lock_fd: int | None = None
    first_client: int | None = client
    ready: int | None = ready_fd
    restarts, delay, code = 0, 0.0, 125
    while True:

        def again(code: int, count: int = restarts, c: Container = container) -> bool:
            return (
                os.path.exists(c.path("config.json"))
                and not os.path.exists(c.path(restarts_.STOPPED))
                and restarts_.wanted(c.config["HostConfig"].get("RestartPolicy"), code, count)
            )

        supervisor = Supervisor(
            root,
            container,
            None,
            lock_fd=lock_fd,
            client=first_client,
            console_size=console_size,
            restarts=restarts,
            restart=again,
        )
        supervisor.prepare()
        began = time.monotonic()
        with forwarding.held():  # a signal now waits for PID 1 rather than killing us (and it)
            code = trio.run(supervisor.run, ready)
        lock_fd, ready, first_client, console_size = supervisor.lock_fd, None, None, None
        if lock_fd is None or container.recorded().get("Status") != "restarting":
            break
        delay = restarts_.next_delay(delay, time.monotonic() - began)
        if not _wait_to_restart(container, delay):
            break
        restarts += 1
        container = Containers(root).get(cid)  # (its record as it is now: renamed, say)
    _forget_stop(container)
    return code


def _forget_stop(container: Container) -> None:
    try:
        os.unlink(container.path(restarts_.STOPPED))
    except FileNotFoundError:
        pass


def _wait_to_restart(container: Container, delay: float) -> bool:
    """Wait ``delay`` seconds (the state says ``restarting``); False if told to stop meanwhile
    (SIGTERM, from ``lifecycle.stop`` or ``rm -f``): the container is then recorded exited."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # (a SIGTERM sent meanwhile waits for us)
    try:
        stopped = container.path(restarts_.STOPPED)  # (made before the SIGTERM is sent)
        if (
            os.path.exists(stopped)
            or signal.sigtimedwait({signal.SIGTERM}, delay) is not None
            or os.path.exists(stopped)
        ):
            container.set_state(Status="exited")
            return False
        return True
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

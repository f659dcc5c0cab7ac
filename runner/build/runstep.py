"""RUN: one container per step, through the runner as ``strata run`` starts one (a container record,
then the supervisor attached), whose upper the step then commits, and which then goes.

The supervisor runs in a fork of the build (a fresh single-threaded process each time: the
container's init must be forked from one); its output comes back on a pipe, line by line, to the
progress. The container has the step's environment (the image's Env, then the build args in
scope), its WORKDIR and USER, no entrypoint, ``run``'s default network (bridge; ``--network none``
or ``host``), Docker's seccomp filter and capabilities. A ``RUN <<EOF`` script that starts with ``#!``
is put in the container's init layer (a lower: never in the upper) at ``/.strata-heredoc/NAME``.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from store import Store

from .. import cgroups, layerdiff, lifecycle
from ..containers import Container, Containers
from ..errors import RunnerError

KILL_GRACE = 10.0  # seconds a supervisor has to stop its container after our SIGTERM (interrupted build)


@dataclass
class Outcome:
    code: int
    error: str  # why it did not start, if it did not
    upper: str  # the container's upper dir (while the container exists)
    lowers: list[str]  # its union's lower layer dirs (where metacopies in the upper keep their data)


def container_config(
    store: Store, image_id: str, cmd: list[str], env: list[str], workdir: str, user: str, network: str, cid: str
) -> dict[str, object]:
    """The container record ``strata run`` would make for this step (no flags of its own)."""
    chain = store.images.chain(image_id)
    cg = cgroups.for_host(cid)
    hostname = cid[:12]
    return {
        "Image": image_id,
        "ImageRef": image_id,
        "Command": cmd,
        "Path": cmd[0],
        "Args": cmd[1:],
        "Config": {
            "Hostname": hostname,
            "Env": [*env, f"HOSTNAME={hostname}"],
            "Cmd": cmd,
            "Entrypoint": None,
            "WorkingDir": workdir,
            "User": user,
            "Tty": False,
            "OpenStdin": False,
            "Image": image_id,
            "Labels": {},
        },
        "HostConfig": {
            "CpuShares": 0,
            "Memory": 0,
            "MemorySwap": 0,
            "NetworkMode": network,
            "PortBindings": {},
            "PublishAllPorts": False,
            "AutoRemove": False,
            "SecurityOpt": None,
            "Devices": [],
            "DeviceCgroupRules": None,
        },
        "NetworkID": "",  # the network the mode names
        "Seccomp": "default",
        "LinuxDevices": [],
        "DeviceRules": [],
        "Cgroup": {"Version": cg.version, "Dirs": cg.dirs()},
        "LowerDirs": [store.layers.diff_dir(c) for c in reversed(chain)],
    }


@contextmanager
def run(
    store: Store,
    image_id: str,
    cmd: list[str],
    env: list[str],
    workdir: str,
    user: str,
    network: str,
    script: tuple[str, str] | None,
    output: Callable[[bytes], None],
) -> Iterator[Outcome]:
    """Run the step's container to its end; yield how it went while its upper still exists, then
    remove it (whatever happens, an interrupt included)."""
    cid = secrets.token_hex(32)
    root = store.root.path
    with store.root.pinned():  # rmi cannot take the image's layers between the look-up and the record
        container = Containers(root).create(
            container_config(store, image_id, cmd, env, workdir, user, network, cid), None, cid
        )
    try:
        if script is not None:
            name, content = script
            os.makedirs(container.path("init", ".strata-heredoc"), mode=0o755)
            path = container.path("init", ".strata-heredoc", name)
            with open(path, "w") as f:
                f.write(content)
            os.chmod(path, 0o755)
        code, error = _supervise(root, container, output)
        yield Outcome(code, error, container.path("upper"), layerdiff.union_lowers(container))
    finally:
        if os.path.exists(container.dir):
            lifecycle.remove(root, container, force=True)


def _supervise(root: str, container: Container, output: Callable[[bytes], None]) -> tuple[int, str]:
    """Fork a supervisor attached to a pipe; relay the pipe until the fork ends. (exit code, error)."""
    from ..stdio import Attach
    from ..supervisor import run_attached  # trio and the union fs: only a RUN needs them

    out_r, out_w = os.pipe()
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor: a fresh single-threaded process
        code = 125
        try:
            os.close(out_r)
            os.close(status_r)
            result, error = run_attached(root, container, Attach(stdin=None, stdout=out_w, stderr=out_w))
            os.write(status_w, f"{result} {error}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(status_w)
    pidfd = os.pidfd_open(pid)
    try:
        _relay(out_r, pidfd, output, pid)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(status_r, "rb", closefd=False) as f:
            report = f.read().decode(errors="replace")
    finally:
        os.close(pidfd)
        os.close(out_r)
        os.close(status_r)
    if not report:
        raise RunnerError(f"the supervisor of build container {container.id[:12]} died (status {status})")
    exit_code, _, error = report.partition(" ")
    return int(exit_code), error


def _relay(out_r: int, pidfd: int, output: Callable[[bytes], None], pid: int) -> None:
    """Copy the container's output to ``output`` until the supervisor has exited and the pipe is
    drained (a process of its that kept the pipe open cannot hold the build). Interrupted (Ctrl-C):
    the supervisor is asked to stop its container, then waited for."""
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    exited = False
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                data = os.read(out_r, 65536)
                if not data:
                    return
                output(data)
            if exited:
                os.set_blocking(out_r, False)
                try:
                    while data := os.read(out_r, 65536):
                        output(data)
                except BlockingIOError:
                    pass
                return
    except KeyboardInterrupt:
        os.kill(pid, signal.SIGTERM)  # the supervisor passes it to PID 1, a second time as SIGKILL
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(KILL_GRACE * 1000)):
            os.kill(pid, signal.SIGTERM)
            poller.poll()
        os.waitpid(pid, 0)
        raise

"""The supervisor: one trio process per running container (like conmon).

It mounts the container's union (``unionfs.mount.Mount``: a process of its own), makes the cgroup,
forks ``runner.init`` (which enters the namespaces and execs the command as PID 1),
records the state, writes the output to the json-file log (and to the terminal when attached),
forwards signals (``runner.forwarding``), and when PID 1 exits records the exit code, OOM kill and
times, then kills what is left in the cgroup, unmounts and removes the cgroup (and the container,
for ``--rm``).

``strata run -d`` and ``strata start`` fork it detached (``runner.detached``, which also restarts it);
``strata run`` without ``-d`` runs it in the CLI's own process, attached.

Faults: if the union filesystem process dies, the container is killed and its state says why. If
the supervisor itself dies, so does the container: ``runner.init`` and the union daemon get a
parent-death signal (SIGKILL; SIGTERM, which unmounts), and PID 1 dies with ``runner.init``. One
supervisor per container: it holds ``supervisor.lock`` for its life (``Container.supervise``), and
a start finds no processes or mount of an earlier run before it mounts anything. A full disk loses
log lines, never the exit code: ``Container.set_state`` writes into a block reserved at the start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import termios
import tty
from collections.abc import Callable
from typing import Any

import trio

from store.images import now
from unionfs.errors import UnionError
from unionfs.mount import Mount, fork_serve, read_ready

from . import bundle, cgroups, credentials, etcfiles, events, forwarding, hub, init, seccomp, userns, volumemounts
from . import syscalls as sc
from .children import Child
from .containers import Container, Containers
from .errors import RunnerError
from .jsonlog import JsonLog, feed_input, pump_output
from .mounts import check_fuse_device
from .net import attach as network
from .oci import privileges
from .process import start_time
from .stdio import Attach, Stdio, make_stdio, terminal_size
from .volumes import Volumes


class Supervisor:
    def __init__(
        self,
        root: str,
        container: Container,
        attach: Attach | None,
        lock_fd: int | None = None,
        client: int | None = None,
        console_size: tuple[int, int] | None = None,
        restarts: int = 0,
        restart: Callable[[int], bool] | None = None,
    ) -> None:
        """``lock_fd``: ``supervisor.lock``, held already (a restart); ``client``: a connected attach
        socket (``run -it``'s), served before the container starts; ``console_size``: the terminal
        size a -t container starts with when no terminal is attached here; ``restarts``: how many
        times its restart policy has started it again; ``restart(code)``: will it be started again
        once it ends with ``code`` (then its end is recorded as ``restarting``, never ``exited``)."""
        self.root = root
        self.c = container
        self.attach = attach
        self.config = container.config
        self.cgroup = cgroups.load(self.config["Cgroup"]["Version"], container.id)
        self.pid = 0
        self.started = False  # PID 1 exec'd the command
        self.union_died: str | None = None
        self.ready_fd: int | None = None
        self.error = ""
        self.union: tuple[int, int] | None = None  # (pid, ready fd) of a union daemon forked early
        self.init: Child | None = None  # runner.init, forked early, waiting for the go-ahead
        self.stdio: Stdio | None = None
        self.status_fd: int | None = None  # init's reports: "pid N", then "error CODE MESSAGE" or EOF
        self.go_fd: int | None = None
        self.opened: list[int] = []  # fds this supervisor must close when it is done
        self.lock_fd: int | None = lock_fd  # ``supervisor.lock``, held until this process exits
        self.client = client
        self.console_size = console_size
        self.restarts = restarts
        self.restart = restart
        self.listener: socket.socket | None = None  # attach.sock
        self.hub = hub.Hub(self._input, self._resize_to, self._signal)
        self.stdin_send: trio.MemorySendChannel[bytes] | None = None  # attached clients' input
        self.stdin_ready: trio.Event | None = None  # set once the container has its stdin
        self.bundle: dict[str, Any] | None = None  # the config.json this start runs
        self.early: str | None = None  # the init's error when read before trio (``_early_report``)
        self.union_ready: bytes | None = None  # the union daemon's word when read before trio
        self.net: network.Endpoint | None = None  # the container's network, planned before its files
        self.failed = ""  # what went wrong in prepare()

    def prepare(self) -> None:
        """Before trio starts (forking inside a trio run is not safe): write the init layer, fork the
        union daemon (as early as its layers are complete: its start-up, until it answers, is the
        longest wait of a start), write the bundle, make the cgroup, fork the container's init
        (which waits for ``_go``; it moves PID 1 into the cgroup meanwhile), connect the network,
        and let PID 1 go once the union is mounted. Forks of this process cost a millisecond where
        fresh interpreters cost a few hundred (imports)."""
        c = self.c
        rootless = os.geteuid() != 0
        # rootless, the daemon mounts in the container's user namespace, where it may let the
        # container's other users in, but can give files no owner: they go in an xattr
        options = ["allow_other", "metacopy=on", *(["xattr_permissions=2"] if rootless else [])]
        if self.config["HostConfig"]["AutoRemove"]:  # --rm: its writable layer cannot outlive it
            options.append("volatile")  # (as podman does for --rm; CRI-O for every container)
        try:
            self.lock_fd = self.lock_fd if self.lock_fd is not None else c.supervise()
        except (RunnerError, OSError) as e:
            self.error = str(e)  # run() reports it and touches nothing: the container is not ours
            return
        try:
            c.reclaim(locked=True)  # an earlier supervisor that died may have left its processes, mount
            if leftover := c.leftovers():
                raise RuntimeError(f"cannot start a second instance of container {c.id}: {leftover}")
            check_fuse_device()
            self.listener = hub.listen(c.dir)
            self.net = network.plan(self.root, c)  # its address, its ports: /etc/hosts names them
            bundle.write_etc(c, self.net)
            volumemounts.prepare(c)  # bind sources, and the mountpoints layer below the init layer
            if not rootless:  # (the layers are complete; the files bound over /etc are written after)
                self.union = self._fork_union(options)
            etcfiles.apply(self.config, c.path("hosts"), c.path("resolv.conf"))  # --add-host, --dns
            self.bundle = bundle.write_bundle(c, self.net)
            resources = self.bundle["linux"]["resources"]
            self.cgroup.create(resources.get("devices"))
            self.cgroup.apply({k: v for k, v in resources.items() if k != "devices"})  # (create took those)
            self._fork_init(announce=rootless or self.net.needs_pid)
            if (rootless or self.net.needs_pid) and self._early_report() == "ns":
                assert self.init is not None  # its namespaces exist (the init's: PID 1 is not dumpable yet)
                if rootless:  # mount in them
                    self.union = self._fork_union(options, userns.joiner(self.init.pid))
                self.net.connect(self.init.pid)  # (meanwhile PID 1 is moved into its cgroup, an RCU wait)
            if self.union is not None and not self.error:
                # PID 1 sets up its root while trio starts here and the state is written: the go-ahead
                # needs only the mount (ready long since: its daemon was forked first) and the network
                self.union_ready = read_ready(self.union[1])
                if self.union_ready == b"ok":
                    self._go()
        except (UnionError, OSError, RuntimeError, RunnerError) as e:
            self.error = self.failed = str(e)  # run() reports it, and unmounts a union already forked

    def _fork_union(self, options: list[str], enter: Callable[[], None] | None = None) -> tuple[int, int]:
        """Fork the container's union daemon (``enter``: into the namespaces it mounts in), to end
        with this process."""
        c = self.c
        return fork_serve(
            c.path("merged"), bundle.lowers(c), c.path("upper"), c.path("work"), options, signal.SIGTERM, enter
        )

    def _fork_init(self, announce: bool) -> None:
        """Fork ``runner.init`` with the container's stdio; it waits on a pipe until the mount and the
        cgroup exist. It must be a single-threaded process, so fork it here, before trio runs.
        ``announce``: it says ``ns`` once its namespaces exist (``_early_report``)."""
        if len(os.listdir("/proc/self/task")) != 1:
            raise RuntimeError("the container's init must be forked from a single-threaded process")
        opened = self.opened
        self.stdio = make_stdio(self.config, self.attach, opened)
        status_r, status_w = os.pipe()
        go_r, go_w = os.pipe()
        opened += [status_r, status_w, go_r, go_w]
        spec = self._spec(status_w)
        spec["announce_namespaces"] = announce
        pid = os.fork()
        if pid == 0:
            init.forked(spec, self.stdio.child, go_r)
        self.init = Child(pid)
        theirs = [self.stdio.console_child] if self.stdio.console_child is not None else []
        for fd in {*self.stdio.child, status_w, go_r, *theirs}:
            os.close(fd)
            opened.remove(fd)
        self.status_fd, self.go_fd = status_r, go_w

    def _early_report(self) -> str:
        """The init's first report, read now (before trio): ``ns`` once the container's namespaces
        exist, where the network is connected and a rootless union mounted; else its error, which
        ``_start_and_wait`` reports."""
        assert self.status_fd is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.status_fd, 1)
            if not chunk:
                break
            line += chunk
        report = line.decode(errors="replace").rstrip("\n")
        if report.startswith("error "):
            self.early = report
            self.error = report.split(" ", 2)[2]
        return report

    def _go(self) -> None:
        """Let the forked init go on. (Closing the pipe without this makes it exit without running.)"""
        if self.go_fd is not None:
            try:
                os.write(self.go_fd, b"go")
            except BrokenPipeError:  # it failed already: its report on the status pipe says why
                pass
            self._close_go()

    def _close_go(self) -> None:
        if self.go_fd is not None:
            os.close(self.go_fd)
            self.opened.remove(self.go_fd)
            self.go_fd = None

    def _spec(self, status_fd: int) -> dict[str, Any]:
        """The bundle's config and what the init needs of this runtime besides."""
        assert self.bundle is not None
        profile = self.bundle["linux"].get("seccomp")
        spec = {
            "config": self.bundle,
            "status_fd": status_fd,
            "supervisor": os.getpid(),
            "seccomp": seccomp.prepare(profile) if profile else None,
            "cgroup_procs": self.cgroup.procs_files(),
        }
        if self.stdio is not None and self.stdio.console is not None:
            spec["console_fd"] = self.stdio.console_child
            size = terminal_size(self.config, self.attach) or self.console_size
            if size:
                self.bundle["process"]["consoleSize"] = {"height": size[0], "width": size[1]}
        return spec

    def _ready(self, message: str) -> None:
        """Tell a waiting ``strata run -d`` / ``start`` how the start went (once)."""
        if message.startswith("ok "):
            events.record(self.root, "start", self.config)
        if self.ready_fd is not None:
            _tell(self.ready_fd, message)
            self.ready_fd = None

    async def run(self, ready_fd: int | None = None) -> int:
        """Run the container to its end; return its exit code (125-127 for failures to start).
        Attached clients are served meanwhile, and told the code once it is recorded."""
        async with trio.open_nursery() as nursery:
            self.stdin_send, stdin_receive = trio.open_memory_channel[bytes](1024)
            self.stdin_ready = trio.Event()
            if self.listener is not None:
                await nursery.start(self.hub.serve, self.listener)
                if self.client is not None:
                    self.hub.adopt(socket.socket(fileno=self.client))
                    self.client = None
            nursery.start_soon(self._write_input, stdin_receive)
            if self.restarts == 0 and self.lock_fd is not None and self.c.recorded().get("RestartCount"):
                self.c.set_state(RestartCount=0)  # started by hand: counted again from 0
            code = await self._run(ready_fd)
            self.stdin_ready.set()
            with trio.CancelScope(shield=True):
                await self.hub.finish(code)
            nursery.cancel_scope.cancel()
        if self.listener is not None:
            self.listener.close()
        return code

    def _current_config(self) -> dict[str, Any]:
        """The container's record as it is on disk now (its name may have changed), else as it was."""
        try:
            with open(self.c.path("config.json")) as f:
                config: dict[str, Any] = json.load(f)
                return config
        except (OSError, ValueError):
            return self.config

    def _input(self, data: bytes) -> None:
        """From an attached client: bytes for the container's stdin (b"": its end)."""
        if self.stdin_send is not None:
            try:
                self.stdin_send.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _write_input(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """Write attached clients' input to the container's stdin, once it has one (a -t container's
        terminal comes with PID 1's console); b"" closes a stdin pipe (the container sees EOF)."""
        assert self.stdin_ready is not None
        await self.stdin_ready.wait()
        writer = None
        try:
            async with receive:
                async for data in receive:
                    stdio = self.stdio
                    if stdio is None or stdio.stdin < 0:
                        continue
                    if not data:
                        if stdio.close_stdin and stdio.stdin in self.opened:
                            if writer is not None:
                                await writer.aclose()
                                writer = None
                            self.opened.remove(stdio.stdin)
                            os.close(stdio.stdin)
                            stdio.stdin = -1
                        continue
                    if writer is None:
                        writer = trio.lowlevel.FdStream(os.dup(stdio.stdin))
                    try:
                        await writer.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return
        finally:
            if writer is not None:
                with trio.CancelScope(shield=True):
                    await writer.aclose()

    def _signal(self, number: int) -> None:
        """A signal an attached client passes on (its sig-proxy): to PID 1."""
        if self.pid and self.init is not None and self.init.returncode is None:
            try:
                os.kill(self.pid, number)
            except (ProcessLookupError, PermissionError, ValueError):
                pass

    def _resize_to(self, rows: int, columns: int) -> None:
        """An attached client's terminal size: the container's terminal takes it on."""
        if self.stdio is not None:
            self.stdio.set_size((rows, columns))

    async def _run(self, ready_fd: int | None = None) -> int:
        c = self.c
        self.ready_fd = ready_fd
        if self.lock_fd is None:  # another supervisor runs it: its state and files are not ours
            self._ready(f"error 125 {self.error}")
            return 125
        state = c.state()
        first_start = state.get("Status") == "created"
        union_pid = self.union[0] if self.union else 0
        mount = None
        code = 125
        error = ""
        try:
            # the first state also makes state.spare: from here on a state costs no free space
            c.set_state(
                state,
                Status="starting",
                Running=False,
                Pid=0,
                ExitCode=0,
                OOMKilled=False,
                Error="",
                SupervisorPid=os.getpid(),
                SupervisorStart=start_time(os.getpid()),
                StartedAt=now(),
                FinishedAt="0001-01-01T00:00:00Z",
                UnionPid=union_pid,
                UnionStart=start_time(union_pid) if union_pid else None,
                Network=None,
            )
            if self.union is not None:  # adopted even if a later step failed: the finally unmounts it
                mount = await Mount.adopt(
                    c.path("merged"), self.union[0], self.union_ready if self.union_ready is not None else self.union[1]
                )
            if mount is None or self.init is None or self.failed:  # (a step after the union's fork failed)
                raise UnionError(self.failed or self.error or "no union filesystem")
            code, error = await self._start_and_wait(mount)
        except (UnionError, OSError, ExceptionGroup) as e:  # a nursery's task fails in a group
            error = f"cannot start container: {_first(e)}"
            code = 125
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):  # (forwarded until now)
                signal.signal(sig, signal.SIG_IGN)  # the clean-up is not to be cut short: leftovers
            with trio.CancelScope(shield=True):
                self._close_go()  # an init that never got the go-ahead exits
                if self.init is not None:
                    if self.init.returncode is None:  # we failed, not the container: nobody would watch it
                        self.cgroup.kill_all()
                        if self.pid:
                            _kill(self.pid)
                    await self.init.wait()
                for fd in self.opened:
                    os.close(fd)
                self.opened.clear()
                oom = self.cgroup.oom_killed() if self.pid else False
                self.cgroup.kill_all()
                error = error or (self.net.disconnect() if self.net else "")  # its veth, ports, lease or pasta
                detached = False
                if mount is not None:
                    detached = _detach(mount.mountpoint)
                    mount.begin_unmount()
                    if not detached:  # the mount stays until the daemon is done: wait for it
                        await mount.unmount()
                # blocking, but nothing is left to serve: the container is gone, its union going
                self.cgroup.destroy()
                if self.union_died:
                    error = self.union_died
                self.error = error
                remove = self.config["HostConfig"]["AutoRemove"] or (first_start and not self.started)
                if self.started:  # before the end is recorded: `stop` (its `stop` event) waits for that
                    config = self._current_config()  # (renamed meanwhile, say)
                    if oom:
                        events.record(self.root, "oom", config)
                    events.record(self.root, "die", config, exitCode=code)
                if not remove:
                    again = self.started and self.restart is not None and self.restart(code)
                    count: dict[str, Any] = {"RestartCount": self.restarts + 1} if again else {}
                    try:
                        c.set_state(
                            Status="restarting" if again else "exited",
                            Running=False,
                            Pid=0,
                            ExitCode=code,
                            OOMKilled=oom,
                            Error=error,
                            FinishedAt=now(),
                            **count,
                        )
                    except OSError as e:  # not even the reserved block: the state reads as a dead supervisor's
                        self.error = error = error or f"cannot record the container's exit: {e.strerror}"
                self._ready(f"error {code} {error}")  # never got as far as running
                if remove:
                    Containers(self.root).remove(c, locked=True)  # a run that never started leaves nothing behind
                    Volumes(self.root).release(self.config)  # and its anonymous volumes go with it (--rm's too)
                if mount is not None and detached:
                    await mount.unmount()  # the daemon's exit (a few ms) overlapped all of the above
        return code

    async def _start_and_wait(self, mount: Mount) -> tuple[int, str]:
        assert self.init is not None and self.stdio is not None and self.status_fd is not None
        stdio, helper, opened = self.stdio, self.init, self.opened
        self._go()
        status = trio.lowlevel.FdStream(self.status_fd)
        opened.remove(self.status_fd)
        log = JsonLog(self.c.path("container.log"))
        drained = trio.Event()
        remaining = [0]

        async def pump(src: int, stream: str, to: int | None) -> None:
            try:
                await pump_output(src, stream, log, to, self.hub)
            finally:
                remaining[0] -= 1
                if not remaining[0]:
                    drained.set()

        try:
            async with status, trio.open_nursery() as nursery:
                first = self.early if self.early is not None else await _read_line(status)
                if first.startswith("pid "):
                    self.pid = int(first.split()[1])
                    if isinstance(self.cgroup, cgroups.NoCgroup):  # its members: PID 1's namespace
                        self.cgroup.pid = self.pid
                elif first.startswith("error "):  # PID 1 never got as far as the cgroup
                    await helper.wait()
                    _, failed_code, message = first.split(" ", 2)
                    return int(failed_code), message
                if stdio.console is not None:
                    await stdio.receive_console(opened, self.attach.stdout if self.attach else None)
                    self._resize()
                remaining[0] = len(stdio.pumps)
                if not stdio.pumps:
                    drained.set()
                for src, stream, to in stdio.pumps:
                    nursery.start_soon(pump, src, stream, to)
                if self.stdin_ready is not None:
                    self.stdin_ready.set()  # (attached clients' input may go in now)
                if stdio.feed is not None and stdio.stdin >= 0:
                    if stdio.close_stdin:  # the feeder closes the pipe at EOF: the container sees EOF
                        opened.remove(stdio.stdin)
                    nursery.start_soon(feed_input, stdio.feed, stdio.stdin, stdio.close_stdin)
                nursery.start_soon(self._watch_union, mount)
                await nursery.start(self._forward_signals)  # taken before "running" says they may come
                failure = await _read_line(status)  # "error CODE MESSAGE" if exec failed; EOF once it exec'd
                if failure.startswith("error "):
                    await helper.wait()
                    nursery.cancel_scope.cancel()
                    _, failed_code, message = failure.split(" ", 2)
                    return int(failed_code), message
                if self.pid:
                    self.started = True
                    self.c.set_state(
                        Status="running",
                        Running=True,
                        Pid=self.pid,
                        StartedAt=now(),
                        Network=self.net.record(self.config) if self.net else None,
                    )
                    self._ready(f"ok {self.pid}")
                code = await helper.wait()
                # PID 1 is gone and its namespace with it: the output pipes end; drain them, bounded
                with trio.move_on_after(5):
                    await drained.wait()
                nursery.cancel_scope.cancel()
            return code, ""
        finally:
            log.close()

    async def _watch_union(self, mount: Mount) -> None:
        code = await mount.process.wait()
        self.union_died = f"the union filesystem process died (exit {code}): container stopped"
        self.cgroup.kill_all()

    async def _forward_signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await forwarding.forward(self.pid, self._resize, task_status)

    def _resize(self) -> None:
        size = terminal_size(self.config, self.attach)
        if size and self.stdio is not None:
            self.stdio.set_size(size)


def container_filter(config: dict[str, Any]) -> seccomp.Filter | None:
    """The seccomp filter a container's processes get (PID 1 and ``exec``'s alike): its ``Seccomp``
    setting resolved for its capabilities (a container created before seccomp existed gets the
    default; a privileged one none). ``RunnerError`` if it cannot be built (no libseccomp, say)."""
    if (config.get("HostConfig") or {}).get("Privileged"):
        return None
    try:
        return seccomp.for_container(
            config.get("Seccomp", "default"), set(privileges.of_container(config, list(credentials.DEFAULT_CAPS)))
        )
    except OSError as e:
        raise RunnerError(f"cannot build the container's seccomp filter: {e}") from None


def _first(error: BaseException) -> BaseException:
    """The first error of a (nested) exception group, or the error itself."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _detach(mountpoint: str) -> bool:
    """Unmount (lazily) now, rather than when the union daemon gets to it: as root, umount2 takes
    effect at once, and the daemon then ends by itself. False where that is not allowed."""
    try:
        sc.umount2(mountpoint, sc.MNT_DETACH)
    except OSError:
        return False
    return True


async def _read_line(stream: trio.lowlevel.FdStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError:
        pass


def run_attached(root: str, container: Container, attach: Attach) -> tuple[int, str]:
    """Foreground ``strata run``: supervise in this process, terminal in raw mode for ``-t``."""
    saved = None
    term = attach.stdin
    if container.config["Config"]["Tty"] and term is not None and os.isatty(term):
        saved = termios.tcgetattr(term)
        tty.setraw(term)
    supervisor = Supervisor(root, container, attach)
    supervisor.prepare()
    try:
        with forwarding.held():  # a signal now waits for PID 1 rather than killing us (and it)
            return trio.run(supervisor.run), supervisor.error
    finally:
        if saved is not None and term is not None:
            termios.tcsetattr(term, termios.TCSADRAIN, saved)

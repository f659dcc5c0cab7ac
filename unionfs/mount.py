"""Mounting: ``python -m unionfs -o lowerdir=…,upperdir=…,workdir=… MERGED``, and the async API the
runner uses (``Mount.start`` / ``Mount.unmount``), each mount in a process of its own (pyfuse3 serves
one filesystem per process).

Lifecycle: the options are checked before anything is mounted (one-line error, exit 1). With ``-f``
the process serves in the foreground; otherwise it forks, and the parent returns 0 only once the mount
is ready (or prints the child's error). SIGTERM/SIGINT unmount cleanly; so do ``fusermount3 -u`` and
``umount``, which end the serving loop. Those return as soon as the kernel has unmounted, while the
daemon still syncs the upper and tidies its workdir (journal notes, the volatile mark): a caller that
removes the upper or workdir next must wait for the daemon's exit. ``python -m unionfs -u MERGED``
unmounts and returns only once it has exited (its pid is in the mount's source field,
``strata-unionfs:PID``); with ``-f`` the command is the daemon, and its exit is that moment.
The options are ``options``'s; ``strata-unionfs`` (``client``) is this command, asked of a warm
mount server (``server``) where one can serve it: its daemons are made by ``mount_union`` and
``serve_mounted``, as ``serve`` makes this command's.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import resource
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyfuse3
import trio

from . import mountinfo, passthrough
from .errors import UnionError
from .fs import FD_CACHE, NO_OPEN, PASSTHROUGH, UnionFS
from .options import FUSE_OPTIONS, VOLATILE_MARK, Options, parse_options

log = logging.getLogger("unionfs")
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
FSNAME = "strata-unionfs"
__all__ = [
    "Options",
    "parse_options",
    "VOLATILE_MARK",
    "FSNAME",
    "Mount",
    "fork_serve",
    "fork_detached",
    "serve",
    "unmount",
    "daemon_pid",
    "main",
    "check_request",
    "fork_daemon",
    "mount_union",
    "serve_mounted",
    "Mounted",
]


def _mount_options(opts: Options) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname={FSNAME}:{os.getpid()}", "subtype=unionfs"}  # the daemon's pid, for -u
    if opts.upper is None:
        options.add("ro")
    options.update(opts.fuse)
    return options


async def serve_mounted(mounted: Mounted, ready_fd: int | None, told: Callable[[], None] | None = None) -> None:
    """Serve a mount ``mount_union`` made (in a trio run), until unmounted or signalled; report it
    ready on ``ready_fd`` once the kernel has our INIT reply (then call ``told``)."""
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        nursery.start_soon(_ready, mounted.fs, mounted.target, ready_fd, told)
        await pyfuse3.main(min_tasks=1, max_tasks=16)
        nursery.cancel_scope.cancel()


@dataclass
class Mounted:
    """A union mounted by this process (its FUSE session open), to be served, then closed."""

    fs: UnionFS
    target: str  # the mountpoint's real path
    mark: str | None  # the volatile mark made for it

    def close(self) -> None:
        # After fusermount -u the kernel has unmounted already (and unmounting again is harmless);
        # after a signal or a crash we must.
        pyfuse3.close(unmount=True)
        self.fs.close()
        if self.mark:  # the writes are in the page cache: only the host's end can lose them now
            _remove_mark(self.mark)


def mount_union(
    opts: Options, mountpoint: str, ready_fd: int | None, enter: Callable[[], None] | None = None
) -> Mounted | None:
    """Mount (served by nothing yet: the caller serves it next), or tell ``ready_fd`` why not and
    return None. ``enter``: called first (to join the namespaces the mount belongs in, say)."""
    os.umask(0)  # modes come from the caller, already masked by the kernel
    logging.basicConfig(filename=opts.log, level=logging.WARNING, format="%(asctime)s unionfs[%(process)d] %(message)s")
    mark = os.path.join(opts.work, VOLATILE_MARK) if opts.volatile and opts.work else None
    try:
        if enter is not None:
            enter()
        target = os.path.realpath(mountpoint)
        fs = UnionFS(
            opts.lowers,
            opts.upper,
            opts.work,
            opts.volatile,
            no_open=NO_OPEN,
            fd_cache=_fd_budget(),
            owners_xattr=opts.owners_xattr,
            raw=opts.raw,
            uids=opts.uids,
            gids=opts.gids,
            fsync=opts.fsync,
            passthrough=opts.passthrough and PASSTHROUGH and passthrough.usable(),
            metacopy=opts.metacopy,
        )
        if mark:
            os.makedirs(mark)
        pyfuse3.init(fs, mountpoint, _mount_options(opts))
        fs.flush_journal()
    except Exception as e:  # noqa: BLE001 - reported to whoever waits for readiness
        if mark:
            _remove_mark(mark)
        _tell(ready_fd, f"cannot mount {mountpoint}: {e}")
        return None
    return Mounted(fs, target, mark)


def serve(opts: Options, mountpoint: str, ready_fd: int | None, enter: Callable[[], None] | None = None) -> int:
    """Mount, tell ``ready_fd`` (``ok`` or the error), serve until unmounted or signalled.
    ``enter``: called first (to join the namespaces the mount belongs in, say)."""
    mounted = mount_union(opts, mountpoint, ready_fd, enter)
    if mounted is None:
        return 1
    try:
        trio.run(serve_mounted, mounted, ready_fd)
    finally:
        mounted.close()
    return 0


def _remove_mark(mark: str) -> None:
    """Remove the volatile mark and its ``incompat`` parent (if nothing else is in it)."""
    for d in (mark, os.path.dirname(mark)):
        try:
            os.rmdir(d)
        except OSError:
            return


def _fd_budget() -> int:
    """Raise this process's open-file limit to its hard limit, and size the cache of backing fds
    to a quarter of it: unlinked files kept open and the layers' dirs need the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(16, min(FD_CACHE, soft // 4)) if soft != resource.RLIM_INFINITY else FD_CACHE


READAHEAD_KB = 1024  # FUSE requests carry up to 256 pages; the kernel's default readahead asks for 32


async def _ready(fs: UnionFS, target: str, ready_fd: int | None, told: Callable[[], None] | None = None) -> None:
    """Report the mount ready once the kernel has our INIT reply: until then every request to it
    waits. ``target`` is the mountpoint's real path, found before mounting."""
    await fs.initialised.wait()
    _tune_readahead(target)
    try:
        _tell(ready_fd, "ok")
    except BrokenPipeError:
        pyfuse3.terminate()  # nobody waits for this mount any more: take it down rather than leak it
    if told is not None:
        told()


def _tune_readahead(target: str) -> None:
    """Let the kernel read ahead a whole request (1 MiB) at a time on this mount: an eighth of the
    round trips on sequential reads (and on exec), measured twice as fast on a cold 256 MiB read.
    The kernel sets its own value when it gets our INIT reply, so this runs after that. The mount's
    device comes from mountinfo. Root only (sysfs); elsewhere the default stays."""
    try:
        found = mountinfo.mounts_at(target)
        if found:
            with open(f"/sys/class/bdi/{found[-1][0]}/read_ahead_kb", "w") as f:  # the newest: ours
                f.write(str(READAHEAD_KB))
    except OSError:
        pass


def _tell(fd: int | None, message: str) -> None:
    if fd is None:
        if message != "ok":
            print(f"unionfs: {message}", file=sys.stderr)
        return
    os.write(fd, message.encode())
    os.close(fd)


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the daemon serving the union mounted at ``mountpoint`` (the newest mount there),
    from the mount's source field; None if that is not one of ours."""
    sources = mountinfo.sources_at(os.path.realpath(mountpoint))
    name, _, pid = sources[-1].partition(":") if sources else ("", "", "")
    return int(pid) if name == FSNAME and pid.isdigit() else None


def unmount(mountpoint: str, timeout: float = 60.0) -> None:
    """Unmount the union at ``mountpoint`` and return once its daemon has exited: from then on
    nothing touches its upper or work dir (UnionError if it cannot be unmounted, or the daemon
    does not exit within ``timeout`` seconds)."""
    target = os.path.realpath(mountpoint)
    pid = daemon_pid(target)
    pidfd = -1
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
            if not any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in os.listdir(f"/proc/{pid}/fd")):
                os.close(pidfd)  # not a FUSE daemon: the pid was reused after ours died
                pidfd = -1
        except (ProcessLookupError, FileNotFoundError):
            if pidfd >= 0:
                os.close(pidfd)
            pidfd = -1
    try:
        done = subprocess.run(["fusermount3", "-u", target], capture_output=True, text=True)
        if done.returncode != 0:
            raise UnionError(f"cannot unmount {mountpoint}: {done.stderr.strip() or 'fusermount3 failed'}")
        if pidfd >= 0 and not select.select([pidfd], [], [], timeout)[0]:
            raise UnionError(f"{mountpoint}: unmounted, but its daemon (pid {pid}) has not exited")
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def check_request(options: Sequence[str], mountpoint: str) -> Options:
    """The options of a mount asked for with ``-o OPTIONS MOUNTPOINT``, checked (UnionError)."""
    opts = parse_options(options)
    if not os.path.isdir(mountpoint):
        raise UnionError(f"{mountpoint}: not a directory")
    return opts


def main(argv: Sequence[str] | None = None, prog: str = "python -m unionfs") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="strata's union filesystem")
    parser.add_argument("mountpoint")
    parser.add_argument(
        "-u", dest="unmount", action="store_true", help="unmount MOUNTPOINT and wait for its daemon to exit"
    )
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        help="lowerdir=L1:L2,upperdir=U,workdir=W[,volatile,fsync=0,passthrough=0,xattr_permissions=2,raw,"
        "uidmapping=C:H:N[:...],gidmapping=...,log=FILE]; of FUSE's: " + ",".join(FUSE_OPTIONS),
    )
    parser.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=_version())
    args = parser.parse_args(argv)
    if args.unmount:
        try:
            unmount(args.mountpoint)
        except UnionError as e:
            print(f"unionfs: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        opts = check_request(args.options, args.mountpoint)
    except UnionError as e:
        print(f"unionfs: {e}", file=sys.stderr)
        return 1
    if args.foreground:
        return serve(opts, args.mountpoint, args.ready_fd)
    _pid, r = fork_daemon(opts, args.mountpoint)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    if message == "ok":
        return 0
    print(f"unionfs: {message or 'the daemon died before the mount was ready'}", file=sys.stderr)
    return 1


def _version() -> str:
    """What ``--version`` says (podman's ``info`` shows it for its mount_program)."""
    from importlib import metadata

    try:
        ours = metadata.version("strata")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return f"strata-unionfs {ours} (pyfuse3 {pyfuse3.__version__})"


def _options(lowers: Sequence[str], upper: str | None, work: str | None, options: Sequence[str]) -> str:
    opt = "lowerdir=" + ":".join(lowers)
    if upper:
        opt += f",upperdir={upper},workdir={work}"
    return opt + "".join("," + o for o in options)


def fork_serve(
    mountpoint: str,
    lowers: Sequence[str],
    upper: str | None = None,
    work: str | None = None,
    options: Sequence[str] = (),
    parent_death: int = 0,
    enter: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Fork the serving process now, before the caller starts trio (forking inside a trio run is not
    safe): a fresh interpreter costs a few hundred milliseconds of imports, a fork almost nothing.
    Returns (pid, ready fd) for ``Mount.adopt``. The child is a process of its own, in its own session;
    with ``parent_death`` (SIGTERM: unmount and exit) it gets that signal when the caller dies.
    ``enter`` runs in the child before it mounts (see ``serve``).
    """
    return fork_daemon(parse_options([_options(lowers, upper, work, options)]), mountpoint, parent_death, enter)


def fork_daemon(
    opts: Options, mountpoint: str, parent_death: int = 0, enter: Callable[[], None] | None = None
) -> tuple[int, int]:
    """Fork the daemon; it reports ``ok`` or its error on the returned fd once the mount is (or
    cannot be) made."""
    return fork_detached(lambda ready: serve(opts, mountpoint, ready, enter), parent_death=parent_death)


def fork_detached(
    body: Callable[[int], int], failure: int = 1, parent_death: int = 0, pass_fds: Sequence[int] = ()
) -> tuple[int, int]:
    """Fork a process of its own: its own session, stdio on /dev/null, no inherited fd but the write
    end of a pipe, which it gets as ``body``'s argument (and ``pass_fds``); it exits with what ``body``
    returns (``failure`` if it raises). Returns (pid, read end of the pipe). The runner's detached
    supervisor is one too. ``parent_death``: the signal the child gets when this process dies (0:
    none; prctl(2))."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = failure
        try:
            if parent_death:
                if _libc.prctl(_PR_SET_PDEATHSIG, parent_death, 0, 0, 0) != 0 or os.getppid() != parent:
                    os._exit(failure)  # the parent is gone already (or cannot be watched)
            # What this process inherited lives until it exits: the collector leaves it alone
            # (walking a big parent's heap cost a forked mount 30 ms, and dirtied its pages).
            gc.freeze()
            os.close(r)
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            low = 3
            for keep in sorted({w, *pass_fds}):
                os.closerange(low, keep)
                low = keep + 1
            os.closerange(low, 65536)
            code = body(w)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


class ForkedChild:
    """The bits of ``trio.Process`` the runner uses, for a child this process forked itself (held by a
    pidfd, so its pid cannot be reused while we hold it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Mount:
    """A union mount served by a child process, for trio code (the runner)."""

    def __init__(self, mountpoint: str, process: trio.Process | ForkedChild) -> None:
        self.mountpoint = mountpoint
        self.process = process
        self._asked = False  # SIGTERM sent (a second one would kill the daemon before it unmounts)

    @classmethod
    async def adopt(cls, mountpoint: str, pid: int, ready: int | bytes) -> Mount:
        """Wait for a child made by ``fork_serve`` to be ready (UnionError if it could not mount).
        ``ready``: its ready fd, or what ``read_ready`` read of it before trio started."""
        child = ForkedChild(pid)
        message = ready if isinstance(ready, bytes) else await _read_all(ready)
        if message != b"ok":
            await child.wait()
            raise UnionError(message.decode(errors="replace") or "the unionfs daemon died before mounting")
        return cls(mountpoint, child)

    @classmethod
    async def start(
        cls,
        mountpoint: str,
        lowers: Sequence[str],
        upper: str | None = None,
        work: str | None = None,
        options: Sequence[str] = (),
    ) -> Mount:
        """Start the daemon and return once the mount is ready (UnionError if it cannot be made)."""
        opt = _options(lowers, upper, work, options)
        r, w = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "unionfs", "-f", "--ready-fd", str(w), "-o", opt, mountpoint],
                pass_fds=(w,),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(w)
        message = await _read_all(r)
        if message != b"ok":
            await process.wait()
            raise UnionError(message.decode(errors="replace") or "the unionfs daemon died before mounting")
        return cls(mountpoint, process)

    def begin_unmount(self) -> None:
        """Ask the daemon to unmount and exit (SIGTERM), without waiting: the caller may do other
        work meanwhile, then ``unmount`` waits."""
        if self.process.returncode is None and not self._asked:
            self._asked = True
            self.process.send_signal(signal.SIGTERM)

    async def unmount(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always waits for the process."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.begin_unmount()
                with trio.move_on_after(grace):
                    await self.process.wait()
                if self.process.returncode is None:
                    self.process.kill()
                    await self.process.wait()
                    subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)


def read_ready(ready_fd: int) -> bytes:
    """Block until a daemon made by ``fork_serve`` has mounted (``b"ok"``) or failed (its error), for
    a caller that has not started trio yet; closes the fd. Give the message to ``Mount.adopt``."""
    message = b""
    try:
        while chunk := os.read(ready_fd, 4096):
            message += chunk
    finally:
        os.close(ready_fd)
    return message


async def _read_all(fd: int) -> bytes:
    message = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some():
            message += chunk
    return message

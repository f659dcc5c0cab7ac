"""The mount server: one long-lived process per user and namespace pair with the union filesystem
imported (trio, pyfuse3: most of the ~200 ms a cold ``python -m unionfs`` takes), that hands each
mount ``strata-unionfs`` (``unionfs.client``) asks for to a *spare* daemon forked before the request
came, which tells the caller itself once the mount is ready.

    python -m unionfs.server DIR KEY      (started by ``strata-unionfs`` itself, in the background)

It holds ``DIR/mount-KEY.lock`` while it listens on ``DIR/mount-KEY.sock`` (DIR is 0700 and ours),
so at most one listens per socket. A request is refused unless its peer has our uid and is in our
user and mount namespaces (KEY names them: a mount belongs in its caller's). For each one it enters
the caller's working directory (an fd the caller sent) and checks the options there (an error is
answered at once), answers ``+`` (taken), and sends the spare the order (the checked options,
pickled: the pair is private) with the caller's connection and working directory. The spare (``_spare``: a fork of this process, detached as ``python -m
unionfs``'s daemon is, already waiting in a trio run of its own) mounts, serves, and writes ``ok`` or
its error to the caller: a mount costs neither a fork nor trio's start. A caller gone by then leaves
no mount behind (the daemon takes it down). Once a spare has told its caller (or died), the next one
is forked: not sooner, so that the fork does not compete with that mount for the CPU. Spares and
the daemons they become are this process's children, reaped as they end; daemons outlive it.

It answers ``stale`` and stops listening when a source file of unionfs changed since it started,
when the caller runs another interpreter, or when the caller may open more files than this process
could let a daemon; the caller then mounts by itself and starts a new server. It exits after
``IDLE_SECONDS`` without a request, and never runs trio itself (its forks do).

Caveats: a daemon is in the server's cgroup and session, not its caller's (fuse-overlayfs's stays
in its caller's cgroup); it has the server's environment and resource limits but RLIMIT_NOFILE
(checked, as above).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import pickle
import pkgutil
import resource
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass

import trio

from . import mount
from .client import PROTOCOL, private_dir, socket_name
from .errors import UnionError

IDLE_SECONDS = 600
_MAX_REQUEST = 1 << 20


@dataclass
class Request:
    executable: str
    mountpoint: str
    options: list[str]
    cwd: int  # an O_PATH fd of the caller's working directory


def _receive(conn: socket.socket) -> Request:
    """Read one request and the caller's cwd fd; ValueError if it is malformed."""
    conn.settimeout(10)
    fds: list[int] = []
    data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(4))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
    try:
        if len(data) < 4 or len(fds) != 1:
            raise ValueError("bad request")
        size = int.from_bytes(data[:4], "little")
        if size > _MAX_REQUEST:
            raise ValueError("bad request")
        body = data[4:]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        fields = [os.fsdecode(f) for f in body.split(b"\0")]
        if fields[0] != PROTOCOL or len(fields) < 4:
            raise ValueError("another protocol")
        return Request(fields[1], fields[2], fields[3:], fds[0])
    except (ValueError, IndexError, OSError):
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request") from None


def _sources() -> dict[str, int]:
    """unionfs's loaded source files and their mtimes: a change makes this server stale."""
    root = os.path.dirname(os.path.abspath(__file__)) + os.sep
    found = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.abspath(path).startswith(root):
            try:
                found[path] = os.stat(path).st_mtime_ns
            except OSError:
                found[path] = -1
    return found


def _changed(sources: dict[str, int]) -> bool:
    for path, mtime in sources.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def _fits(pid: int) -> bool:
    """Can a daemon forked here open as many files as one the caller (``pid``) started would? (It
    raises its soft limit to the hard one; lowering a hard limit is always possible, raising it may
    not be.) The caller's limit is read from /proc: it need not import ``resource`` to send it."""
    own = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if own == resource.RLIM_INFINITY:
        return True
    try:
        with open(f"/proc/{pid}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
    except (OSError, StopIteration):
        return False
    hard = line.split()[4]
    return hard != "unlimited" and int(hard) <= own


def _same_interpreter(executable: str) -> bool:
    """The caller's ``sys.executable`` is ours, or another name of it in the same directory (a
    venv's ``python`` and ``python3``: the directory decides the venv)."""
    return executable == sys.executable or (
        os.path.dirname(executable) == os.path.dirname(sys.executable)
        and os.path.realpath(executable) == os.path.realpath(sys.executable)
    )


def _same_namespaces(pid: int) -> bool:
    try:
        return all(
            os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("user", "mnt")
        )
    except OSError:
        return False


class Server:
    def __init__(self, directory: str, key: str) -> None:
        self.directory = directory
        self.key = key
        self.listener: socket.socket | None = None
        self.lock_fd: int | None = None
        self.sources: dict[str, int] = {}
        self.spare: socket.socket | None = None  # the order socket of the spare daemon, if one waits
        self.spare_done: int | None = None  # the spare's pipe: closed once it has mounted (or died)
        self.used: set[int] = set()  # the pipes of spares given an order and not done with it yet
        self.children: dict[int, int] = {}  # pidfd -> pid: spares and the daemons they became
        self.poller = select.poll()

    def _path(self, suffix: str) -> str:
        return os.path.join(self.directory, socket_name(self.key).removesuffix(".sock") + suffix)

    def claim(self) -> bool:
        """Take the lock; False if another server holds it."""
        fd = os.open(self._path(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def listen(self) -> None:
        """Fork the first spare, then listen; the pid file says both are there."""
        self._fork_spare()
        path = self._path(".sock")
        try:
            os.unlink(path)  # a dead server's; we hold the lock, so no live one listens there
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(64)
        self.listener = listener
        with open(self._path(".pid.tmp"), "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(self._path(".pid.tmp"), self._path(".pid"))
        self.poller.register(listener, select.POLLIN)

    def stop_listening(self) -> None:
        """Let a new server take over: unlink the socket, answer who connected meanwhile, then
        drop the lock. The spare ends (its order socket closes)."""
        if self.listener is not None:
            self.poller.unregister(self.listener)
            for suffix in (".sock", ".pid"):
                try:
                    os.unlink(self._path(suffix))
                except FileNotFoundError:
                    pass
            self.listener.setblocking(False)
            while True:  # connected before the unlink: they are told to mount by themselves
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    break
                _answer(conn, "stale")
            self.listener.close()
            self.listener = None
        if self.spare is not None:
            self.spare.close()
            self.spare = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def serve(self) -> None:
        """Until idle (no request for IDLE_SECONDS) or told to stop. Daemons still running are
        left to outlive this process."""
        while self.listener is not None:
            events = self.poller.poll(IDLE_SECONDS * 1000)
            if not events:
                break
            for fd, _mask in events:
                if self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                elif fd in self.children:
                    self._reap(fd)
                else:
                    self._spare_done(fd)
        self.stop_listening()

    def _fork_spare(self) -> None:
        """Fork the next daemon now, before anyone asks for it: it waits in a trio run of its own
        for its order (``_spare``), so a mount costs neither a fork nor trio's start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            pid, done = mount.fork_detached(lambda w: _spare(theirs.fileno(), w), pass_fds=(theirs.fileno(),))
        except OSError:
            ours.close()
            return
        finally:
            theirs.close()
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(done, select.POLLIN)
        self.spare, self.spare_done = ours, done

    def _spare_done(self, fd: int) -> None:
        """A spare's pipe closed: it has answered its caller (the next spare is forked only now, so
        that its fork competes with no mount for the CPU), or it died waiting (replaced)."""
        self.poller.unregister(fd)
        os.close(fd)
        self.used.discard(fd)
        if fd == self.spare_done:
            assert self.spare is not None
            self.spare.close()
            self.spare = self.spare_done = None
        if self.spare is None and self.listener is not None:
            self._fork_spare()

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.geteuid() or not _same_namespaces(pid):
                raise ValueError("another user or namespace")
            request = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        try:
            if not _same_interpreter(request.executable) or _changed(self.sources) or not _fits(pid):
                _answer(conn, "stale")
                self.stop_listening()  # the caller starts a new server; this one ends
                return
            self._hand_over(request, conn)
        finally:
            os.close(request.cwd)
            conn.close()

    def _hand_over(self, request: Request, conn: socket.socket) -> None:
        """Check the options in the caller's working directory; give the spare the order, with the
        caller's connection (it tells the caller itself), then fork the next spare."""
        try:
            os.fchdir(request.cwd)
            try:
                opts = mount.check_request(request.options, request.mountpoint)
            finally:
                os.chdir("/")
        except (UnionError, OSError) as e:
            _answer(conn, f"+{e}")
            return
        if self.spare is None:
            self._fork_spare()
        if self.spare is None or self.spare_done is None or not _answer(conn, "+"):
            return
        order = pickle.dumps((request.mountpoint, opts))  # checked: the spare need not check again
        fds = struct.pack("2i", conn.fileno(), request.cwd)
        try:
            self.spare.sendmsg([order], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError:
            _answer(conn, "the spare daemon went away before it could mount")
        self.spare.close()
        self.used.add(self.spare_done)
        self.spare = self.spare_done = None

    def _reap(self, pidfd: int) -> None:
        self.poller.unregister(pidfd)
        os.waitpid(self.children.pop(pidfd), 0)
        os.close(pidfd)


def _spare(order_fd: int, done: int) -> int:
    """A spare daemon: waits for its order, then mounts and serves as ``python -m unionfs``'s daemon;
    ``done`` is closed once it has told its caller."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is not ours
    try:
        _warm()
    except (OSError, UnionError):  # no scratch dir, say: the first mount is a little slower
        pass
    code: int = trio.run(_take_order, socket.socket(fileno=order_fd), done)
    return code


def _warm() -> None:
    """Run what a mount runs, once, on nothing: the pages it touches are this process's own
    (copied from the server's) before the caller waits on them."""
    import tempfile

    from .fs import NO_OPEN, UnionFS

    with tempfile.TemporaryDirectory(prefix="unionfs-warm-") as scratch:
        lower, upper, work = (os.path.join(scratch, n) for n in ("l", "u", "w"))
        for d in (lower, upper, work):
            os.mkdir(d)
        opts = mount.check_request([f"lowerdir={lower},upperdir={upper},workdir={work}"], scratch)
        UnionFS(opts.lowers, opts.upper, opts.work, no_open=NO_OPEN).close()


async def _take_order(order: socket.socket, done: int) -> int:
    await trio.lowlevel.wait_readable(order)
    data, ancdata, _flags, _addr = order.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(8))
    order.close()
    fds = [
        fd
        for level, kind, payload in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
        for fd in struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
    ]
    if not data or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return 0  # the server went away: nothing to do
    conn, cwd = fds
    os.fchdir(cwd)
    os.close(cwd)
    mountpoint, opts = pickle.loads(data)
    mounted = mount.mount_union(opts, mountpoint, conn)
    if mounted is None:
        return 1
    try:
        await mount.serve_mounted(mounted, conn, told=lambda: os.close(done))
    finally:
        mounted.close()
    return 0


def _answer(conn: socket.socket, text: str) -> bool:
    try:
        conn.sendall(text.replace("\n", " ").encode())
        return True
    except OSError:
        return False


def _import_everything() -> None:
    """The point of a server: every module of unionfs (so trio and pyfuse3) imported once."""
    package = importlib.import_module("unionfs")
    for info in pkgutil.walk_packages(package.__path__, "unionfs."):
        if not info.name.endswith("__main__") and info.name != "unionfs.server":
            importlib.import_module(info.name)


def main(argv: list[str]) -> int:
    directory, key = argv
    if not private_dir(directory):
        return 1
    server = Server(directory, key)
    if not server.claim():
        return 0  # another server listens (or is starting)
    _import_everything()
    server.sources = _sources()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.listen()
        server.serve()
    except SystemExit:
        pass
    finally:
        server.stop_listening()
    return 0


def _terminate(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # out of the poll loop, through stop_listening


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The zygote: one long-lived process per user with all of strata imported, that runs each
``strata`` command in a fresh fork of itself (``runner.launch`` is the client).

    python -m runner.zygote DIR     (started by ``strata`` itself, in the background)

It holds ``DIR/zygote.lock`` while it listens on ``DIR/zygote.sock`` (DIR is 0700 and ours; a peer of
another uid is refused), so at most one listens per DIR. For each request it forks a *worker*: its own
session, with the client's stdio as fds 0-2 and its cwd, umask, environment, argv, CPU affinity,
niceness and resource limits. The worker runs ``runner.cli.main`` and exits with its code. The client
hears ``pid N``, then ``exit CODE`` from the worker as it ends, or ``signal N`` from the zygote if it
was killed (a quick worker's ``exit CODE`` can come before the zygote's ``pid N``: the client takes
it as the end, not as a failed zygote). ``stale`` (strata's code changed, the client has higher limits than this process
could take on, or is in other cgroups) tells the client to run the command itself and start a new zygote. If the client goes away first, the worker gets SIGHUP, as from a closed terminal.
The worker takes the signals a client sends as a fresh ``strata`` process would, whatever this one
inherited (a zygote started under nohup ignores SIGHUP).

A worker is forked ahead of its request, as soon as the last one was taken: a *spare*, which touches the pages
a command would copy on its first writes (a full collection writes each object's GC header: ~20 ms
and ~14 MB, off the command's time), then waits for its order on a socket pair: the request as the
client sent it, with the client's connection and stdio fds. It takes only commands that leave no
process behind (``_QUICK``: those pages would stay with it); the others, and a request that finds no
spare ready, are forked for at once. (A fork is ~1.5 ms and its copied pages ~2 ms of a command.)

The zygote itself stays single-threaded and never runs trio: its forks may fork a container's init.
It answers ``stale`` and stops listening when a source file of strata changed since it started, and
exits after ``IDLE_SECONDS`` without a request or a worker.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import select
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from . import warmup
from .launch import PROTOCOL, SOCKET_NAME, private_dir

IDLE_SECONDS = 600
_MAX_REQUEST = 1 << 20
# what a client forwards to its worker (``launch.via_zygote``); the zygote sends SIGHUP itself
_CLIENT_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


@dataclass
class Request:
    executable: str
    cwd: str
    umask: int
    affinity: set[int]
    nice: int
    limits: list[tuple[int, int]]  # (soft, hard) for each RLIMIT_* number
    argv: list[str]
    env: dict[str, str]
    fds: list[int]
    raw: bytes  # the request as it came (a spare is handed it so)


@dataclass
class _Worker:
    pid: int
    pidfd: int
    conn: socket.socket
    hung_up: bool = False


@dataclass
class _Spare:
    pid: int
    order: socket.socket  # the zygote's end: the spare writes ``_READY`` on it, then reads its order
    ready: bool = False


_READY = b"r"
# Verbs whose worker leaves no process of its own behind it (no container's supervisor or union
# daemon, no exec's waiter, no image mount) and ends with the command: only these are handed to a
# spare. A spare's copied pages are its own, and a process forked from it would keep them as long as
# it runs (+5.5 MiB PSS per running container, measured); a fork of the zygote shares them with it.
_QUICK = frozenset(
    {
        "build", "commit", "container", "cp", "create", "diff", "export", "history", "image", "images",
        "import", "info", "inspect", "kill", "load", "login", "logout", "network", "pause", "port", "ps",
        "pull", "push", "rename", "rm", "rmi", "save", "stop", "system", "tag", "top", "umount", "unmount",
        "unpause", "version", "volume",
    }
)  # fmt: skip


def _verb(argv: list[str]) -> str | None:
    """The command's verb: its first word that is neither an option nor ``--root``'s value."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _receive(conn: socket.socket, nfds: int = 3) -> Request:
    """Read one request (with the client's three stdio fds; a spare's order has the client's
    connection first); ValueError if it is malformed."""
    conn.settimeout(10)
    fds: list[int] = []
    data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(nfds * 4), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
    try:
        if len(data) < 4:
            raise ValueError("short request")
        size = int.from_bytes(data[:4], "little")
        if size > _MAX_REQUEST or len(fds) != nfds:
            raise ValueError("bad request")
        body = data[4:]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        fields = [os.fsdecode(f) for f in body.split(b"\0")]
        if fields[0] != PROTOCOL:
            raise ValueError("another protocol")
        affinity = {int(cpu) for cpu in fields[4].split(",") if cpu}
        limits = [(int(soft), int(hard)) for soft, hard in (pair.split(":") for pair in fields[6].split(","))]
        argc = int(fields[7])
        argv = fields[8 : 8 + argc]
        env = dict(e.split("=", 1) for e in fields[8 + argc :] if "=" in e)
        raw = data[:4] + body
        return Request(fields[1], fields[2], int(fields[3]), affinity, int(fields[5]), limits, argv, env, fds, raw)
    except (ValueError, IndexError, OSError):  # OSError: the rest of it never came (timeout, reset)
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request") from None


def _same_interpreter(executable: str) -> bool:
    """Is the client's interpreter this one? ``python`` and ``python3`` of one venv are (links to one
    binary in one directory: the same prefix): the installed ``strata`` runs one, ``python -m runner``
    often the other, and a zygote that stepped down for each in turn would serve neither."""
    if executable == sys.executable:
        return True
    return os.path.dirname(executable) == os.path.dirname(sys.executable) and os.path.realpath(
        executable
    ) == os.path.realpath(sys.executable)


def _fits(request: Request) -> bool:
    """Can a fork of this process take on the client's limits and niceness? Lowering them always
    works; raising a hard limit or the priority may not, even for root (RLIMIT_NOFILE), so a zygote
    started by a client with lower limits than this one steps down for one with the higher."""
    if request.nice < os.getpriority(os.PRIO_PROCESS, 0):
        return False
    for number, (_soft, hard) in enumerate(request.limits):
        own = resource.getrlimit(number)[1]
        if own != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > own):
            return False
    return True


def _same_cgroup(pid: int) -> bool:
    """Is the client ``pid`` in this process's cgroups? A worker's containers are made and limited
    from where it runs: a zygote started elsewhere (another login session's scope, outside the
    subtree systemd delegates to the user) would give them another parent, or no limits at all."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as theirs, open("/proc/self/cgroup", "rb") as ours:
            return theirs.read() == ours.read()
    except OSError:  # gone already: it hears nothing either way
        return False


def _fresh_signals(mask: set[int | signal.Signals]) -> None:
    """In the worker: the signals a client sends take their course as in a fresh ``strata`` process,
    not as in this one (SIGTERM ends the zygote; one started under nohup ignores SIGHUP, and its
    workers would lose a client's hang-up); blocked since the fork, they come in now."""
    for sig in _CLIENT_SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _work(request: Request) -> int:
    """In the worker: become the client's command, run it, return its exit code."""
    for target, fd in enumerate(request.fds):
        os.dup2(fd, target)
    for fd in request.fds:
        if fd > 2:
            os.close(fd)
    for number, limit in enumerate(request.limits):
        resource.setrlimit(number, limit)
    os.setpriority(os.PRIO_PROCESS, 0, request.nice)
    if request.affinity:
        os.sched_setaffinity(0, request.affinity)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
    os.umask(request.umask)
    os.environ.clear()
    os.environ.update(request.env)
    sys.argv = ["strata", *request.argv]
    try:
        os.chdir(request.cwd)
    except OSError as e:
        print(f"strata: cannot enter {request.cwd}: {e.strerror}", file=sys.stderr)
        return 1
    from .cli import main

    try:
        return main(request.argv)
    except SystemExit as e:  # argparse: --help, usage errors
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1


def _await_order(order: socket.socket) -> tuple[Request, socket.socket] | None:
    """In a spare: copy the pages a command would write to first (a full collection writes every
    object's GC header), say so, then wait for the order as long as it takes; None if the zygote
    ends or drops us first."""
    gc.collect()
    try:
        order.sendall(_READY)
        waiting = select.poll()  # (select.select takes no fd above 1023)
        waiting.register(order, select.POLLIN)
        waiting.poll()
        request = _receive(order, nfds=4)
    except (OSError, ValueError):
        return None
    finally:
        order.close()
    conn = socket.socket(fileno=request.fds.pop(0))
    conn.settimeout(10)  # as an inline worker's, which the zygote received on
    return request, conn


class Zygote:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.workers: dict[int, _Worker] = {}  # by pidfd
        self.listener: socket.socket | None = None
        self.lock_fd: int | None = None
        self.sources: dict[str, int] = {}
        self.poller = select.poll()
        self.spare: _Spare | None = None
        self.spares = True  # off after a spare that could not be forked or died unused, until a request

    def claim(self) -> bool:
        """Take the lock; False if another zygote holds it."""
        fd = os.open(os.path.join(self.directory, "zygote.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def listen(self) -> None:
        path = os.path.join(self.directory, SOCKET_NAME)
        try:
            os.unlink(path)  # a dead zygote's; we hold the lock, so no live one listens there
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
        with open(os.path.join(self.directory, "zygote.pid.tmp"), "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(os.path.join(self.directory, "zygote.pid.tmp"), os.path.join(self.directory, "zygote.pid"))

    def stop_listening(self) -> None:
        """Let a new zygote take over: unlink the socket, then drop the lock."""
        if self.listener is not None:
            self.poller.unregister(self.listener)
            try:
                os.unlink(os.path.join(self.directory, SOCKET_NAME))
                os.unlink(os.path.join(self.directory, "zygote.pid"))
            except FileNotFoundError:
                pass
            self.listener.close()
            self.listener = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        self._drop_spare()

    def serve(self) -> None:
        assert self.listener is not None
        self.poller.register(self.listener, select.POLLIN)
        while self.listener is not None or self.workers:
            if self.spares and self.spare is None and self.listener is not None:
                self.spares = self._fork_spare()
            events = self.poller.poll(IDLE_SECONDS * 1000)
            if not events and not self.workers:
                break  # idle
            for fd, _mask in events:
                if self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                    self.spares = True
                elif fd in self.workers:
                    if self._reap(self.workers[fd]):
                        del self.workers[fd]
                elif self.spare is not None and fd == self.spare.order.fileno():
                    self._spare_spoke()
                else:
                    self._hang_up(fd)
        self.stop_listening()

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            peer, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != os.geteuid():
                raise ValueError("another user")
            request = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if (
            not _same_interpreter(request.executable)
            or warmup.changed(self.sources)
            or not _fits(request)
            or not _same_cgroup(peer)
        ):
            for fd in request.fds:
                os.close(fd)
            self._answer(conn, "stale")
            conn.close()
            self.stop_listening()  # the client starts a new zygote; this one ends with its workers
            return
        pid = (self._hand_over(request, conn) if _verb(request.argv) in _QUICK else None) or self._fork(request, conn)
        for fd in request.fds:
            os.close(fd)
        worker = _Worker(pid, os.pidfd_open(pid), conn)
        self.workers[worker.pidfd] = worker
        self.poller.register(worker.pidfd, select.POLLIN)
        self.poller.register(conn, select.POLLIN)  # the client sends nothing more: readable means gone
        self._answer(conn, f"pid {pid}")

    def _fork(self, request: Request, conn: socket.socket) -> int:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _CLIENT_SIGNALS)  # until the worker has its own
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
        if pid == 0:
            self._worker(held, lambda: (request, conn))
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return pid

    def _fork_spare(self) -> bool:
        """A worker ahead of its request (False if it could not be forked)."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError:
            return False
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _CLIENT_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            ours.close()
            theirs.close()
            return False
        if pid == 0:
            ours.close()
            self._worker(held, lambda: _await_order(theirs))
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        theirs.close()
        self.spare = _Spare(pid, ours)
        self.poller.register(ours, select.POLLIN)
        return True

    def _worker(
        self, held: set[int | signal.Signals], order: Callable[[], tuple[Request, socket.socket] | None]
    ) -> NoReturn:
        """In a fork: drop the zygote's fds, take the order (at once, or a spare's when it comes), run
        it as the client's command and tell the client its end."""
        code, conn = 1, None
        try:
            os.setsid()
            if self.listener is not None:
                self.listener.close()
            for worker in self.workers.values():
                os.close(worker.pidfd)
                worker.conn.close()
            if self.spare is not None:
                self.spare.order.close()
            if self.lock_fd is not None:
                os.close(self.lock_fd)
            _fresh_signals(held)  # (a spare a signal ends while it waits is replaced, not its command)
            got = order()
            if got is None:
                os._exit(0)
            request, conn = got
            code = _work(request)
        except BaseException:  # noqa: BLE001 - a bug: its traceback goes to the client's stderr
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            # tell the client now rather than through the zygote after this exit: tearing down
            # a process this size takes milliseconds. (A worker killed by a signal never gets
            # here: the zygote reports that.)
            if conn is not None:
                self._answer(conn, f"exit {code & 0xFF}")
            os._exit(code & 0xFF)

    def _hand_over(self, request: Request, conn: socket.socket) -> int | None:
        """The request to the spare, if one is ready: its pid (None: fork a worker now)."""
        spare = self.spare
        if spare is None or not spare.ready:
            return None
        fds = [conn.fileno(), *request.fds]
        rights = struct.pack(f"{len(fds)}i", *fds)
        try:
            sent = spare.order.sendmsg([request.raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        except OSError:  # it died waiting
            self._drop_spare()
            return None
        self.spare = None
        self.poller.unregister(spare.order)
        try:  # from here on it is the worker: never fork a second one for the same command
            if sent < len(request.raw):  # (sendall sends even nothing: EPIPE from a spare that has it all)
                spare.order.sendall(request.raw[sent:])
        except OSError:
            pass  # it ends on a truncated order; its end is reported as any worker's
        spare.order.close()
        return spare.pid

    def _spare_spoke(self) -> None:
        """The spare is ready, or gone (EOF): then reaped (another is forked after the next request)."""
        assert self.spare is not None
        try:
            said = self.spare.order.recv(1)
        except OSError:
            said = b""
        if said == _READY:
            self.spare.ready = True
        else:
            self._drop_spare()
            self.spares = False  # (killed: not at once again, in a loop)

    def _drop_spare(self) -> None:
        """Close the spare's socket (it ends at once, or after its collection) and reap it."""
        if self.spare is not None:
            spare, self.spare = self.spare, None
            self.poller.unregister(spare.order)
            spare.order.close()
            os.waitpid(spare.pid, 0)

    def _reap(self, worker: _Worker) -> bool:
        """Reap a worker that has ended; False if it has not (the event was another fd's, closed
        earlier in the same batch, whose number its pidfd took)."""
        pid, status = os.waitpid(worker.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.poller.unregister(worker.pidfd)
        os.close(worker.pidfd)
        code = os.waitstatus_to_exitcode(status)
        if not worker.hung_up:
            self.poller.unregister(worker.conn)
        if code < 0:  # killed by a signal: else the worker sent "exit CODE" itself as it ended
            self._answer(worker.conn, f"signal {-code}")
        worker.conn.close()
        return True

    def _hang_up(self, fd: int) -> None:
        """A client went away before its command ended: SIGHUP the command, as a closed terminal would.
        (Checked: an event polled for an fd closed since may belong to a new connection now.)"""
        for worker in self.workers.values():
            if worker.conn.fileno() == fd and not worker.hung_up:
                try:
                    if worker.conn.recv(4096, socket.MSG_DONTWAIT):
                        return  # bytes after the request: not ours to read, dropped; not a hang-up
                except BlockingIOError:
                    return
                except OSError:
                    pass  # reset: gone
                worker.hung_up = True
                self.poller.unregister(fd)
                try:
                    os.kill(worker.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _answer(conn: socket.socket, line: str) -> None:
        try:
            conn.sendall((line + "\n").encode())
        except OSError:
            pass


def main(argv: list[str]) -> int:
    directory = argv[0]
    if not private_dir(directory):
        return 1
    zygote = Zygote(directory)
    if not zygote.claim():
        return 0  # another zygote listens (or is starting)
    warmup.import_everything()
    warmup.warm()
    zygote.sources = warmup.sources()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        zygote.listen()
        zygote.serve()
    except SystemExit:
        pass
    finally:
        zygote.stop_listening()
    return 0


def _terminate(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # out of the poll loop, through stop_listening


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ``strata`` command's entry point: hand the command to a warm zygote, or run it here.

Starting Python and importing strata (trio, pyfuse3, the store) costs a few hundred milliseconds
per command; a container start is otherwise a few forks and mounts. So ``strata`` first asks the
user's *zygote* (``runner.zygote``: one long-lived process per user with everything imported) to run
the command in a fresh fork of itself, with this process's argv, cwd, umask, environment, CPU
affinity, niceness, resource limits and stdio (the three fds are passed over the socket). This
process stays as the command's face: it forwards signals to the fork and exits with its exit code
(or dies of the signal that killed it).

If there is no zygote yet, the command runs here, in this process, and a zygote is started in the
background for the next command. ``STRATA_NO_ZYGOTE=1`` always runs here.

On the way to a zygote this module imports only C modules (``_socket``, ``_signal``, ``resource``,
``termios``): ``socket``, ``signal`` and ``json`` import ``enum`` and ``re``, which would cost more than
the whole hand-over.
"""

from __future__ import annotations

import os
import sys

# The zygote's socket: one per user. The request: a 4-byte length, then NUL-separated fields.
SOCKET_NAME = "zygote.sock"
PROTOCOL = "strata-zygote-1"


def zygote_dir() -> str:
    """``$STRATA_ZYGOTE_DIR``, else ``/run/strata`` for root, ``$XDG_RUNTIME_DIR/strata`` or
    ``/tmp/strata-UID`` for others."""
    if os.environ.get("STRATA_ZYGOTE_DIR"):
        return os.environ["STRATA_ZYGOTE_DIR"]
    if os.geteuid() == 0:
        return "/run/strata"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "strata") if runtime else f"/tmp/strata-{os.geteuid()}"


def private_dir(path: str, heal: bool = False) -> bool:
    """Make ``path`` (0700) if it is missing; true if it is a real directory owned by us that no one
    else may enter (a socket in it is then ours). ``heal``: one no one else could write to is closed
    to them (our default place only: a directory the user named is theirs to set)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return False
    if st.st_mode & 0o077:  # ours and no one else could add to it (made by a makedirs, say)
        if not heal:
            return False
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return True


RLIMITS = 16  # RLIM_NLIMITS on Linux


def encode_request(argv: list[str]) -> bytes:
    import resource

    affinity = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    limits = ",".join(f"{soft}:{hard}" for soft, hard in (resource.getrlimit(i) for i in range(RLIMITS)))
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    fields = [
        PROTOCOL,
        sys.executable,
        os.getcwd(),
        str(_umask()),
        affinity,
        str(nice),
        limits,
        str(len(argv)),
        *argv,
        *(f"{k}={v}" for k, v in os.environ.items()),
    ]
    body = b"\0".join(os.fsencode(f) for f in fields)
    return len(body).to_bytes(4, "little") + body


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fill_closed_stdio() -> None:
    """A closed fd 0, 1 or 2 gets /dev/null (the command sees what it would have), before anything
    else can take that number: the zygote's socket would otherwise become the command's stdin."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)  # the lowest free number: this one


def _read_line(sock: object) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)  # type: ignore[attr-defined]
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def via_zygote(argv: list[str]) -> int | None:
    """Run ``argv`` in a fork of the zygote; None if there is none to ask (then run it here)."""
    import _signal
    import _socket

    directory = zygote_dir()
    if not private_dir(directory, heal=not os.environ.get("STRATA_ZYGOTE_DIR")):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.path.join(directory, SOCKET_NAME))
    except OSError:
        sock.close()
        start_zygote(directory)
        return None
    try:
        request = encode_request(argv)
    except OSError:  # e.g. a cwd that was removed: the command itself reports it, in this process
        sock.close()
        return None
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in [0, 1, 2])
    try:
        sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(request):  # sendall sends even nothing: to a zygote that has answered and hung up, EPIPE
            sock.sendall(request[sent:])
        answer = _read_line(sock)
    except OSError:
        answer = ""
    if answer.startswith(("exit ", "signal ")):
        # The worker ran the command and told its end before the zygote told its pid: both write
        # to this socket. The command ran: it must not run again here.
        sock.close()
        return _ended(answer)
    if not answer.startswith("pid "):  # a zygote that is stale (code changed) or going away
        sock.close()
        if answer == "stale":
            start_zygote(directory)
        return None
    pid = int(answer[4:])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    for signum in (
        _signal.SIGINT,
        _signal.SIGTERM,
        _signal.SIGHUP,
        _signal.SIGQUIT,
        _signal.SIGUSR1,
        _signal.SIGUSR2,
        _signal.SIGWINCH,
    ):
        _signal.signal(signum, forward)
    saved = _save_terminal()
    try:
        done = _read_line(sock)
    finally:
        _restore_terminal(saved)
    return _ended(done)


def _ended(done: str) -> int:
    """The exit code for the zygote's last word on a command: ``exit CODE`` or ``signal N`` (then
    this process dies of it, as if it had been the command)."""
    import _signal

    if done.startswith("exit "):
        return int(done[5:])
    if done.startswith("signal "):
        signum = int(done[7:])
        if signum not in (_signal.SIGKILL, _signal.SIGSTOP):
            _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    print("strata: the zygote went away before the command ended", file=sys.stderr)
    return 125


def _save_terminal() -> object:
    """The terminal's modes, put back however the command ends (``run -t`` makes it raw)."""
    if not os.isatty(0):
        return None
    import termios

    try:
        return termios.tcgetattr(0)
    except termios.error:
        return None


def _restore_terminal(saved: object) -> None:
    if saved is not None:
        import termios

        try:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)  # type: ignore[arg-type]
        except termios.error:
            pass


def start_zygote(directory: str) -> None:
    """Start a zygote in the background for the next command (it exits if one is already there)."""
    import subprocess

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    try:
        subprocess.Popen(
            [sys.executable, "-m", "runner.zygote", directory],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _fill_closed_stdio()
    if os.environ.get("STRATA_NO_ZYGOTE") != "1":
        code = via_zygote(args)
        if code is not None:
            os._exit(code)  # nothing of ours to clean up: skip the interpreter's few ms of shutdown
    from runner.cli import main as run_here

    return run_here(args)


if __name__ == "__main__":
    sys.exit(main())

"""The in-container init, run in a single-threaded process that has never run a trio loop nor served
FUSE: a fork, not a fresh interpreter (a fork costs a millisecond, an interpreter and its imports
about a hundred).

    create (``forked``)  the supervisor forks before its trio loop starts: unshare, fork PID 1, set
                         it up from the container's config.json (``runner.oci``), exec the command
    spawn                create's first half, which ``strata-oci create`` runs in its own process:
                         PID 1 forked and in its cgroup, nothing left waiting for it (the caller's
                         subreaper inherits it); it parks on ``exec.fifo`` before exec
    join                 ``strata exec`` / ``strata-oci exec`` fork: join a running container's
                         namespaces, then exec (``detach``: return once it is forked)

``spec`` says what to run: for ``create``, ``spec["config"]`` is the runtime-spec config (its
process, root, mounts, hostname and linux namespaces) and the rest is the runtime's (the status and
go-ahead pipes, the cgroup, the prepared seccomp filter); ``status_fd`` gets ``pid N`` once PID 1
exists and ``error CODE MESSAGE`` if it cannot exec (126: cannot run, 127: not found, as Docker).
This helper stays outside the new PID namespace, moves PID 1 into the container's cgroup, and exits
with PID 1's status; the supervisor signals PID 1 directly.

PID 1's set-up, in order (runc's): its mount namespace; the root (``oci.rootfs``: the mounts, /dev,
pivot_root, masked and read-only paths); hostname; loopback up; new session (and the pty as
controlling terminal); a fresh session keyring; user; the capability sets; no_new_privs; every other
fd closed; chdir (checked with getcwd); the seccomp filter (a ``seccomp.Filter`` the parent prepared)
and exec. ``exec``'s join does the same from the session on. Until exec the process is not dumpable,
so nothing in the container can reach the host's interpreter through /proc/PID/exe.
"""

from __future__ import annotations

import _signal  # (``signal``'s enums import ``enum``: ~5 ms of a strata-oci create)
import _socket  # (sethostname, the loopback's ioctl: ``socket`` imports ``enum`` and ``selectors``, ~7 ms)
import errno
import fcntl
import os
import struct
import termios

from . import credentials, userns
from . import syscalls as sc
from .credentials import SetupFailed as SetupFailed  # what spawn raises
from .oci import rootfs
from .oci.spec import INIT_ANNOTATION, USER_ANNOTATION

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from collections.abc import Callable
    from typing import Any, NoReturn

_TIOCGPTN = 0x80045430  # <asm-generic/ioctls.h>: _IOR('T', 0x30, unsigned int)
_NAMESPACE_FLAGS = {"uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC, "pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET}


_Fail = SetupFailed  # what ``spawn`` raises: str() says why, ``code`` is 125, 126 or 127


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass


def _mkdirs(path: str) -> None:
    # look first: on FUSE, mkdir of a name that exists costs a forced lookup round trip each time
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def _close_fds(first: int, keep: set[int]) -> None:
    """Close every fd from ``first`` on but those in ``keep``."""
    for fd in sorted(k for k in keep if k >= first):
        os.closerange(first, fd)
        first = fd + 1
    os.closerange(first, 65536)


_parked = False  # past the exec fifo: the runtime that waited for us is gone; errors go to stderr


def _park(fifo: int, status_fd: int, on_start: Callable[[], None] | None = None) -> None:
    """runc's exec fifo: everything is set up; say so, then wait until ``start`` opens the fifo
    (``fifo`` is an ``O_PATH`` fd of it, opened before pivot_root) and write it one byte. A signal
    meanwhile ends the process (PID 1 of a namespace ignores those it has no handler for).
    ``on_start`` (startContainer hooks) runs once start has opened it; its failure goes to start
    as ``1`` and the message instead of ``0``. The fd stays open to the exec, which closes it."""
    global _parked
    parked_signals = (
        _signal.SIGTERM,
        _signal.SIGINT,
        _signal.SIGHUP,
        _signal.SIGQUIT,
        _signal.SIGUSR1,
        _signal.SIGUSR2,
    )
    for sig in parked_signals:
        _signal.signal(sig, lambda signum, _frame: os._exit(128 + signum))
    _report(status_fd, "parked")
    os.dup2(2, status_fd)  # the creator stops reading: a later failure is the container's stderr's
    _parked = True
    try:
        fd = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _Fail(125, f"cannot open the exec fifo: {e.strerror} (no /proc in the container?)") from None
    if on_start is not None:
        try:
            on_start()
        except _Fail as e:
            os.write(fd, b"1" + str(e).encode()[:4000])
            raise
    os.write(fd, b"0")
    os.close(fifo)
    for sig in parked_signals:
        _signal.signal(sig, _signal.SIG_DFL)


def _default_signals() -> None:
    """Every signal to its default action and none blocked before exec, which keeps an ignored one
    ignored and the mask as it is: Python ignores SIGPIPE and SIGXFSZ, a client under ``nohup``
    SIGHUP, a client may block what it likes; a container's command starts clean, as under runc."""
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGQUIT):
        _signal.signal(sig, _signal.SIG_DFL)
    for number in sc.ignored_signals():  # by the kernel's count: 32 and 33 are the C library's own
        sc.set_signal_action(number, ignore=False)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])  # a signal pending meanwhile acts now, by default


def _find(cmd: str, env: list[str]) -> str:
    if "/" in cmd:
        if not os.path.exists(cmd):
            raise _Fail(127, f'exec: "{cmd}": stat {cmd}: no such file or directory')
        return cmd
    path = next(
        (e[5:] for e in env if e.startswith("PATH=")), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    for d in path.split(":"):
        full = os.path.join(d or ".", cmd)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return full
    raise _Fail(127, f'exec: "{cmd}": executable file not found in $PATH')


def _exec(spec: dict[str, Any], status_fd: int) -> None:
    """The last steps, in the container: session, limits, user, caps, fds, cwd, (the exec fifo,)
    exec."""
    os.setsid()
    if spec.get("tty"):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    args, env = spec["args"], spec["env"]
    if not args:
        raise _Fail(126, "no command specified")
    cwd = spec.get("cwd") or "/"
    _mkdirs(cwd)
    sc.join_session_keyring()  # never the host's (the filter denies keyctl; unconfined, this one)
    credentials.set_limits(spec)
    seccomp = spec.get("seccomp")
    if seccomp is not None and not spec.get("no_new_privs", True):
        # without no_new_privs the kernel takes a filter only from CAP_SYS_ADMIN: load it while we
        # still have it (runc does the same); what is left of the set-up runs under it
        seccomp.load()
        seccomp = None
    user = credentials.lookup_user(spec.get("user") or "0")
    if not any(e.startswith("HOME=") for e in env):  # from the image's passwd, as Docker (runc) sets it
        env = [*env, f"HOME={user[3]}"]
    credentials.drop_privileges(spec, user)
    park = spec.get("park")
    _close_fds(3 + int(spec.get("preserve_fds") or 0), {status_fd, *([park] if park is not None else [])})
    os.chdir(cwd)
    if os.path.realpath(os.getcwd()) != os.path.realpath(cwd):
        raise _Fail(126, f"working directory {cwd} is not reachable")
    binary = _find(args[0], env)
    if park is not None:
        _park(park, status_fd, spec.get("on_start"))
    _default_signals()
    if seccomp is not None:  # last, as runc: after no_new_privs, right before exec
        seccomp.load()
    if spec.get("init"):  # --init: this process stays, as PID 1's reaper; its child execs
        from . import reaper  # (imported by ``spawn``: only --init's PID 1 stays on as a reaper)

        reaper.fork_command(bool(spec.get("tty")), status_fd)
    try:
        os.execve(binary, args, dict(e.split("=", 1) for e in env if "=" in e))
    except PermissionError:
        raise _Fail(126, f'exec: "{args[0]}": permission denied') from None
    except OSError as e:
        raise _Fail(126 if e.errno != errno.ENOENT else 127, f'exec: "{args[0]}": {e.strerror}') from None


def _join_cgroup(fds: list[int], pid: int = 0) -> None:
    """Move ``pid`` (0: this process) into the container's cgroup, keeping its CPU affinity (the
    client's) where the cgroup's cpus allow it: before Linux 6.2, a move into a cgroup v2 cpuset
    resets it to the cpuset's."""
    affinity = os.sched_getaffinity(pid) if fds else set()
    for fd in fds:
        os.write(fd, str(pid).encode())
        os.close(fd)
    if fds and os.sched_getaffinity(pid) != affinity:
        try:
            os.sched_setaffinity(pid, affinity)
        except OSError:  # none of them in the container's cpuset (--cpuset-cpus): the cpuset's
            pass


def _child(status_fd: int, setup_failure: int, steps: Callable[[], None]) -> NoReturn:
    """Run the child's steps up to exec; report a failure on the status pipe and exit with its code."""
    try:
        steps()
        raise _Fail(setup_failure, "exec returned")
    except _Fail as e:
        _report(status_fd, f"strata-oci: {e}" if _parked else f"error {e.code} {e}")
        os._exit(e.code)
    except BaseException as e:  # noqa: BLE001 - an OSError, or a bug: said, never unwound into the parent's code
        what = e if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        _report(
            status_fd,
            f"strata-oci: container set-up failed: {what}"
            if _parked
            else f"error {setup_failure} container set-up failed: {what}",
        )
        os._exit(setup_failure)


_JOINABLE = {"network": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS, "pid": sc.CLONE_NEWPID}


def _namespaces(config: dict[str, Any]) -> set[str]:
    """The namespace types the config asks to be made new."""
    return {ns["type"] for ns in (config.get("linux") or {}).get("namespaces") or [] if not ns.get("path")}


def _joined_namespaces(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, path) of the namespaces the config joins (a pod's network, say): network, ipc, uts
    and pid only, for now."""
    joined = []
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("path"):
            if ns["type"] not in _JOINABLE:
                raise _Fail(125, f"joining the {ns['type']} namespace at {ns['path']} is not supported yet")
            joined.append((ns["type"], ns["path"]))
    return joined


def _join_by_path(joined: list[tuple[str, str]]) -> None:
    for kind, path in joined:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _Fail(125, f"cannot open the {kind} namespace {path}: {e.strerror}") from None
        try:
            sc.setns(fd, _JOINABLE[kind])  # the type is checked: a path to another kind is refused
        except OSError as e:
            raise _Fail(125, f"cannot join the {kind} namespace {path}: {os.strerror(e.errno or 0)}") from None
        finally:
            os.close(fd)


def _init_wanted(config: dict[str, Any]) -> bool:
    """``--init``: PID 1 stays on as strata's reaper, the command its child."""
    return (config.get("annotations") or {}).get(INIT_ANNOTATION) == "true"


def _process(spec: dict[str, Any]) -> dict[str, Any]:
    """What ``_exec`` runs, from the config's ``process``: a user name (``io.strata.user``) is looked
    up in the container's /etc/passwd, as Docker's daemon does; numbers are taken as they are."""
    config = spec["config"]
    process = config["process"]
    user = (config.get("annotations") or {}).get(USER_ANNOTATION)
    if user is None:
        ids = process.get("user") or {}
        user = f"{ids.get('uid', 0)}:{ids.get('gid', 0)}"
        if ids.get("additionalGids"):
            user += ":" + ",".join(str(g) for g in ids["additionalGids"])
    return {
        "args": process.get("args") or [],
        "env": process.get("env") or [],
        "cwd": process.get("cwd") or "/",
        "user": user,
        "tty": bool(process.get("terminal")),
        "capabilities": process.get("capabilities"),
        "no_new_privs": bool(process.get("noNewPrivileges")),
        "seccomp": spec.get("seccomp"),
        "rlimits": process.get("rlimits"),
        "oom_score_adj": process.get("oomScoreAdj"),
        "park": spec.get("fifo_fd"),
        "on_start": spec.get("on_start"),
        "preserve_fds": spec.get("preserve_fds", 0),
        "umask": (process.get("user") or {}).get("umask"),
        "init": _init_wanted(config),
    }


def _pid1(spec: dict[str, Any], status_fd: int, go_fd: int, joined_fd: int) -> None:
    if spec.get("die_with_parent", True):  # (strata-oci's PID 1 outlives the ``create`` that made it)
        sc.prctl(sc.PR_SET_PDEATHSIG, _signal.SIGKILL)
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    if os.read(go_fd, 2) != b"go":  # the supervisor gave up (no mount): exit quietly
        os._exit(125)
    os.close(go_fd)
    config = spec["config"]
    namespaces = _namespaces(config)
    if "mount" in namespaces:  # a mount namespace copies the mounts there are: now the union's exists
        sc.unshare(sc.CLONE_NEWNS)
    console = spec.get("console_fd")
    master = rootfs.setup(config, console=console is not None, before_pivot=spec.get("before_pivot"))
    if console is not None and master is not None:  # the pty master to whoever holds the console socket
        send_console(console, master)
        os.close(master)
    if console is not None:
        os.close(console)
    if "uts" in namespaces:
        _socket.sethostname(config.get("hostname") or "localhost")
    if "network" in namespaces:
        _loopback_up()
    if os.read(joined_fd, 2) != b"in":  # the helper could not move us into the cgroup
        os._exit(125)
    os.close(joined_fd)
    if "cgroup" in namespaces:
        sc.unshare(sc.CLONE_NEWCGROUP)  # rooted where PID 1 is now: the container's group
    _exec(_process(spec), status_fd)


def _wait_child(pid: int, status_fd: int) -> int:
    """The helper's part once the child runs: wait and pass on its status. When the supervisor dies
    (this process's parent-death signal, SIGUSR1) PID 1 gets SIGKILL, and its PID namespace with it:
    the container's own processes could clear their parent-death signals, but cannot reach this one."""
    os.close(status_fd)
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
    _signal.signal(_signal.SIGUSR1, lambda _sig, _frame: _kill(pid))
    if sc.parent_death_signal() and not _parent_alive():
        _kill(pid)  # the supervisor died before the handler was in place
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return 125
    return exit_code(status)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass


_supervisor = 0  # the helper's parent, once known (``forked``)


def _parent_alive() -> bool:
    return os.getppid() == _supervisor


def exit_code(status: int) -> int:
    """A wait status as a shell (and Docker) reports it: the exit code, or 128 + N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def spawn(spec: dict[str, Any], go_fd: int, keep_stdio: bool = False) -> int:
    """Unshare and fork PID 1 at once, and move it into the cgroup: moving a process between v1
    cgroups waits for an RCU grace period (5-20 ms here), which overlaps with the supervisor's wait
    for the union mount and PID 1's set-up of its root. PID 1 waits for the go-ahead on ``go_fd``
    and for this process's word that it is in the cgroup. Returns PID 1's pid (our child); raises
    ``_Fail`` with nothing left running. This process is in the container's new user namespace and
    its uts/ipc/net ones afterwards (fork it, or let it end soon: strata-oci's ``create`` ends)."""
    status_fd = spec["status_fd"]
    cgroup_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.get("cgroup_procs", [])]
    config = spec["config"]
    namespaces = _namespaces(config)
    joined = _joined_namespaces(config)
    if "user" in namespaces:  # first: the namespaces made after it are its own, and so are their mounts
        try:
            userns.enter(config)
        except OSError as e:
            raise _Fail(125, f"cannot make the container's user namespace: {e.strerror or e}") from None
        # and a mount namespace it owns, where a rootless union daemon joins us to mount with
        # allow_other; PID 1's own (made after the go-ahead) is a copy of it, the union mount in it
        sc.unshare(sc.CLONE_NEWNS)
    _join_by_path(joined)
    flags = 0  # the mount and cgroup namespaces: PID 1's, later
    for kind in namespaces:
        flags |= _NAMESPACE_FLAGS.get(kind, 0)
    sc.unshare(flags)
    if spec.get("announce_namespaces"):  # the supervisor may use them now (the network, a rootless
        _report(status_fd, "ns")  # union mount) while PID 1 is forked and moved into its cgroup
    if _init_wanted(config):
        from . import reaper  # noqa: F401 - now: PID 1 needs it past pivot_root, out of the package's reach
    joined_r, joined_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(joined_w)
        _child(status_fd, 125, lambda: _pid1(spec, status_fd, go_fd, joined_r))
    for fd in (joined_r, go_fd, *(() if keep_stdio else (0, 1, 2))):  # (none of the container's stdio)
        os.close(fd)
    try:
        _join_cgroup(cgroup_fds, pid)
    except OSError as e:
        os.close(joined_w)
        _kill(pid)
        os.waitpid(pid, 0)
        raise _Fail(125, f"cannot move the container into its cgroup: {e}") from None
    try:
        os.write(joined_w, b"in")
    except BrokenPipeError:  # PID 1 failed already: its report is on the status pipe
        pass
    os.close(joined_w)
    return pid


def create(spec: dict[str, Any], go_fd: int) -> int:
    """``spawn`` PID 1, report its pid on the status pipe, wait for it and return its status."""
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    try:
        pid = spawn(spec, go_fd)
    except _Fail as e:
        _report(status_fd, f"error {e.code} {e}")
        return e.code
    _report(status_fd, f"pid {pid}")
    return _wait_child(pid, status_fd)


def join(spec: dict[str, Any]) -> int:
    """``strata exec``: enter the namespaces of a running container's PID 1, then run a command."""
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    target = spec["pid"]
    # opened before entering the container's mount namespace, where the host's cgroupfs is not mounted
    cgroup_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.get("cgroup_procs", [])]
    fds = []
    # a rootless container's user namespace first: its other namespaces are its own
    user = [] if os.stat(f"/proc/{target}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino else ["user"]
    for ns in (*user, "ipc", "uts", "net", "pid", "cgroup", "mnt"):
        fds.append(os.open(f"/proc/{target}/ns/{ns}", os.O_RDONLY))
    for fd in fds:
        sc.setns(fd)
        os.close(fd)

    def steps() -> None:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        _join_cgroup(cgroup_fds)
        os.chdir("/")
        _exec(spec, status_fd)

    pid = os.fork()
    if pid == 0:
        _child(status_fd, 126, steps)
    for fd in cgroup_fds:
        os.close(fd)
    _report(status_fd, f"pid {pid}")
    if spec.get("detach"):  # strata-oci ``exec -d``: the command goes to the caller's subreaper
        return 0
    return _wait_child(pid, status_fd)


def send_console(sock_fd: int, master: int) -> None:
    """runc's console socket protocol: one message whose cmsg carries the pty master (SCM_RIGHTS)
    and whose payload is the pty's name. (``_socket`` alone: PID 1 sends it past pivot_root, where
    no module not imported already can be.)"""
    sock = _socket.socket(fileno=os.dup(sock_fd))
    try:
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        name = f"/dev/pts/{number}"
        sock.sendmsg([name.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))])
    finally:
        sock.close()


def forked(spec: dict[str, Any], stdio: tuple[int, int, int], go_fd: int) -> NoReturn:
    """The init as a fork of the (single-threaded) supervisor rather than a fresh interpreter: take
    the container's stdio, keep only the status and go-ahead pipes, and ``create``. Never returns: no
    exit handler of the parent may run here."""
    code = 125
    try:
        # told when the supervisor dies (SIGUSR1: ``_wait_child`` then kills PID 1): a container never
        # outlives the process that records its state. Checked after: the supervisor may be gone.
        global _supervisor
        _supervisor = spec["supervisor"]
        _signal.signal(_signal.SIGUSR1, lambda _sig, _frame: os._exit(125))  # until PID 1 exists
        sc.prctl(sc.PR_SET_PDEATHSIG, _signal.SIGUSR1)
        if not _parent_alive():
            os._exit(code)
        os.setsid()
        os.chdir("/")
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in stdio]  # out of dup2's way
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        low = 3
        for fd in sorted({spec["status_fd"], go_fd, *([spec["console_fd"]] if "console_fd" in spec else [])}):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 65536)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        code = create(spec, go_fd)
    finally:
        os._exit(code)

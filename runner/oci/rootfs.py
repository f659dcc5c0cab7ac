"""A container's root from its config.json, in PID 1 before pivot_root (runc's ``rootfs_linux.go``):
the mounts in order, the default device nodes and ``linux.devices`` in a /dev the runtime mounted,
/dev/console for a terminal, pivot_root, then masked and read-only paths.

Every destination is resolved inside the root: symlinks and ``..`` are followed as if the root were
``/`` (``resolve_in_root``, as filepath-securejoin; ``openat2(RESOLVE_IN_ROOT)`` where the kernel
does it), and the mount goes onto the resolved object through its ``/proc/self/fd`` name (runc's
``mountViaFds``). A container that made its /etc a
symlink to a host directory in an earlier run cannot have this start create or mount anything there.
Missing mountpoints are made inside the root (directories, or an empty file for a file bind).

Caveats: mount options ``idmap`` and ``ridmap`` are refused; ``rootfsPropagation`` other than
private/slave/shared is refused; a ``cgroup`` mount is an empty read-only tmpfs (the cgroup
namespace is made after the root, and a cgroupfs mounted before would show the host's tree).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import termios

from .. import syscalls as sc
from ..errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from collections.abc import Callable
    from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_O_PATH = 0o10000000

# runc's mount option table (libcontainer/specconv): name -> (clear, flag)
_FLAGS = {
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, 0x10),
    "async": (True, 0x10),
    "dirsync": (False, 0x80),
    "mand": (False, 0x40),
    "nomand": (True, 0x40),
    "noatime": (False, 0x400),
    "atime": (True, 0x400),
    "nodiratime": (False, 0x800),
    "diratime": (True, 0x800),
    "relatime": (False, 0x200000),
    "norelatime": (True, 0x200000),
    "strictatime": (False, 0x1000000),
    "nostrictatime": (True, 0x1000000),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
}
_PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "shared": 0x100000,
    "rshared": 0x100000 | sc.MS_REC,
    "unbindable": 0x20000,
    "runbindable": 0x20000 | sc.MS_REC,
}
_BIND_ATTRS = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | 0x400 | 0x800 | 0x200000 | 0x1000000

# the nodes runc makes in a /dev it mounted (libcontainer/configs/devices AllowedDevices' nodes)
ROOT_SUID = "io.strata.root-suid"  # annotation: the root's copy in the container honours setuid bits
DEFAULT_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
    ("ptmx", "pts/ptmx"),
)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int = _O_PATH) -> int:
    """``path`` opened as if ``root_fd`` were ``/`` (symlinks and ``..`` cannot leave it)."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2, root_fd, os.fsencode(path.lstrip("/") or "."), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def resolve_in_root(root_fd: int, path: str) -> str:
    """``path`` with its symlinks followed as if ``root_fd`` were ``/`` (an absolute target restarts
    at the root, ``..`` stops there), as filepath-securejoin's SecureJoin: the path, relative to the
    root, of what ``path`` names or would name once made. Each resolved component is a real
    directory when the next is read (nothing in the container runs while its root is made)."""
    done: list[str] = []
    pending = [p for p in reversed(path.split("/")) if p]
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink("/".join([*done, part]), dir_fd=root_fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                raise
            done.append(part)  # not a symlink (or not there yet: made as a directory)
            continue
        hops += 1
        if hops > 40:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        if target.startswith("/"):
            done = []
        pending.extend(p for p in reversed(target.split("/")) if p)
    return "/".join(done)


def make_in_root(root_fd: int, path: str, directory: bool) -> tuple[int, str]:
    """An ``O_PATH`` fd of ``path`` inside the root, made (with its missing parents) if absent: a
    directory, or an empty file; and the path it resolved to (relative to the root)."""
    resolved = resolve_in_root(root_fd, path)
    parts = resolved.split("/") if resolved else []
    parent = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(part, flags, dir_fd=parent)
            except FileNotFoundError:
                if last and not directory:
                    os.close(
                        os.open(
                            part,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o644,
                            dir_fd=parent,
                        )
                    )
                else:
                    os.mkdir(part, 0o755, dir_fd=parent)
                fd = os.open(part, flags, dir_fd=parent)
            os.close(parent)
            parent = fd
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # changed under us since it was resolved
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        return parent, resolved
    except BaseException:
        os.close(parent)
        raise


def parse_options(options: list[str]) -> tuple[int, int, int, str]:
    """(flags, flags to clear, propagation, data) of a mount's options, as runc reads them."""
    flags = clear = propagation = 0
    data = []
    for option in options:
        if option in _FLAGS:
            off, bit = _FLAGS[option]
            if off:
                clear |= bit
                flags &= ~bit
            else:
                flags |= bit
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        elif option in ("idmap", "ridmap"):
            raise RunnerError(f"mount option {option} is not supported by strata")
        else:
            data.append(option)
    return flags, clear, propagation, ",".join(data)


def mount_options() -> list[str]:
    """Every mount option this module reads as a flag (others go to the filesystem as data)."""
    return [*_FLAGS, *_PROPAGATION]


def _mount_one(root_fd: int, m: dict[str, Any]) -> None:
    kind, source, dest = m.get("type") or "", m.get("source") or "", m["destination"]
    if kind == "cgroup":
        # the cgroup namespace is unshared after the root is made: a cgroupfs mounted now would show
        # the host's tree. An empty read-only directory stands in (nothing reads it to run).
        kind, source, m = "tmpfs", "cgroup", {**m, "options": ["ro", "nosuid", "nodev", "noexec", "mode=755"]}
    flags, _clear, propagation, data = parse_options(list(m.get("options") or []))
    bind = bool(flags & sc.MS_BIND) or kind == "bind"
    directory = not bind or os.path.isdir(source)
    target, resolved = make_in_root(root_fd, dest, directory)
    try:
        if bind:
            sc.mount(source, f"/proc/self/fd/{target}", None, sc.MS_BIND | (flags & sc.MS_REC))
        else:
            sc.mount(source or kind, f"/proc/self/fd/{target}", kind, flags, data or None)
        if (bind and flags & _BIND_ATTRS) or propagation:
            # the fd still names what is under the new mount: look the mount itself up again
            os.close(target)
            target = open_in_root(root_fd, resolved)
            if bind and flags & _BIND_ATTRS:  # a bind takes its attributes in a remount
                _remount_bind(f"/proc/self/fd/{target}", flags & _BIND_ATTRS)
            if propagation:
                sc.mount("", f"/proc/self/fd/{target}", None, propagation)
    except OSError as e:
        raise OSError(e.errno, f"mount {kind or 'bind'} on {dest}: {os.strerror(e.errno or errno.EIO)}") from None
    finally:
        os.close(target)


# statvfs flags -> the mount flags a remount must repeat when the mount's are locked (its source
# was mounted in a more privileged user namespace): nosuid, nodev, noexec and the atime flags
_LOCKED = (
    (os.ST_NOSUID, sc.MS_NOSUID),
    (os.ST_NODEV, sc.MS_NODEV),
    (os.ST_NOEXEC, sc.MS_NOEXEC),
    (os.ST_NOATIME, 0x400),
    (os.ST_NODIRATIME, 0x800),
    (os.ST_RELATIME, 0x200000),
)


def _remount_bind(path: str, flags: int) -> None:
    """Give a bind mount ``flags`` (ro, nosuid...). In a user namespace the kernel refuses (EPERM) a
    remount that would clear the flags locked on the source's mount: then again with those kept,
    as runc does."""
    try:
        sc.mount("", path, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
    except PermissionError:
        have = os.statvfs(path).f_flag
        locked = 0
        for st_flag, ms_flag in _LOCKED:
            if have & st_flag:
                locked |= ms_flag
        sc.mount("", path, None, sc.MS_BIND | sc.MS_REMOUNT | flags | locked)


def _populate_dev(root_fd: int, config: dict[str, Any]) -> None:
    """The default nodes and links in a /dev tmpfs the config mounted, its ``linux.devices``, and
    /dev/console bound to the terminal (fd 0) when ``process.terminal``."""
    dev = open_in_root(root_fd, "/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, (major, minor) in DEFAULT_DEVICES.items():
            _node(dev, name, stat.S_IFCHR | 0o666, major, minor, 0, 0, f"/dev/{name}")
        for name, target in _DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)
    for node in (config.get("linux") or {}).get("devices") or []:
        path = node["path"]
        parent, _ = make_in_root(root_fd, os.path.dirname(path), True)
        try:
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[node["type"]]
            _node(
                parent,
                os.path.basename(path),
                kind | node.get("fileMode", 0o666),
                node.get("major", 0),
                node.get("minor", 0),
                node.get("uid", 0),
                node.get("gid", 0),
                path,
            )
        finally:
            os.close(parent)
    if (config.get("process") or {}).get("terminal"):
        console, _ = make_in_root(root_fd, "/dev/console", False)
        try:
            # the pty by its path (a host pty's fd belongs to the mount namespace it was opened in,
            # which a bind refuses; os.ttyname gives up on a path longer than 32 bytes)
            sc.mount(os.readlink("/proc/self/fd/0"), f"/proc/self/fd/{console}", None, sc.MS_BIND)
        finally:
            os.close(console)


def _node(dir_fd: int, name: str, mode: int, major: int, minor: int, uid: int, gid: int, host: str) -> None:
    try:
        os.mknod(name, mode, os.makedev(major, minor), dir_fd=dir_fd)
        os.chmod(name, stat.S_IMODE(mode), dir_fd=dir_fd, follow_symlinks=False)
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except PermissionError:  # no mknod (a user namespace): bind the host's node, as runc and bubblewrap do
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd))
        fd = open_in_root(dir_fd, name)
        try:
            sc.mount(host, f"/proc/self/fd/{fd}", None, sc.MS_BIND)
        finally:
            os.close(fd)


TIOCSPTLCK = 0x40045431  # <asm-generic/ioctls.h>: _IOW('T', 0x31, int)
TIOCGPTPEER = 0x5441  # _IO('T', 0x41), Linux >= 4.13: open the slave of a master by fd, not by path
PTMX = os.makedev(5, 2)


def pty_of(ptmx: int) -> tuple[int, int]:
    """(master, slave) of a new pty of the devpts instance whose ``ptmx`` node is open (O_RDWR) as
    ``ptmx``, which becomes the master. Closes it and raises OSError if it is not a ptmx."""
    try:
        st = os.fstat(ptmx)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX:
            raise OSError(errno.ENOTTY, "not a ptmx")
        fcntl.ioctl(ptmx, TIOCSPTLCK, b"\0\0\0\0")  # unlockpt
        slave = fcntl.ioctl(ptmx, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        os.close(ptmx)
        raise
    return ptmx, slave


def _console(root_fd: int, config: dict[str, Any]) -> int:
    """The container's terminal, as runc makes it: a pty of the root's own devpts (so the command
    finds it as /dev/pts/N) or, with no devpts there, a host one; its slave becomes fds 0-2 and
    takes ``process.consoleSize``. Returns the master."""
    try:
        master, slave = pty_of(open_in_root(root_fd, "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        master, slave = os.openpty()
    size = (config.get("process") or {}).get("consoleSize") or {}
    if size.get("height") and size.get("width"):
        termios.tcsetwinsize(slave, (int(size["height"]), int(size["width"])))
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    os.set_inheritable(master, False)
    return master


_IPC_SYSCTLS = {
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
}


def check_sysctl(config: dict[str, Any], key: str) -> None:
    """A sysctl the container may set: one that belongs to a namespace of its own (runc's list:
    the IPC ones, fs.mqueue.*, net.* with a network namespace, kernel.hostname/domainname with a uts
    namespace). Anything else would change the host: refused."""
    kinds = {ns.get("type") for ns in (config.get("linux") or {}).get("namespaces") or []}
    if "/" in key or ".." in key:
        raise RunnerError(f"sysctl {key!r} is not a sysctl name")
    if (key in _IPC_SYSCTLS or key.startswith("fs.mqueue.")) and "ipc" in kinds:
        return
    if key.startswith("net.") and "network" in kinds:
        return
    if key in ("kernel.hostname", "kernel.domainname") and "uts" in kinds:
        return
    raise RunnerError(f"sysctl {key} is not in a namespace of the container's own: refused")


def setup(config: dict[str, Any], console: bool = False, before_pivot: Callable[[], None] | None = None) -> int | None:
    """Make the root (mounts, /dev), pivot into it and apply the masks. Runs in PID 1, in its new
    mount namespace, before anything of the container runs. ``console`` (strata-oci's console
    socket) with ``process.terminal``: make the pty here, as fds 0-2, and return its master.
    ``before_pivot``: called with the mounts made, before pivot_root (the create-time hooks)."""
    root = config["root"]["path"]
    propagation = (config.get("linux") or {}).get("rootfsPropagation") or "rprivate"
    if propagation not in _PROPAGATION:
        raise RunnerError(f"rootfsPropagation {propagation} is not supported by strata")
    sc.mount("", "/", None, _PROPAGATION[propagation] | sc.MS_REC)
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    if (config.get("annotations") or {}).get(ROOT_SUID) == "true":
        # a union mounted by libfuse is nosuid; this mount namespace's copy of it takes setuid bits
        # (as a Docker container's root does; the host's view of the union stays nosuid)
        sc.mount("", root, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NODEV)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    master = None
    try:
        dev_mounted = False
        for m in config.get("mounts") or []:
            _mount_one(root_fd, m)
            dev_mounted |= m["destination"].rstrip("/") == "/dev" and m.get("type") == "tmpfs"
        if console and (config.get("process") or {}).get("terminal"):
            master = _console(root_fd, config)
        if dev_mounted:
            _populate_dev(root_fd, config)
    finally:
        os.close(root_fd)
    if before_pivot is not None:
        before_pivot()
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    linux = config.get("linux") or {}
    for key, value in (linux.get("sysctl") or {}).items():  # /proc/sys is still writable: before the masks
        check_sysctl(config, key)
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
        except OSError as e:
            raise OSError(e.errno, f"sysctl {key}={value}: {os.strerror(e.errno or errno.EIO)}") from None
    for path in linux.get("maskedPaths") or []:
        if os.path.isdir(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
        elif os.path.exists(path):
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    for path in linux.get("readonlyPaths") or []:
        if os.path.exists(path):
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT | sc.MS_RDONLY)
    if (config.get("root") or {}).get("readonly"):
        sc.mount("", "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    return master

"""The one seam for Linux syscalls Python's ``os`` lacks: mount, umount2, pivot_root, unshare/setns
(``os.unshare`` only exists from 3.12), renameat2, keyctl, prctl, capset and rt_sigaction. Each raises ``OSError`` with the errno.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)  # libc, loaded already (find_library would run ldconfig: 10 ms)

# mount flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

# namespaces (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_SETNS = 308
_SYS_KEYCTL = 250
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_SYS_SETNS, fd, nstype), "setns")


def join_session_keyring() -> None:
    """A fresh anonymous session keyring for this process (runc gives every container one), so that
    nothing in a container sees the host's. A kernel without keyrings (ENOSYS) is fine, as in runc."""
    if _libc.syscall(_SYS_KEYCTL, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING): {os.strerror(err)}")


def rename_exchange(a: str, b: str) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): neither inode is freed nor allocated."""
    _check(_libc.renameat2(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE), f"rename {a}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        "prctl",
    )


def parent_death_signal() -> int:
    """This process's parent-death signal (0: none)."""
    sig = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0), "prctl")
    return sig.value


class _KernelSigaction(ctypes.Structure):  # the kernel's struct sigaction, not the C library's
    _fields_ = [
        ("handler", ctypes.c_ulong),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_ulong),
        ("mask", ctypes.c_uint64),
    ]


def _rt_sigaction(sig: int, new: _KernelSigaction | None, old: _KernelSigaction | None) -> None:
    if _SYS_RT_SIGACTION is None:
        raise OSError(errno.ENOSYS, "rt_sigaction: unknown architecture")
    _check(
        _libc.syscall(
            _SYS_RT_SIGACTION,
            sig,
            ctypes.byref(new) if new is not None else None,
            ctypes.byref(old) if old is not None else None,
            8,
        ),
        "rt_sigaction",
    )


def ignored_signals() -> list[int]:
    """The signals this process ignores, as the kernel sees them (no /proc needed: a container's
    init asks after its pivot, where a config may have mounted none)."""
    found = []
    for sig in range(1, 65):
        old = _KernelSigaction()
        _rt_sigaction(sig, None, old)
        if old.handler == 1:  # SIG_IGN
            found.append(sig)
    return found


def set_signal_action(sig: int, ignore: bool) -> None:
    """SIG_IGN or SIG_DFL for ``sig`` straight through rt_sigaction: the C library refuses its own
    real-time signals (32 and 33), which a process can still inherit ignored and pass on through exec."""
    _rt_sigaction(sig, _KernelSigaction(int(ignore), 0, 0, 0), None)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capset(caps: int) -> None:
    """Set effective = permitted = inheritable = ``caps`` (a bit mask) for this thread."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    for i in range(2):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = word
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40

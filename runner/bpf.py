"""bpf(2) through ctypes, for what ``devices.py`` needs on cgroup v2: a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program loaded (the verifier's log kept for the error when it is refused) and attached to a group's
directory. The instructions are ``devices.program``'s; this module only hands them to the kernel. Apart
from ``devices`` so that its ctypes structures are made only where a v2 group gets its program.

Caveats: syscall numbers for x86_64 and aarch64 only; needs CAP_SYS_ADMIN in the initial user namespace.
"""

from __future__ import annotations

import ctypes
import os

_INSN_SIZE = 8  # sizeof(struct bpf_insn)
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2
_LICENSE = b"Apache"
_LOG_SIZE = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)  # libc, loaded already (find_library would run ldconfig: 10 ms)
_libc.syscall.restype = ctypes.c_long


class _ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD member of ``union bpf_attr``, up to expected_attach_type."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _ProgAttachAttr(ctypes.Structure):
    """The BPF_PROG_ATTACH member of ``union bpf_attr``, up to replace_bpf_fd."""

    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    """(result, errno) of bpf(cmd, &attr, sizeof attr)."""
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        return -1, 38  # ENOSYS: no syscall number known for this architecture
    result = _libc.syscall(
        ctypes.c_long(number), ctypes.c_long(cmd), ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr))
    )
    return int(result), ctypes.get_errno() if result < 0 else 0


def _load(code: bytes) -> int:
    """A program fd. On failure, load again with a log so the OSError carries the verifier's reasons."""
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(_LICENSE)
    attr = _ProgLoadAttr(
        prog_type=_BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(code) // _INSN_SIZE,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license),
        prog_name=b"strata_devices",
    )
    fd, err = _bpf(_BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
    fd, _ = _bpf(_BPF_PROG_LOAD, attr)
    if fd >= 0:  # accepted the second time (it should not be): use it
        return fd
    message = "\n".join(log.value.decode(errors="replace").strip().splitlines()[-30:])  # the tail says why
    detail = f": verifier: {message}" if message else ""
    raise OSError(err, f"loading the device program: {os.strerror(err)}{detail}")


def attach_device_program(group_dir: str, code: bytes) -> None:
    """Load ``code`` (a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program, ``devices.program``'s) and attach it
    to the cgroup v2 directory ``group_dir``; the attachment holds the program, so its fd is closed
    here. Applies to the group's members and descendants, new and present. OSError (with errno) if
    the load or the attach fails."""
    prog_fd = _load(code)
    try:
        dir_fd = os.open(group_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = _ProgAttachAttr(
                target_fd=dir_fd, attach_bpf_fd=prog_fd, attach_type=_BPF_CGROUP_DEVICE, attach_flags=_BPF_F_ALLOW_MULTI
            )
            result, err = _bpf(_BPF_PROG_ATTACH, attr)
            if result < 0:
                raise OSError(err, f"attaching the device program to {group_dir}: {os.strerror(err)}", group_dir)
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)

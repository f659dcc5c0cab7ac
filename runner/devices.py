"""The device allow-list of a container: OCI ``linux.resources.devices`` rules applied through the
cgroup v1 ``devices`` controller or, on cgroup v2, as a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached
to the group's directory (loaded by ``bpf.py``). It does not create groups or device nodes (``cgroups.py``,
the init do).

Rules are dicts in the runtime-spec shape, ``{"allow": bool, "type": "a"|"c"|"b", "major": int|None,
"minor": int|None, "access": "rwm"}`` (None or absent = any). Later rules win, per access bit, as in
runc's emulator: ``deny a; allow c 1:3 rw; deny c 1:3 w`` leaves /dev/null readable only.

Caveats:
- v1 writes the rules as given; the kernel's own v1 semantics then apply, and there a deny only
  subtracts from an allow of exactly the same type:major:minor, so a wildcard deny after specific
  allows punches no holes (runc's emulator rejects such lists; we do not yet).
- ``attach_v2`` adds a program (``BPF_F_ALLOW_MULTI``); all attached programs must allow an access,
  so calling it again on the same group can only narrow the list. Nothing here detaches programs:
  they go with the group's rmdir.
- Syscall numbers for x86_64 and aarch64 only; needs CAP_SYS_ADMIN in the initial user namespace.
"""

from __future__ import annotations

import os
import stat
import struct

from .errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create: at run time a rule is a plain dict)
    from collections.abc import Iterable
    from typing import NotRequired, TypedDict

    class DeviceRule(TypedDict):
        """One entry of the runtime-spec's ``linux.resources.devices``."""

        allow: bool
        type: NotRequired[str]
        major: NotRequired[int | None]
        minor: NotRequired[int | None]
        access: NotRequired[str]


def _rule(
    allow: bool, kind: str, major: int | None = None, minor: int | None = None, access: str = "rwm"
) -> DeviceRule:
    return {"allow": allow, "type": kind, "major": major, "minor": minor, "access": access}


# Docker's DefaultLinuxSpec (daemon/pkg/oci/defaults.go), then what runc appends to every container
# (libcontainer/specconv AllowedDevices): mknod of anything, read/write of the standard nodes only.
DEFAULT_RULES: list[DeviceRule] = [
    _rule(False, "a"),
    _rule(False, "c", 10, 229),  # /dev/fuse: Docker's explicit deny, so a later --device reads as overriding it
    _rule(True, "c", access="m"),
    _rule(True, "b", access="m"),
    _rule(True, "c", 1, 3),  # null
    _rule(True, "c", 1, 5),  # zero
    _rule(True, "c", 1, 7),  # full
    _rule(True, "c", 1, 8),  # random
    _rule(True, "c", 1, 9),  # urandom
    _rule(True, "c", 5, 0),  # tty
    _rule(True, "c", 5, 1),  # console
    _rule(True, "c", 5, 2),  # ptmx
    _rule(True, "c", 136),  # pts
    _rule(True, "c", 10, 200),  # net/tun (runc#3468)
]


def rules_with(extra: Iterable[DeviceRule]) -> list[DeviceRule]:
    """The defaults followed by ``extra`` (e.g. ``--device`` rules), which win where they overlap."""
    rules = [*DEFAULT_RULES, *extra]
    for rule in rules:
        _parse(rule)
    return rules


def parse_rule(text: str) -> DeviceRule:
    """``--device-cgroup-rule``: ``TYPE MAJOR:MINOR ACCESS`` (``c 42:* rmw``, ``a *:* rwm``), an allow."""
    parts = text.split()
    numbers = parts[1].split(":") if len(parts) == 3 else []
    if len(numbers) != 2 or not all(n == "*" or n.isdigit() for n in numbers):
        raise RunnerError(f"invalid device cgroup rule {text!r}: use TYPE MAJOR:MINOR ACCESS, as 'c 42:* rmw'")
    major, minor = (None if n == "*" else int(n) for n in numbers)
    if parts[0] == "a":
        rule: DeviceRule = {"allow": True, "type": "a", "access": parts[2]}
    else:
        rule = {"allow": True, "type": parts[0], "major": major, "minor": minor, "access": parts[2]}
    _parse(rule)
    return rule


def host_device(spec: str) -> tuple[dict[str, object], DeviceRule]:
    """``--device HOST[:CONTAINER][:PERMISSIONS]`` -> the runtime-spec's ``linux.devices`` entry (the
    node made in the container's /dev, as on the host) and the ``resources.devices`` rule that opens it."""
    parts = spec.split(":")
    access = "rwm"
    if len(parts) > 1 and parts[-1] and set(parts[-1]) <= set("rwm"):
        access = parts.pop()
    if not parts[0] or len(parts) > 2:
        raise RunnerError(f"invalid device specification: {spec}")
    host = parts[0]
    inside = parts[1] if len(parts) == 2 and parts[1] else host
    if not inside.startswith("/dev/") or os.path.normpath(inside) != inside.rstrip("/") or ".." in inside.split("/"):
        raise RunnerError(f"invalid device specification: {spec}: the container path must be under /dev")
    try:
        st = os.stat(host)
    except OSError as e:
        raise RunnerError(
            f'error gathering device information while adding custom device "{host}": '
            f"{e.strerror.lower() if e.strerror else e}"
        ) from None
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
    if not kind:
        raise RunnerError(f'error gathering device information while adding custom device "{host}": not a device node')
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    node = {
        "path": inside,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    return node, {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}


_SKIPPED_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}  # containerd's HostDevices
_OWN_NODES = {"console", "null", "zero", "full", "random", "urandom", "tty", "ptmx"}  # every /dev has these


def host_devices(root: str = "/dev") -> list[dict[str, object]]:
    """Every device node of the host's /dev (``--privileged``, as containerd's ``HostDevices``: the
    mounts of ptys, shm, mqueue and the fd links left out, and the nodes every container's /dev has
    already: console, null, zero, full, random, urandom, tty, ptmx), as ``linux.devices`` entries at
    the same paths."""
    out: list[dict[str, object]] = []
    for dirpath, dirs, files in os.walk(root):
        if dirpath == root:
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if dirpath == root and name in _OWN_NODES:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
            if kind:
                out.append(
                    {
                        "path": "/dev/" + os.path.relpath(path, root),
                        "type": kind,
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )
    return out


_MAX_NUMBER = 0x7FFFFFFF  # compared as a sign-extended BPF immediate; real majors/minors are 12/20 bits


def _parse(rule: DeviceRule) -> tuple[bool, str, int | None, int | None, str]:
    """(allow, type, major, minor, access) with defaults filled in; RunnerError for a bad rule."""
    kind, access = rule.get("type", "a"), rule.get("access", "rwm")
    major, minor = rule.get("major"), rule.get("minor")
    if not isinstance(rule.get("allow"), bool):
        raise RunnerError(f"invalid device rule {rule!r}: 'allow' must be true or false")
    if kind not in ("a", "c", "b"):
        raise RunnerError(f"invalid device rule {rule!r}: type must be a, c or b")
    if kind == "a" and (major is not None or minor is not None):
        raise RunnerError(f"invalid device rule {rule!r}: type a takes no major or minor")
    for number in (major, minor):
        if number is not None and (type(number) is not int or not 0 <= number <= _MAX_NUMBER):
            raise RunnerError(f"invalid device rule {rule!r}: major and minor must be numbers >= 0")
    if not isinstance(access, str) or set(access) - set("rwm") or len(set(access)) != len(access):
        raise RunnerError(f"invalid device rule {rule!r}: access must be letters of rwm")
    return rule["allow"], kind, major, minor, "".join(c for c in "rwm" if c in access)


# ---- cgroup v1 ----------------------------------------------------------------------------------


def v1_line(rule: DeviceRule) -> str:
    """The ``devices.allow``/``devices.deny`` spelling: ``c 1:3 rwm``, ``*`` for any (config/device.go)."""
    _, kind, major, minor, access = _parse(rule)
    return f"{kind} {'*' if major is None else major}:{'*' if minor is None else minor} {access}"


def v1_writes(rules: Iterable[DeviceRule]) -> list[tuple[str, str]]:
    """(file, line) in order: ``a`` to ``devices.deny`` first (drop what the group inherited), then each rule."""
    writes = [("devices.deny", "a")]
    for rule in rules:
        if _parse(rule)[4]:  # an empty access is a no-op; the kernel would reject the line
            writes.append(("devices.allow" if rule["allow"] else "devices.deny", v1_line(rule)))
    return writes


def apply_v1(group_dir: str, rules: Iterable[DeviceRule]) -> None:
    """Write ``rules`` to a v1 devices group (e.g. ``/sys/fs/cgroup/devices/strata/<id>``) with no tasks
    or children yet. A group can only narrow its parent's list: an allow the parent lacks fails with
    EPERM. Repeating the call starts again from ``a`` and so gives the same list."""
    for name, line in v1_writes(rules):
        with open(os.path.join(group_dir, name), "w") as f:
            f.write(line)


# ---- cgroup v2: the BPF program -----------------------------------------------------------------
# struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm} (linux/bpf.h, little-endian)
_LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND32_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_MOV32_K = 0xB4  # BPF_ALU | BPF_MOV | BPF_K
_MOV32_X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_EXIT = 0x95  # BPF_JMP | BPF_EXIT
_INSN = struct.Struct("<BBhi")

_DEV_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_ACCESS_BIT = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def _exit_with(value: int) -> list[bytes]:
    return [_insn(_MOV32_K, 0, imm=value), _insn(_EXIT)]


def program(rules: Iterable[DeviceRule]) -> bytes:
    """The ``BPF_PROG_TYPE_CGROUP_DEVICE`` instructions for ``rules``: return 1 to allow, 0 to deny.

    Layout after runc's devicefilter.go (from crun's ebpf.c): R2 = type, R3 = requested access bits,
    R4 = major, R5 = minor, loaded from ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major;
    u32 minor}`` (access_type = access << 16 | type). Unlike runc, which first reduces the list with its
    emulator, the rules are visited last to first and R3 holds the bits no later rule has decided: a
    matching allow clears its bits (all clear: allow), a matching deny that holds one of them denies.
    Whatever no rule decides is denied. Each block's failed test jumps past the block.
    """
    insns = [
        _insn(_LDX_W, 2, 1, 0),
        _insn(_AND32_K, 2, imm=0xFFFF),
        _insn(_LDX_W, 3, 1, 0),
        _insn(_RSH32_K, 3, imm=16),
        _insn(_LDX_W, 4, 1, 4),
        _insn(_LDX_W, 5, 1, 8),
    ]
    parsed = [_parse(rule) for rule in rules]
    for allow, kind, major, minor, access in reversed(parsed):
        if not access:
            continue
        bits = sum(_ACCESS_BIT[c] for c in access)
        tests: list[tuple[int, int]] = []  # (register, value): jump past the block if they differ
        if kind != "a":
            tests.append((2, _DEV_TYPE[kind]))
        if major is not None:
            tests.append((4, major))
        if minor is not None:
            tests.append((5, minor))
        if bits == 7:  # decides every bit that reaches it
            body = _exit_with(int(allow))
        elif allow:  # R3 &= ~bits; if (R3 == 0) return 1
            body = [_insn(_AND32_K, 3, imm=7 & ~bits), _insn(_JNE_K, 3, off=2, imm=0), *_exit_with(1)]
        else:  # if (R3 & bits) return 0
            body = [_insn(_MOV32_X, 0, 3), _insn(_AND32_K, 0, imm=bits), _insn(_JEQ_K, 0, off=2, imm=0), *_exit_with(0)]
        skip = len(body) + len(tests)
        for i, (register, value) in enumerate(tests):
            insns.append(_insn(_JNE_K, register, off=skip - i - 1, imm=value))
        insns.extend(body)
        if not tests and bits == 7:
            return b"".join(insns)  # nothing after an unconditional exit is reachable (the verifier refuses it)
    return b"".join(insns + _exit_with(0))


def attach_v2(group_dir: str, rules: Iterable[DeviceRule]) -> None:
    """Load ``program(rules)`` and attach it to the cgroup v2 directory ``group_dir`` (``bpf.py``).
    Applies to the group's members and descendants, new and present. OSError (with errno) if the
    load or the attach fails."""
    from . import bpf  # (here: ctypes' structures for bpf(2) are made only where a v2 group needs them)

    bpf.attach_device_program(group_dir, program(rules))

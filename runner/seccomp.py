"""Seccomp for containers: Docker-format profiles (the bundled default is moby's ``default.json``,
Apache-2.0) resolved into an OCI ``linux.seccomp`` object as moby's ``setupSeccomp`` does, and that
object turned into a BPF program with libseccomp (ctypes over ``libseccomp.so.2``) as runc builds it.
``prepare`` generates the program (in the parent, before the fork: ~10 ms for the default profile,
then cached); ``Filter.load`` in the child is one seccomp(2). It does not set no_new_privs, drop
capabilities or decide when to load: the in-container init does.

Caveats:
- No ``SCMP_ACT_NOTIFY`` (no listener); of the OCI ``flags`` only TSYNC, LOG and SPEC_ALLOW.
- Syscalls newer than the profile get the default action (EPERM); runc patches the program so they
  get ENOSYS (its ``patchbpf``), which lets libc fall back from calls it does not know.
- Names libseccomp (2.5.4 here) does not know are skipped, as in runc: on this host that is a dozen
  recent ones (``mseal``, ``listmount``, ...), which therefore get the default action.
"""

from __future__ import annotations

import ctypes
import errno
import os

from . import cjson
from .errors import RunnerError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (``typing`` is ~10 ms of a strata-oci create's start-up)
    from typing import Any

    Profile = dict[str, Any]

DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_default.json")

# libseccomp's seccomp.h (2.5): action values; ERRNO and TRACE carry a 16-bit datum
ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# enum scmp_compare
OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# enum scmp_filter_attr
_ATTR_CTL_NNP = 3
# OCI flag -> (enum scmp_filter_attr, the SECCOMP_FILTER_FLAG_* bit of linux/seccomp.h)
_FLAG_ATTRS = {
    "SECCOMP_FILTER_FLAG_TSYNC": (4, 1),
    "SECCOMP_FILTER_FLAG_LOG": (6, 2),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (7, 4),
}
_NR_SCMP_ERROR = -1
_MAX_ARGS = 6

# uname -m -> the arch spelling profiles use in includes/excludes.arches (moby's "native" names)
_MACHINES = {
    "x86_64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
}
# native name -> the OCI/libseccomp architecture (moby's nativeToSeccomp)
_NATIVE_TO_SCMP = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mipsel64n32": "SCMP_ARCH_MIPSEL64N32",
    "mipsle": "SCMP_ARCH_MIPSEL",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}
HOST_ARCH = _MACHINES.get(os.uname().machine, os.uname().machine)

# uname -m -> the numbers of (keyctl, seccomp); elsewhere seccomp is prctl(PR_SET_SECCOMP), with no flags
_SYSCALLS = {
    "x86_64": (250, 317),
    "aarch64": (219, 277),
    "riscv64": (219, 277),
    "loongarch64": (219, 277),
    "ppc64le": (280, 358),
    "ppc64": (280, 358),
    "s390x": (280, 348),
    "i686": (288, 354),
    "i386": (288, 354),
}
_SECCOMP_SET_MODE_FILTER = 1
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def load_profile(option: str | None) -> Profile | None:
    """The Docker-format profile for ``--security-opt seccomp=OPTION``: ``None`` or ``"default"`` is
    the bundled default, ``"unconfined"`` is ``None`` (no filter), anything else a path to a JSON
    profile. A profile with neither ``defaultAction`` nor ``syscalls`` is ``None`` too (as moby).
    Raises ``RunnerError`` (one line) if the file cannot be read, decoded or validated.
    """
    if option == "unconfined":
        return None
    path = DEFAULT_PROFILE if option in (None, "default") else str(option)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RunnerError(f"opening seccomp profile ({path}) failed: {e.strerror or e}") from None
    import json  # (here, and ``re`` in ``_validate`` and ``_kernel_version``: create has a resolved object)

    try:
        profile = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RunnerError(f"decoding seccomp profile ({path}) failed: {e}") from None
    if not isinstance(profile, dict):
        raise RunnerError(f"decoding seccomp profile ({path}) failed: not a JSON object")
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    validate(profile, path)
    return profile


def validate(profile: Profile, source: str = "") -> None:
    """Check a Docker-format profile's shape, actions, ops and kernel versions (every rule, whatever
    the caps), so that a bad profile fails before any container exists. Raises ``RunnerError``:
    ``invalid seccomp profile (SOURCE): syscalls[3] (socket): unknown comparison 'SCMP_CMP_XX'``."""
    try:
        _validate(profile)
    except RunnerError as e:
        raise RunnerError(f"invalid seccomp profile{f' ({source})' if source else ''}: {e}") from None


def _validate(profile: Profile) -> None:
    import re  # (see ``load_profile``)

    _action_of(profile.get("defaultAction"), profile.get("defaultErrnoRet"), "defaultAction")
    if profile.get("architectures") and profile.get("archMap"):
        raise RunnerError("both 'architectures' and 'archMap' are specified, use either")
    if profile.get("listenerPath"):
        raise RunnerError("listenerPath (SCMP_ACT_NOTIFY) is not supported")
    for flag in _str_list(profile.get("flags"), "flags"):
        if flag not in _FLAG_ATTRS:
            raise RunnerError(f"unsupported flag {flag!r}")
    for arch in _str_list(profile.get("architectures"), "architectures"):
        _check_arch(arch)
    for entry in _list(profile.get("archMap"), "archMap"):
        if not isinstance(entry, dict):
            raise RunnerError("archMap entries must be objects")
        for name in [entry.get("architecture"), *_str_list(entry.get("subArchitectures"), "subArchitectures")]:
            _check_arch(name)
    for i, rule in enumerate(_list(profile.get("syscalls"), "syscalls")):
        if not isinstance(rule, dict):
            raise RunnerError(f"syscalls[{i}] is not an object")
        if rule.get("name") and rule.get("names"):
            raise RunnerError(f"syscalls[{i}]: both 'name' and 'names' are specified, use either")
        names = _names(rule)
        where = f"syscalls[{i}] ({names[0] if names else '?'})"
        if not names:
            raise RunnerError(f"{where}: no syscall names")
        _action_of(rule.get("action"), rule.get("errnoRet"), where)
        for arg in _list(rule.get("args"), f"{where} args"):
            if not isinstance(arg, dict):
                raise RunnerError(f"{where}: args must be objects")
            if not _is_int(arg.get("index")) or not 0 <= arg["index"] < _MAX_ARGS:
                raise RunnerError(f"{where}: argument index {arg.get('index')!r} out of range")
            for key in ("value", "valueTwo"):
                if key in arg and (not _is_int(arg[key]) or not 0 <= arg[key] < 1 << 64):
                    raise RunnerError(f"{where}: argument {key} {arg[key]!r} is not a 64-bit unsigned integer")
            if arg.get("op") not in OPS:
                raise RunnerError(f"{where}: unknown comparison {arg.get('op')!r}")
        for key in ("includes", "excludes"):
            cond = rule.get(key) or {}
            if not isinstance(cond, dict):
                raise RunnerError(f"{where}: {key} must be an object")
            _str_list(cond.get("caps"), f"{where} {key}.caps")
            _str_list(cond.get("arches"), f"{where} {key}.arches")
            if cond.get("minKernel") and not re.fullmatch(r"[0-9]+\.[0-9]+", str(cond["minKernel"])):
                raise RunnerError(f'{where}: invalid minKernel {cond["minKernel"]!r}, expected "<kernel>.<major>"')


def resolve(profile: Profile, caps: set[str], arch: str = HOST_ARCH, kernel: tuple[int, int] | None = None) -> Profile:
    """A Docker-format profile -> an OCI ``linux.seccomp`` object, as moby's ``setupSeccomp``: a rule
    is dropped if an ``excludes`` cap is in ``caps`` (the container's bounding set), its arch is in
    ``excludes.arches`` or the kernel is at least ``excludes.minKernel``; or if an ``includes`` cap is
    missing, its arch is not in ``includes.arches`` or the kernel is older than ``includes.minKernel``.
    ``arch`` is spelt as profiles spell it (``amd64``, ``arm64``); ``kernel`` is (major, minor) and
    defaults to the running kernel's. Pure: no syscalls, and names are not checked against libseccomp.
    """
    validate(profile)
    if kernel is None:
        kernel = _kernel_version(os.uname().release)
    oci: Profile = {"defaultAction": profile["defaultAction"]}
    for key in ("defaultErrnoRet", "flags"):
        if profile.get(key) is not None:
            oci[key] = profile[key]
    architectures = list(profile.get("architectures") or [])
    native = _NATIVE_TO_SCMP.get(arch)
    for entry in profile.get("archMap") or []:
        if native is not None and entry["architecture"] == native:
            architectures = [native, *(entry.get("subArchitectures") or [])]
            break
    oci["architectures"] = architectures
    syscalls = []
    for rule in profile.get("syscalls") or []:
        exc, inc = rule.get("excludes") or {}, rule.get("includes") or {}
        if (
            arch in (exc.get("arches") or [])
            or any(c in caps for c in exc.get("caps") or [])
            or (exc.get("minKernel") and kernel >= _kernel_version(exc["minKernel"]))
        ):
            continue
        if (
            (inc.get("arches") and arch not in inc["arches"])
            or any(c not in caps for c in inc.get("caps") or [])
            or (inc.get("minKernel") and kernel < _kernel_version(inc["minKernel"]))
        ):
            continue
        out: Profile = {"names": _names(rule), "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            out["args"] = [dict(a) for a in rule["args"]]
        syscalls.append(out)
    oci["syscalls"] = syscalls
    return oci


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_lib: ctypes.CDLL | None = None  # libseccomp, opened on first use


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        _lib = lib
    return _lib


def _check(rc: int, what: str) -> None:
    if rc < 0:  # libseccomp returns -errno
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


class _SockFprog(ctypes.Structure):
    # struct sock_fprog (linux/filter.h)
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Filter:
    """A seccomp BPF program, generated (``prepare``) and not yet loaded: ``load`` is one seccomp(2)
    (the kernel checks the program: ~0.9 ms for the default profile), and a fork may share it.
    ``load`` twice stacks a second copy."""

    def __init__(self, program: bytes, flags: int) -> None:
        self.program = program  # struct sock_filter[], as seccomp_export_bpf writes it
        self.flags = flags  # SECCOMP_FILTER_FLAG_*
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))

    def load(self) -> None:
        """Install the filter in this thread. The kernel wants no_new_privs set or CAP_SYS_ADMIN
        (else EACCES). Raises OSError."""
        nr = _SYSCALLS.get(os.uname().machine, (0, 0))[1]
        if nr:
            rc = _libc.syscall(
                ctypes.c_long(nr),
                ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                ctypes.c_long(self.flags),
                ctypes.byref(self._fprog),
            )
        elif self.flags == 0:
            rc = _libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(self._fprog), 0, 0)
        else:
            raise OSError(errno.ENOSYS, f"seccomp: unknown syscall number on {os.uname().machine}")
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")


_programs: dict[str, bytes] = {}  # canonical JSON of an OCI object -> its program (the last 8)


def prepare(oci: Profile) -> Filter:
    """Generate the filter for an OCI ``linux.seccomp`` object, as runc builds it with libseccomp:
    every listed architecture added; names libseccomp does not know skipped; rules whose action is the
    default action skipped (libseccomp refuses them); a rule whose ``args`` name one index more than
    once becomes one rule per arg (Docker's OR), else one rule with its args AND-ed. no_new_privs is
    left to the caller. The program is kept: preparing the same object again costs a dict lookup.
    Raises OSError (the errno libseccomp gives), or ``RunnerError`` for an invalid action or op."""
    default = _action_of(oci.get("defaultAction"), oci.get("defaultErrnoRet"), "defaultAction")
    flags = 0
    for flag in oci.get("flags") or []:
        if flag not in _FLAG_ATTRS:
            raise RunnerError(f"seccomp: unsupported flag {flag!r}")
        flags |= _FLAG_ATTRS[flag][1]
    key = cjson.dumps(oci, sort_keys=True)
    program = _programs.get(key)
    if program is None:
        program = _generate(oci, default)
        while len(_programs) >= 8:
            del _programs[next(iter(_programs))]
        _programs[key] = program
    return Filter(program, flags)


def for_container(option: str | Profile | None, caps: set[str]) -> Filter | None:
    """The filter for a container's ``Seccomp`` setting: ``"default"`` (the bundled profile), a
    Docker-format profile, or None (unconfined), resolved for its capabilities ``caps``."""
    profile = load_profile(None) if option == "default" else option
    if not isinstance(profile, dict):
        return None
    return prepare(resolve(profile, caps))


def apply(oci: Profile) -> None:
    """``prepare(oci).load()``."""
    prepare(oci).load()


def _generate(oci: Profile, default: int) -> bytes:
    lib = _libseccomp()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "seccomp_attr_set")
        for flag in oci.get("flags") or []:
            _check(lib.seccomp_attr_set(ctx, _FLAG_ATTRS[flag][0], 1), f"seccomp flag {flag}")
        for arch in oci.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(_check_arch(arch).encode())
            if token == 0:
                raise OSError(errno.EINVAL, f"seccomp: architecture {arch} unknown to libseccomp")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc != -errno.EEXIST:  # the native arch is there from seccomp_init
                _check(rc, f"seccomp_arch_add {arch}")
        for rule in oci.get("syscalls") or []:
            action = _action_of(rule.get("action"), rule.get("errnoRet"), "syscall rule")
            if action == default:
                continue
            conds = [_cond(a) for a in rule.get("args") or []]
            indexes = [c.arg for c in conds]
            groups = [[c] for c in conds] if len(set(indexes)) < len(indexes) else [conds]
            for name in _names(rule):
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_SCMP_ERROR:
                    continue
                for group in groups:
                    array = (_ArgCmp * len(group))(*group)
                    _check(lib.seccomp_rule_add_array(ctx, action, nr, len(group), array), f"seccomp rule for {name}")
        # the program seccomp_load would generate, generated here so that loading is one syscall
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _cond(arg: Profile) -> _ArgCmp:
    op = OPS.get(arg.get("op", ""))
    if op is None:
        raise RunnerError(f"seccomp: unknown comparison {arg.get('op')!r}")
    # MASKED_EQ: datum_a is the mask, datum_b the value (runc passes valueTwo for it alone)
    two = int(arg.get("valueTwo") or 0) if op == OPS["SCMP_CMP_MASKED_EQ"] else 0
    return _ArgCmp(int(arg["index"]), op, int(arg.get("value") or 0), two)


def _action_of(name: Any, errno_ret: Any, where: str) -> int:
    if name not in ACTIONS:
        raise RunnerError(f"{where}: unknown action {name!r}")
    if errno_ret is not None and name not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        raise RunnerError(f"{where}: errnoRet is only valid with SCMP_ACT_ERRNO and SCMP_ACT_TRACE")
    if errno_ret is not None and (not _is_int(errno_ret) or not 0 <= errno_ret <= 0xFFFF):
        raise RunnerError(f"{where}: errnoRet {errno_ret!r} out of range")
    value = ACTIONS[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        value |= errno.EPERM if errno_ret is None else errno_ret
    return value


def _check_arch(arch: Any) -> str:
    """``SCMP_ARCH_X86_64`` -> libseccomp's name for it, ``x86_64``."""
    if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_") or arch == "SCMP_ARCH_":
        raise RunnerError(f"unknown architecture {arch!r}")
    return arch.removeprefix("SCMP_ARCH_").lower()


def _kernel_version(text: str) -> tuple[int, int]:
    """ "4.8" or a release such as "6.1.0-18-amd64" -> (6, 1): later parts and suffixes ignored (moby)."""
    import re  # (see ``load_profile``)

    match = re.match(r"([0-9]+)\.([0-9]+)", text)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _names(rule: Profile) -> list[str]:
    names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
    return _str_list(names, "names")


def _list(value: Any, what: str) -> list[Any]:
    if value is not None and not isinstance(value, list):
        raise RunnerError(f"{what} must be a list")
    return value or []


def _str_list(value: Any, what: str) -> list[str]:
    if not all(isinstance(v, str) for v in _list(value, what)):
        raise RunnerError(f"{what} must be a list of strings")
    return value or []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

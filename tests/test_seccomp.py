"""runner.seccomp: Docker-format profiles resolved as moby does (pure), and filters loaded in a forked
child that then tries syscalls and reports each one's errno (0: it worked) over a pipe."""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Callable

import pytest

from runner import seccomp
from runner import syscalls as sc
from runner.credentials import DEFAULT_CAPS
from runner.errors import RunnerError

x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")

_libc = ctypes.CDLL(None, use_errno=True)
# x86_64 syscall numbers for what os lacks
SYS_GETPID, SYS_SOCKET, SYS_MKDIR, SYS_UMASK, SYS_PERSONALITY = 39, 41, 83, 95, 135
SYS_MOUNT, SYS_KEYCTL, SYS_UNSHARE, SYS_BPF, SYS_CLONE3 = 165, 250, 272, 321, 435
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
AF_INET, AF_ALG, AF_VSOCK, SOCK_STREAM = 2, 38, 40, 1


def _sys(nr: int, *args: int | bytes | None) -> Callable[[], int]:
    """A probe: the raw syscall's errno, 0 if it worked."""

    def probe() -> int:
        ctypes.set_errno(0)
        cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        return ctypes.get_errno() if _libc.syscall(ctypes.c_long(nr), *cargs) < 0 else 0

    return probe


def _keyring_id() -> int:
    return int(
        _libc.syscall(
            ctypes.c_long(SYS_KEYCTL),
            ctypes.c_long(KEYCTL_GET_KEYRING_ID),
            ctypes.c_long(KEY_SPEC_SESSION_KEYRING),
            ctypes.c_long(0),
        )
    )


def _in_child(body: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Run ``body`` in a forked child; its dict (or its exception) comes back over a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            result: dict[str, object] = dict(body())
            code = 0
        except BaseException as e:
            result = {"error": repr(e)}
        try:
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return result


def _confined(oci: dict[str, object], probes: dict[str, Callable[[], int]]) -> dict[str, int]:
    filt = seccomp.prepare(oci)  # in the parent, as the runner does

    def body() -> dict[str, int]:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        filt.load()
        return {name: probe() for name, probe in probes.items()}

    return _in_child(body)


def _default(caps: set[str] | None = None) -> dict[str, object]:
    profile = seccomp.load_profile(None)
    assert profile is not None
    return seccomp.resolve(profile, set(DEFAULT_CAPS) if caps is None else caps)


def _fork_and_reap() -> int:
    pid = os.fork()  # clone(SIGCHLD): no namespace flags
    if pid == 0:
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_bundled_profile_is_dockers_default() -> None:
    profile = seccomp.load_profile("default")
    assert profile is not None
    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert len(profile["syscalls"]) == 33 and len(profile["syscalls"][0]["names"]) == 361
    assert len(profile["archMap"]) == 9
    never = {"keyctl", "add_key", "request_key", "userfaultfd", "kexec_load", "pivot_root", "io_uring_setup"}
    assert not never & {n for rule in profile["syscalls"] for n in rule["names"]}


def test_resolve_drops_rules_by_caps_arch_and_kernel() -> None:
    profile = seccomp.load_profile(None)
    assert profile is not None
    oci = seccomp.resolve(profile, set(DEFAULT_CAPS), arch="amd64", kernel=(6, 1))
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert oci["defaultErrnoRet"] == 1
    names = {n for rule in oci["syscalls"] for n in rule["names"]}
    assert {"arch_prctl", "modify_ldt", "chroot", "ptrace"} <= names
    assert not {"unshare", "mount", "bpf", "setns", "arm_fadvise64_64", "reboot"} & names
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in oci["syscalls"]
    clone = [rule for rule in oci["syscalls"] if rule["names"] == ["clone"]]
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]

    old = seccomp.resolve(profile, set(DEFAULT_CAPS), arch="amd64", kernel=(4, 7))
    assert "ptrace" not in {n for rule in old["syscalls"] for n in rule["names"]}
    admin = seccomp.resolve(profile, set(DEFAULT_CAPS) | {"CAP_SYS_ADMIN"}, arch="amd64", kernel=(6, 1))
    assert "unshare" in {n for rule in admin["syscalls"] for n in rule["names"]}
    assert not [rule for rule in admin["syscalls"] if rule["names"] in (["clone"], ["clone3"])]
    arm = seccomp.resolve(profile, set(), arch="arm64", kernel=(6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    arm_names = {n for rule in arm["syscalls"] for n in rule["names"]}
    assert "arm_fadvise64_64" in arm_names and "arch_prctl" not in arm_names and "chroot" not in arm_names


def test_unconfined_and_empty_profiles_are_no_filter(tmp_path) -> None:
    assert seccomp.load_profile("unconfined") is None
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert seccomp.load_profile(str(empty)) is None


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "opening seccomp profile ({path}) failed: No such file or directory"),
        ("{not json", "decoding seccomp profile ({path}) failed: "),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "invalid seccomp profile ({path}): defaultAction: unknown action"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO",'
            ' "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_NEAR"}]}]}',
            "unknown comparison 'SCMP_CMP_NEAR'",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",'
            ' "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}',
            "argument index 6 out of range",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ALLOW",'
            ' "includes": {"minKernel": "4"}}]}',
            "invalid minKernel '4'",
        ),
    ],
)
def test_bad_profile_file_fails_with_one_line(tmp_path, content: str | None, message: str) -> None:
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunnerError) as info:
        seccomp.load_profile(str(path))
    text = str(info.value)
    assert "\n" not in text
    assert message.format(path=path) in text


@x86_64
def test_default_profile_denies_what_docker_denies() -> None:
    results = _confined(
        _default(),
        {
            "keyctl": _sys(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
            "unshare": _sys(SYS_UNSHARE, sc.CLONE_NEWUSER),
            "mount": _sys(SYS_MOUNT, b"none", b"/nonexistent-strata-seccomp", b"tmpfs", 0, None),
            "bpf": _sys(SYS_BPF, 0, None, 0),
            "clone3": _sys(SYS_CLONE3, None, 0),
            "getpid": _sys(SYS_GETPID),
            "socket_inet": _sys(SYS_SOCKET, AF_INET, SOCK_STREAM, 0),
            "socket_vsock": _sys(SYS_SOCKET, AF_VSOCK, SOCK_STREAM, 0),
            "socket_alg": _sys(SYS_SOCKET, AF_ALG, 5, 0),
            "personality": _sys(SYS_PERSONALITY, 0xFFFFFFFF),
            "fork": _fork_and_reap,
        },
    )
    assert results == {
        "keyctl": errno.EPERM,
        "unshare": errno.EPERM,
        "mount": errno.EPERM,
        "bpf": errno.EPERM,
        "clone3": errno.ENOSYS,
        "getpid": 0,
        "socket_inet": 0,
        "socket_vsock": errno.EPERM,
        "socket_alg": errno.EPERM,
        "personality": 0,
        "fork": 0,
    }


@x86_64
def test_cap_sys_admin_allows_unshare() -> None:
    results = _confined(
        _default(set(DEFAULT_CAPS) | {"CAP_SYS_ADMIN"}),
        {
            "unshare": _sys(SYS_UNSHARE, sc.CLONE_NEWUSER),
            "clone3": _sys(SYS_CLONE3, None, 0),  # reaches the kernel, which wants a struct
            "keyctl": _sys(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
        },
    )
    assert results == {"unshare": 0, "clone3": errno.EINVAL, "keyctl": errno.EPERM}


@x86_64
def test_custom_profile_denies_mkdir_with_its_errno_and_ors_same_index_args(tmp_path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                    {
                        "names": ["umask"],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.EINVAL,
                        "args": [
                            {"index": 0, "value": 0o77, "op": "SCMP_CMP_EQ"},
                            {"index": 0, "value": 0o11, "op": "SCMP_CMP_EQ"},
                        ],
                    },
                ],
            }
        )
    )
    profile = seccomp.load_profile(str(path))
    assert profile is not None
    target = tmp_path / "made"

    def mkdir() -> int:
        try:
            os.mkdir(target)
        except OSError as e:
            return e.errno or -1
        return 0

    results = _confined(
        seccomp.resolve(profile, set(DEFAULT_CAPS)),
        {
            "mkdir": mkdir,
            "umask_77": _sys(SYS_UMASK, 0o77),
            "umask_11": _sys(SYS_UMASK, 0o11),
            "umask_22": _sys(SYS_UMASK, 0o22),
            "getpid": _sys(SYS_GETPID),
        },
    )
    assert results == {
        "mkdir": errno.EACCES,
        "umask_77": errno.EINVAL,
        "umask_11": errno.EINVAL,
        "umask_22": 0,
        "getpid": 0,
    }
    assert not target.exists()


@x86_64
def test_prepare_is_cached_and_load_is_one_syscall() -> None:
    oci = _default()
    first, again = seccomp.prepare(oci), seccomp.prepare(oci)
    assert first.program == again.program and len(first.program) % 8 == 0 and first.flags == 0
    # without no_new_privs (and with CAP_SYS_ADMIN, as root) the kernel takes it too
    assert _in_child(lambda: {"load": first.load() or 0, "keyctl": _sys(SYS_KEYCTL, 0, -3, 0)()}) == {
        "load": 0,
        "keyctl": errno.EPERM,
    }


@x86_64
def test_join_session_keyring_gives_a_fresh_keyring() -> None:
    parent = _keyring_id()
    child = _in_child(lambda: (sc.join_session_keyring(), {"id": _keyring_id()})[1])
    assert child["id"] > 0 and child["id"] != parent

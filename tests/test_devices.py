"""The device allow-list: the v1 lines and the BPF program (pure, with a small interpreter for the
program), then both applied for real to a forked child in a v1 devices group and in a v2 group."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator

import pytest

from runner import devices
from runner.errors import RunnerError


def test_v1_lines_of_the_defaults():
    assert devices.v1_writes(devices.DEFAULT_RULES) == [
        ("devices.deny", "a"),
        ("devices.deny", "a *:* rwm"),
        ("devices.deny", "c 10:229 rwm"),
        ("devices.allow", "c *:* m"),
        ("devices.allow", "b *:* m"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.allow", "c 1:5 rwm"),
        ("devices.allow", "c 1:7 rwm"),
        ("devices.allow", "c 1:8 rwm"),
        ("devices.allow", "c 1:9 rwm"),
        ("devices.allow", "c 5:0 rwm"),
        ("devices.allow", "c 5:1 rwm"),
        ("devices.allow", "c 5:2 rwm"),
        ("devices.allow", "c 136:* rwm"),
        ("devices.allow", "c 10:200 rwm"),
    ]


def test_program_of_the_defaults_is_72_insns_ending_in_exit():
    code = devices.program(devices.DEFAULT_RULES)
    # 6 loads; 5 per rule with type:major:minor (3 tests, mov, exit), 4 for pts; 5 per partial-access
    # rule (c *:* m, b *:* m: type test, and, jne, mov, exit); the deny-all at the end is mov 0 + exit.
    assert len(code) == 72 * 8
    assert code[-16:] == struct.pack("<BBhiBBhi", 0xB4, 0, 0, 0, 0x95, 0, 0, 0)


def _run(code: bytes, kind: str, major: int, minor: int, access: str) -> int:
    """Interpret the instructions ``program`` emits on one access; the verdict (1 allow, 0 deny)."""
    ctx = [sum({"m": 1, "r": 2, "w": 4}[c] for c in access) << 16 | {"b": 1, "c": 2}[kind], major, minor]
    regs = [0] * 11
    pc = 0
    while True:
        op, r, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        dst, src = r & 0xF, r >> 4
        pc += 1
        if op == 0x61:
            regs[dst] = ctx[(regs[src] + off) // 4] if src == 1 else 0
            assert src == 1 and pc <= 6, "ctx loads only in the prologue, while R1 is the ctx"
        elif op in (0x54, 0x74, 0xB4, 0xBC):
            value = regs[src] if op == 0xBC else imm & 0xFFFFFFFF
            regs[dst] = {0x54: regs[dst] & value, 0x74: regs[dst] >> value}.get(op, value)
        elif op in (0x15, 0x55):
            if (regs[dst] == imm) == (op == 0x15):
                pc += off
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


@pytest.mark.parametrize(
    "extra, device, verdict",
    [
        ([], ("c", 1, 3, "rw"), 1),
        ([], ("c", 1, 3, "m"), 1),
        ([], ("c", 136, 4, "rw"), 1),
        ([], ("b", 7, 0, "r"), 0),
        ([], ("b", 7, 0, "m"), 1),
        ([], ("b", 7, 0, "rm"), 0),
        ([], ("c", 10, 229, "r"), 0),
        ([], ("c", 4, 1, "w"), 0),
        ([{"allow": True, "type": "b", "major": 7, "access": "r"}], ("b", 7, 3, "r"), 1),
        ([{"allow": True, "type": "b", "major": 7, "access": "r"}], ("b", 7, 3, "rm"), 1),
        ([{"allow": True, "type": "b", "major": 7, "access": "r"}], ("b", 7, 3, "rw"), 0),
        ([{"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}], ("c", 1, 3, "r"), 1),
        ([{"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}], ("c", 1, 3, "rw"), 0),
        ([{"allow": False, "type": "c", "access": "m"}], ("c", 1, 3, "m"), 0),
        ([{"allow": True}], ("b", 8, 0, "rw"), 1),
    ],
)
def test_program_later_rules_win_per_access_bit(extra, device, verdict):
    assert _run(devices.program(devices.rules_with(extra)), *device) == verdict


@pytest.mark.parametrize(
    "rule",
    [
        {"allow": True, "type": "x"},
        {"allow": True, "type": "c", "access": "rx"},
        {"allow": True, "type": "c", "major": -1},
        {"allow": True, "type": "a", "major": 1},
        {"allow": "yes", "type": "c"},
    ],
)
def test_rules_with_rejects_bad_rules(rule):
    with pytest.raises(RunnerError, match="invalid device rule"):
        devices.rules_with([rule])


def test_attach_v2_reports_the_verifier(monkeypatch):
    monkeypatch.setattr(devices, "program", lambda rules: struct.pack("<BBhi", 0x95, 0, 0, 0))
    with pytest.raises(OSError, match="(?s)verifier: .*R0 !read_ok") as info:
        devices.attach_v2("/nonexistent", devices.DEFAULT_RULES)
    assert info.value.errno == errno.EACCES


# ---- for real -----------------------------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path) -> Iterator[str]:
    """A real block device: a loop device over a small temp file, detached by its name afterwards."""
    backing = tmp_path / "backing.img"
    backing.write_bytes(bytes(1 << 20))
    name = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["losetup", "-d", name], check=True)


def _outcome(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "ok"


def _probe_in_group(procs: str, node: str, rdev: int) -> dict[str, str]:
    """Fork a child that joins the group via ``procs``, then opens /dev/null rw, makes ``node`` and opens
    it for reading; its outcomes, read over a pipe after it has exited and been reaped."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(r)
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            outcomes = {
                "null": _outcome(lambda: os.close(os.open("/dev/null", os.O_RDWR))),
                "mknod": _outcome(lambda: os.mknod(node, stat.S_IFBLK | 0o600, rdev)),
                "read": _outcome(lambda: os.close(os.open(node, os.O_RDONLY))),
            }
            os.write(w, json.dumps(outcomes).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            data = pipe.read()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed before reporting"
    return json.loads(data)


def _check_in_group(
    group: str, apply: Callable[[str, list[devices.DeviceRule]], None], extra, read: str, loop_device: str, tmp_path
) -> None:
    rdev = os.stat(loop_device).st_rdev
    rules = devices.rules_with([dict(rule, major=os.major(rdev), minor=os.minor(rdev)) for rule in extra])
    node = str(tmp_path / "loopnode")
    os.mkdir(group)
    try:
        apply(group, rules)
        outcomes = _probe_in_group(os.path.join(group, "cgroup.procs"), node, rdev)
    finally:
        os.rmdir(group)
    assert outcomes == {"null": "ok", "mknod": "ok", "read": read}
    os.close(os.open(node, os.O_RDONLY))  # outside the group the same node opens: the group denied it


READ_ALLOWED = [{"allow": True, "type": "b", "access": "r"}]  # major:minor filled in with the loop device's


@pytest.mark.skipif(
    not os.path.isdir("/sys/fs/cgroup/devices"),
    reason="no cgroup v1 devices hierarchy: a host with v2 alone (the v2 program's test runs there)",
)
@pytest.mark.parametrize("extra, read", [([], "EPERM"), (READ_ALLOWED, "ok")], ids=["defaults", "read-allowed"])
def test_v1_group_allows_mknod_but_not_reading_a_block_device(extra, read, loop_device, tmp_path):
    group = f"/sys/fs/cgroup/devices/strata-test-{os.getpid()}"
    _check_in_group(group, devices.apply_v1, extra, read, loop_device, tmp_path)


@pytest.mark.parametrize("extra, read", [([], "EPERM"), (READ_ALLOWED, "ok")], ids=["defaults", "read-allowed"])
def test_v2_program_allows_mknod_but_not_reading_a_block_device(extra, read, loop_device, tmp_path):
    # On a hybrid host (this project's) the program on the (controller-less) v2 group is checked for its
    # members as well as the v1 devices group they are in (the root, which allows everything); on a host
    # with v2 alone (the lab's VMs) the group is under the root of the one hierarchy.
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    group = f"{unified}/strata-test-{os.getpid()}"
    _check_in_group(group, devices.attach_v2, extra, read, loop_device, tmp_path)

"""The fences around a container, each tried for real from inside one, as a hostile user would: one
test per fence (docs/ARCHITECTURE.md, "Security model", lists them)."""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import subprocess

import pytest
from helpers import strata, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")

SECRET = b"host-secret-0123456789"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def loop_device(tmp_path):
    """A real loop device over a file that starts with SECRET; detached (by its name) afterwards."""
    image = tmp_path / "disk.img"
    image.write_bytes(SECRET + bytes(1024 * 1024 - len(SECRET)))
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield device, image
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_a_container_cannot_read_or_write_a_host_block_device(rootdir, loop_device):
    device, image = loop_device
    rdev = os.stat(device).st_rdev
    out = strata(
        rootdir,
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        f"mknod /dev/l b {os.major(rdev)} {os.minor(rdev)} && echo made; "
        "head -c 22 /dev/l 2>&1; echo; echo pwned | dd of=/dev/l seek=2 2>&1; "
        "cat /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c",
        check=False,
    ).out
    assert "made" in out  # mknod is allowed, as in Docker: the node is useless
    assert SECRET.decode() not in out
    assert out.count("Operation not permitted") == 2, out
    assert "null-ok" in out and out.split()[-1] == "4"  # the standard nodes work
    assert image.read_bytes()[: len(SECRET) + 1024].startswith(SECRET) and b"pwned" not in image.read_bytes()


@pytest.fixture(scope="session")
def probe_rootfs(tmp_path_factory, full_busybox):
    """busybox plus ``/bin/probe`` (tests/probe.c, built static here): one attack per argument."""
    root = tmp_path_factory.mktemp("probe") / "rootfs"
    shutil.copytree(full_busybox, root, symlinks=True)
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(root / "bin" / "probe"), os.path.join(HERE, "probe.c")], check=True
    )
    return str(root)


@pytest.fixture
def probe_root(rootdir, probe_rootfs):
    strata(rootdir, "import", probe_rootfs, "probe:latest")
    return rootdir


def _probe(root: str, *attacks: str, run_args: tuple[str, ...] = ()) -> dict[str, str]:
    out = strata(root, "run", "--rm", *run_args, "probe", "/bin/probe", *attacks).out
    return dict(line.split("=", 1) for line in out.splitlines())


# What Docker's default profile refuses that the kernel alone would let container root do
ATTACKS = (
    "keyctl",
    "add_key",
    "unshare-user",
    "clone-newuser",
    "bpf",
    "perf_event_open",
    "open_by_handle_at",
    "kexec_load",
    "userfaultfd",
    "vsock",
)


def test_seccomp_refuses_what_dockers_default_profile_refuses(probe_root):
    seen = _probe(probe_root, *ATTACKS, "inet", "mkdir")
    assert {a: seen[a] for a in ATTACKS} == dict.fromkeys(ATTACKS, "EPERM")
    assert (seen["inet"], seen["mkdir"]) == ("ok", "ok")  # what a program needs still works
    status = strata(probe_root, "run", "--rm", "probe", "grep", "Seccomp:", "/proc/self/status").out
    assert status.split() == ["Seccomp:", "2"]  # a filter is in force


def test_unconfined_lifts_the_filter_but_not_the_hosts_keyring(probe_root):
    seen = _probe(
        probe_root, "keyctl", "session-keyring", "unshare-user", run_args=("--security-opt", "seccomp=unconfined")
    )
    assert seen["keyctl"] == "ok" and seen["unshare-user"] == "ok"  # the kernel alone allows these
    host = ctypes.CDLL(None, use_errno=True).syscall(250, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID, session
    assert int(seen["session-keyring"]) != host  # a fresh session keyring, never the host's


def test_a_profile_file_applies_and_a_bad_one_is_refused(probe_root, tmp_path):
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
            }
        )
    )
    seen = _probe(probe_root, "mkdir", "keyctl", run_args=("--security-opt", f"seccomp={profile}"))
    assert seen == {"mkdir": "EACCES", "keyctl": "ok"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_SOMETIMES"}')
    for option in (f"seccomp={bad}", f"seccomp={tmp_path}/missing.json", "apparmor=x"):
        res = strata(probe_root, "run", "--security-opt", option, "probe", "true", check=False)
        assert res.code == 125 and len(res.err.strip().splitlines()) == 1, res.err
    assert strata(probe_root, "ps", "-aq").out == ""  # nothing was created


def test_exec_runs_under_the_same_filter_and_may_ptrace_pid1(probe_root):
    strata(probe_root, "run", "-d", "--name", "target", "probe", "sleep", "1000")
    try:
        out = strata(probe_root, "exec", "target", "/bin/probe", "keyctl", "unshare-user", "ptrace-pid1").out
        assert out.split() == ["keyctl=EPERM", "unshare-user=EPERM", "ptrace-pid1=ok"]  # ptrace: as Docker
    finally:
        strata(probe_root, "rm", "-f", "target")


def test_a_device_given_with_device_is_usable_and_only_that_one(rootdir, loop_device):
    """--device makes the node (linux.devices) and opens it (resources.devices); nothing else opens."""
    device, _image = loop_device
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--device",
        f"{device}:/dev/disk0:r",
        "bb",
        "sh",
        "-c",
        "head -c 22 /dev/disk0; echo; echo x | dd of=/dev/disk0 2>&1 | head -1",
    ).out.splitlines()
    assert out[0] == SECRET.decode() and "Operation not permitted" in out[1]  # r only: no write
    rdev = os.stat(device).st_rdev
    rule = f"b {os.major(rdev)}:* r"
    out = strata(
        rootdir,
        "run",
        "--device-cgroup-rule",
        rule,
        "--name",
        "ruled",
        "bb",
        "sh",
        "-c",
        f"mknod /dev/l b {os.major(rdev)} {os.minor(rdev)}; head -c 22 /dev/l",
    ).out
    assert out == SECRET.decode()
    inspect = json.loads(strata(rootdir, "inspect", "ruled").out)[0]
    assert inspect["HostConfig"]["DeviceCgroupRules"] == [rule]
    for bad in (
        ["--device", "/nonexistent"],
        ["--device", "/etc/passwd"],
        ["--device-cgroup-rule", "x 1:2 q"],
        ["--device", f"{device}:/dev/../../../../etc/x"],
    ):
        res = strata(rootdir, "run", *bad, "bb", "true", check=False)
        assert res.code == 125 and len(res.err.strip().splitlines()) == 1, res.err
    assert strata(rootdir, "ps", "-aq").out.split() == [inspect["Id"][:12]]


def test_a_container_that_clears_its_parent_death_signal_still_dies_with_its_supervisor(probe_root):
    """PR_SET_PDEATHSIG is the container's own to change (the profile allows prctl, as Docker's): the
    fence is runner.init's helper outside its PID namespace, which kills PID 1 when the supervisor dies."""
    cid = strata(probe_root, "run", "-d", "--name", "clever", "probe", "/bin/probe", "orphan").out.strip()
    wait_for(lambda: strata(probe_root, "logs", "clever").out == "orphan=ok\n", what="the probe to clear it")
    with open(os.path.join(probe_root, "containers", cid, "state.json")) as f:
        state = json.load(f)
    pid1 = os.pidfd_open(state["Pid"])
    try:
        os.kill(state["SupervisorPid"], signal.SIGKILL)
        wait_for(lambda: bool(select.select([pid1], [], [], 0)[0]), what="PID 1 to die with its supervisor")
    finally:
        os.close(pid1)

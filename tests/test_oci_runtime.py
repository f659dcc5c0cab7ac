"""strata-oci driven as conmon and containerd's shim drive runc: real processes, a bundle whose root
is a plain directory holding busybox-static. A small stand-in for conmon (a subreaper that runs
``create`` with its own stdio and waits for the container) checks that PID 1 is handed over to it.
Everything a test starts is stopped by pid, and its cgroups and state dirs removed by exact path."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
from helpers import REPO, strata, wait_for

from runner.oci import spec
from runner.process import process_alive, start_time

OCI = [sys.executable, "-m", "runner.oci"]
CGROUP_PARENT = f"strata-oci-test-{os.getpid()}"
CGROUP_ROOT = "/sys/fs/cgroup"

# a conmon in miniature: a subreaper that runs the runtime's ``create`` with the container's stdout on
# a file, says who PID 1's parent is once create has returned, then reaps PID 1 and says how it ended
CONMON = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pid_file, out = sys.argv[1], sys.argv[2]
with open(out, "w") as stdout:
    code = subprocess.run(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=stdout).returncode
if code:
    print(f"failed {code}", flush=True)
    sys.exit(1)
pid = int(open(pid_file).read())
ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
print(f"created {pid} {ppid}", flush=True)
_, status = os.waitpid(pid, 0)
print(f"exited {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def oci(
    root: str, *args: str, check: bool = False, stdout: object = subprocess.PIPE, stderr: object = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [*OCI, "--root", root, *args],
        stdout=stdout,
        stderr=stderr,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    if check and res.returncode:
        raise AssertionError(f"strata-oci {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def state(root: str, cid: str) -> dict:
    return json.loads(oci(root, "state", cid, check=True).stdout)


def _cgroup_dirs(path: str) -> list[str]:
    if os.path.isfile(os.path.join(CGROUP_ROOT, "cgroup.controllers")):  # v2 alone: one hierarchy
        return [os.path.join(CGROUP_ROOT, path)] if os.path.isdir(os.path.join(CGROUP_ROOT, path)) else []
    return [
        os.path.join(CGROUP_ROOT, c, path)
        for c in sorted(os.listdir(CGROUP_ROOT))
        if os.path.isdir(os.path.join(CGROUP_ROOT, c, path))
    ]


@pytest.fixture
def root(tmp_path):
    """The runtime's state root; afterwards every container left in it is killed by pid, its cgroup
    removed by exact path, and the test's parent group with it."""
    directory = str(tmp_path / "state")
    yield directory
    for cid in os.listdir(directory) if os.path.isdir(directory) else []:
        try:
            with open(os.path.join(directory, cid, "state.json")) as f:
                recorded = json.load(f)
        except OSError:
            continue
        pid = recorded["pid"]
        if process_alive(pid, recorded["pid_start"]):
            pidfd = os.pidfd_open(pid)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
            os.close(pidfd)
    for d in _cgroup_dirs(CGROUP_PARENT):
        for child in os.listdir(d):
            if os.path.isdir(os.path.join(d, child)):
                os.rmdir(os.path.join(d, child))
        os.rmdir(d)


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    """A bundle (``strata-oci spec``'s config with a command to set) around the busybox rootfs."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    os.symlink(busybox_rootfs, directory / "rootfs")
    for applet in ("tty", "trap", "hostname", "wc", "readlink"):
        if not os.path.exists(os.path.join(busybox_rootfs, "bin", applet)):
            os.symlink("busybox", os.path.join(busybox_rootfs, "bin", applet))

    def make(args: list[str], cid: str = "c1", terminal: bool = False, **changes: object) -> str:
        config = spec.default_config()
        config["process"].update(args=args, terminal=terminal)
        config["root"]["readonly"] = False
        config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        config.update(changes)
        (directory / "config.json").write_text(json.dumps(config))
        return str(directory)

    return make


def _conmon(tmp_path, root: str, bundle_dir: str, cid: str, *extra: str) -> tuple[subprocess.Popen[str], int, str]:
    """Run ``create`` under the miniature conmon; (conmon, PID 1's pid, the container's stdout file)."""
    pid_file, out = str(tmp_path / f"{cid}.pid"), str(tmp_path / f"{cid}.out")
    conmon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CONMON,
            pid_file,
            out,
            *OCI,
            "--root",
            root,
            "create",
            "--bundle",
            bundle_dir,
            "--pid-file",
            pid_file,
            *extra,
            cid,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert conmon.stdout is not None
    line = conmon.stdout.readline().split()
    assert line[0] == "created", f"create failed: {line}"
    pid, ppid = int(line[1]), int(line[2])
    assert ppid == conmon.pid  # handed over to the caller's subreaper: nothing of ours stays its parent
    return conmon, pid, out


def _reaped(conmon: subprocess.Popen[str]) -> int:
    assert conmon.stdout is not None
    line = conmon.stdout.readline().split()
    conmon.wait(timeout=30)
    assert line[0] == "exited", line
    return int(line[1])


def test_create_parks_pid1_until_start_then_kill_stops_it_and_delete_removes_it(tmp_path, root, bundle):
    b = bundle(["sh", "-c", "trap 'exit 7' TERM; echo started; sleep 100 & wait"])
    conmon, pid, out = _conmon(tmp_path, root, b, "c1")
    try:
        st = state(root, "c1")
        assert st["status"] == "created" and st["pid"] == pid and st["bundle"] == b
        assert st["ociVersion"] and st["rootfs"] and st["created"] and st["owner"]
        assert os.readlink(f"/proc/{pid}/exe") != os.path.realpath(os.path.join(b, "rootfs", "bin", "busybox"))
        assert open(out).read() == ""  # parked before the user's command
        assert os.path.exists(os.path.join(root, "c1", "exec.fifo"))
        cgroups = _cgroup_dirs(f"{CGROUP_PARENT}/c1")
        assert cgroups and all(str(pid) in open(os.path.join(d, "cgroup.procs")).read().split() for d in cgroups)

        oci(root, "start", "c1", check=True)
        assert state(root, "c1")["status"] == "running"
        assert not os.path.exists(os.path.join(root, "c1", "exec.fifo"))
        assert "cannot start an already running container" in oci(root, "start", "c1").stderr

        # start returns once PID 1 exec'd sh, maybe before its trap: a TERM then finds SIG_DFL, which the
        # kernel drops for a PID namespace's init (_reaped would wait for ever). The echo follows the trap
        wait_for(lambda: open(out).read() == "started\n", what="the trap set")
        oci(root, "kill", "c1", check=True)  # SIGTERM, as runc's default
        assert _reaped(conmon) == 7
        assert open(out).read() == "started\n"
        st = state(root, "c1")
        assert st["status"] == "stopped" and st["pid"] == 0
        assert "container not running" in oci(root, "kill", "c1", "9").stderr

        oci(root, "delete", "c1", check=True)
        assert not os.path.exists(os.path.join(root, "c1"))
        assert _cgroup_dirs(f"{CGROUP_PARENT}/c1") == []
        gone = oci(root, "state", "c1")
        assert gone.returncode == 1 and "container does not exist" in gone.stderr
        assert oci(root, "delete", "--force", "c1").returncode == 0  # force on a missing one succeeds
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_kill_takes_signal_numbers_and_names_and_delete_kills_a_created_container(tmp_path, root, bundle):
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"]), "c1")
    try:
        assert "unknown signal" in oci(root, "kill", "c1", "NOPE").stderr
        oci(root, "delete", "c1", check=True)  # created: killed, not refused
        assert _reaped(conmon) == -signal.SIGKILL
        assert not process_alive(pid, None)
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"], cid="c2"), "c2")
    try:
        oci(root, "start", "c2", check=True)
        refused = oci(root, "delete", "c2")
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "cannot delete container c2 that is not stopped: running" in refused.stderr
        oci(root, "kill", "c2", "SIGKILL", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        oci(root, "delete", "c2", check=True)
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def test_run_exits_with_the_containers_code_and_leaves_nothing(root, bundle):
    b = bundle(["sh", "-c", "echo out; echo err >&2; cat /proc/1/cmdline | wc -c; exit 3"])
    res = oci(root, "run", "--bundle", b, "r1")
    assert res.returncode == 3
    assert res.stdout.split() == [
        "out",
        str(len(b"sh\0-c\0") + len(b"echo out; echo err >&2; cat /proc/1/cmdline | wc -c; exit 3\0")),
    ]
    assert res.stderr == "err\n"
    assert os.listdir(root) == [] and _cgroup_dirs(f"{CGROUP_PARENT}/r1") == []
    assert (
        oci(root, "run", "--bundle", bundle(["no-such-command"], cid="r2"), "r2")
        .stderr.strip()
        .endswith('exec: "no-such-command": executable file not found in $PATH')
    )
    assert os.listdir(root) == []


def test_exec_joins_the_running_container(tmp_path, root, bundle):
    conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"]), "c1")
    try:
        oci(root, "start", "c1", check=True)
        res = oci(root, "exec", "c1", "sh", "-c", "cat /proc/1/cmdline; echo; hostname; exit 5")
        assert res.returncode == 5 and res.stdout.split("\n")[:2] == ["sleep\x00100\x00", "strata"]
        process = {
            "args": ["sh", "-c", "echo $FOO; sleep 100"],
            "env": ["FOO=bar", "PATH=/bin"],
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0},
        }
        (tmp_path / "process.json").write_text(json.dumps(process))
        pid_file = str(tmp_path / "exec.pid")
        with open(tmp_path / "exec.out", "w") as out:
            oci(
                root,
                "exec",
                "--process",
                str(tmp_path / "process.json"),
                "--detach",
                "--pid-file",
                pid_file,
                "c1",
                check=True,
                stdout=out,
                stderr=out,
            )  # (a detached command keeps the runtime's stdio)
        exec_pid = int(open(pid_file).read())
        assert os.stat(f"/proc/{exec_pid}/ns/pid").st_ino == os.stat(f"/proc/{pid}/ns/pid").st_ino
        assert os.readlink(f"/proc/{exec_pid}/cwd") == "/tmp"  # (seen from the host: the container's root)
        assert sorted(json.loads(oci(root, "ps", "--format", "json", "c1", check=True).stdout)) == sorted(
            [pid, exec_pid]
        )
        assert "exec" in oci(root, "exec", "c1", "no-such").stderr
        assert oci(root, "exec", "c1", "no-such").returncode == 127
        oci(root, "kill", "c1", "KILL", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        assert not process_alive(exec_pid, None)  # its PID namespace went with PID 1
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


def _receive_master(server: socket.socket) -> tuple[int, str]:
    server.settimeout(30)
    conn, _ = server.accept()
    with conn:
        msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    assert len(fds) == 1
    return fds[0], msg.decode()


def _read_until_closed(master: int, timeout: float = 30) -> bytes:
    data = b""
    while select.select([master], [], [], timeout)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: no one holds the slave any more
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_console_socket_gets_the_pty_master_before_create_returns(tmp_path, root, bundle):
    path = str(tmp_path / "console.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        b = bundle(["sh", "-c", "tty; echo hello-tty"], terminal=True)
        oci(root, "create", "--bundle", b, "--console-socket", path, "t1", check=True)
        master, name = _receive_master(server)  # sent before create returned: there to be taken now
        try:
            assert name.startswith("/dev/pts/")
            pid = state(root, "t1")["pid"]
            start = start_time(pid)
            oci(root, "start", "t1", check=True)
            output = _read_until_closed(master)
            assert output.replace(b"\r\n", b"\n") == b"/dev/pts/0\nhello-tty\n"  # the container's own devpts
            pidfd = os.pidfd_open(pid) if process_alive(pid, start) else None
            if pidfd is not None:
                select.select([pidfd], [], [], 30)
                os.close(pidfd)
            oci(root, "delete", "t1", check=True)
        finally:
            os.close(master)
        # exec -t: a pty of the container's devpts as well
        conmon, pid, _ = _conmon(tmp_path, root, bundle(["sleep", "100"], cid="t2"), "t2")
        try:
            oci(root, "start", "t2", check=True)
            exec_run = subprocess.Popen(
                [*OCI, "--root", root, "exec", "-t", "--console-socket", path, "t2", "tty"],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": REPO},
            )
            master, _ = _receive_master(server)
            try:
                assert _read_until_closed(master).strip() == b"/dev/pts/0"
            finally:
                os.close(master)
            assert exec_run.wait(timeout=30) == 0
        finally:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--bogus", "x"], "unrecognized arguments: --bogus"),
        (["--bogus", "state", "x"], "unrecognized arguments: --bogus"),
        (["frobnicate", "x"], "unknown command 'frobnicate'"),
        (["create", "--bundle", "/nonexistent-bundle", "x"], "bundle /nonexistent-bundle: no config.json there"),
        (["create", "--bundle", "{bundle}", "bad/id"], "invalid id format: bad/id"),
        (["state", "nope"], "container does not exist"),
        (["--systemd-cgroup", "create", "--bundle", "{bundle}", "x"], "--systemd-cgroup: no systemd cgroup driver"),
        (["--systemd-cgroup", "run", "--bundle", "{bundle}", "x"], "set the engine's cgroup manager to cgroupfs"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(root, bundle, args, message):
    b = bundle(["true"])
    res = oci(root, *[a.replace("{bundle}", b) for a in args])
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not os.path.isdir(root) or os.listdir(root) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"hooks": {"prestart": [{"path": "bin/true"}]}},
            "config.json: hooks.prestart[0].path must be an absolute path",
        ),
        ({"hooks": {"poststart": [{"path": "/bin/true", "timeout": 0}]}}, "hooks.poststart[0].timeout must be"),
        ({"hooks": {"onCreate": [{"path": "/bin/true"}]}}, "config.json: hooks.onCreate is not a runtime-spec hook"),
        (
            {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}], "intelRdt": {"closID": "x"}}},
            "linux.intelRdt is not supported",
        ),
        (
            {"linux": {"namespaces": [{"type": "mount"}], "resources": {"blockIO": {"weight": 10}}}},
            "linux.resources.blockIO is not supported",
        ),
        ({"linux": {"namespaces": [{"type": "mount"}], "sysctl": {"kernel.panic": "1"}}}, "sysctl kernel.panic"),
        ({"linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": "machine.slice:libpod:x"}}, "systemd"),
    ],
)
def test_unsupported_config_fields_are_refused_in_one_line(root, bundle, change, message):
    res = oci(root, "create", "--bundle", bundle(["true"], **change), "bad")
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not os.path.isdir(root) or os.listdir(root) == []


def test_log_file_gets_errors_as_json_lines(tmp_path, root):
    log = str(tmp_path / "log.json")
    res = oci(root, "--log", log, "--log-format", "json", "delete", "nope")
    assert res.returncode == 1
    entry = json.loads(open(log).read().splitlines()[-1])
    assert entry["level"] == "error" and entry["msg"] == "container does not exist" and entry["time"]


def test_features_spec_list_and_version_parse(tmp_path, root):
    features = json.loads(oci(root, "features", check=True).stdout)
    assert features["ociVersionMax"] == spec.OCI_VERSION and "pid" in features["linux"]["namespaces"]
    assert features["linux"]["seccomp"]["enabled"] is True
    oci(root, "spec", "--bundle", str(tmp_path), check=True)
    config = json.loads((tmp_path / "config.json").read_text())
    spec.check(config)
    assert "exists" in oci(root, "spec", "--bundle", str(tmp_path)).stderr
    assert json.loads(oci(root, "list", "--format", "json", check=True).stdout) == []
    assert oci(root, "--version", check=True).stdout.startswith("strata-oci version")


def test_resources_and_devices_reach_the_cgroup_at_its_path_and_pause_freezes(tmp_path, root, bundle):
    b = bundle(["sleep", "100"])
    config = json.loads(open(os.path.join(b, "config.json")).read())
    config["linux"]["resources"] = {
        "memory": {"limit": 64 << 20, "swap": 128 << 20},
        "cpu": {"shares": 512},
        "pids": {"limit": 50},
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        ],
    }
    open(os.path.join(b, "config.json"), "w").write(json.dumps(config))
    conmon, pid, _ = _conmon(tmp_path, root, b, "c1")
    try:
        group = f"{CGROUP_PARENT}/c1"
        if os.path.isdir(os.path.join(CGROUP_ROOT, "memory", group)):  # v1 (this host)
            assert open(os.path.join(CGROUP_ROOT, "memory", group, "memory.limit_in_bytes")).read() == f"{64 << 20}\n"
            assert open(os.path.join(CGROUP_ROOT, "cpu", group, "cpu.shares")).read() == "512\n"
            assert open(os.path.join(CGROUP_ROOT, "pids", group, "pids.max")).read() == "50\n"
            allowed = open(os.path.join(CGROUP_ROOT, "devices", group, "devices.list")).read().split("\n")
            assert "c 1:3 rw" in allowed or "c 1:3 rwm" in allowed  # (runc's always-allowed list adds m)
            assert "c 5:2 rwm" in allowed and not any(line.startswith("b 8:") for line in allowed)
        oci(root, "start", "c1", check=True)
        oci(root, "pause", "c1", check=True)
        assert state(root, "c1")["status"] == "paused"
        assert "container not running" in oci(root, "pause", "c1").stderr
        oci(root, "resume", "c1", check=True)
        assert state(root, "c1")["status"] == "running"
        oci(root, "delete", "--force", "c1", check=True)
        assert _reaped(conmon) == -signal.SIGKILL
        assert _cgroup_dirs(group) == []
    finally:
        if conmon.poll() is None:
            os.kill(pid, signal.SIGKILL)
            conmon.wait(timeout=30)


@pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("conmon") is None,
    reason="podman and conmon are not installed (apt-get install podman)",
)
def test_podman_runs_an_image_from_strata_save_through_strata_oci(tmp_path, rootdir):
    """podman (its storage, run dir and runtime state private to the test, vfs, cgroupfs) with
    strata-oci as its runtime: conmon's create, the pid file, start, the exit code, delete."""
    strata(rootdir, "save", "bb:latest", "-o", str(tmp_path / "bb.tar"))
    short = tempfile.mkdtemp(prefix="strata-podman-", dir="/tmp")  # podman wants a runroot of <= 50 bytes
    # the console script, before the venv is rebuilt with it, with a state root of the test's (podman
    # names none: strata-oci's default, /run/strata-oci, would outlive the test)
    runtime = tmp_path / "strata-oci"
    state = f"{short}/oci-state"
    runtime.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m runner.oci --root {state} "$@"\n')
    runtime.chmod(0o755)
    podman = [
        "podman",
        "--root",
        f"{short}/storage",
        "--runroot",
        f"{short}/run",
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
        "--tmpdir",
        f"{short}/tmp",
        "--runtime",
        str(runtime),
    ]
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]  # (no CAP_SYS_RESOURCE to raise them)
    podman_groups = [] if _cgroup_dirs("libpod_parent") else ["libpod_parent/conmon", "libpod_parent"]
    try:
        subprocess.run([*podman, "load", "-i", str(tmp_path / "bb.tar")], check=True, capture_output=True, timeout=120)
        res = subprocess.run(
            [*podman, "run", "--rm", "--network", "none", *limits, "docker.io/library/bb:latest", "true"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        res = subprocess.run(
            [
                *podman,
                "run",
                "--rm",
                "--network",
                "none",
                *limits,
                "docker.io/library/bb:latest",
                "sh",
                "-c",
                "echo $(cat /proc/1/cmdline | tr '\\0' ' '); exit 9",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 9 and res.stdout == "sh -c echo $(cat /proc/1/cmdline | tr '\\0' ' '); exit 9\n"
        assert os.listdir(state) == ["@seccomp"]  # the runtime kept its state there (deleted containers: none)
    finally:
        subprocess.run([*podman, "rm", "-af"], capture_output=True, timeout=120)
        with open("/proc/self/mountinfo") as f:
            assert short not in f.read()
        shutil.rmtree(short)
        for group in podman_groups:  # podman's own parent group and conmon's, if this test made them
            for d in _cgroup_dirs(group):
                os.rmdir(d)

"""containerd (the Debian package's, 1.6) running an image through strata-oci, as ``ctr run --runtime
io.containerd.runc.v2 --runc-binary <strata-oci>`` drives it: containerd's runc shim calls the binary
with ``--root <runc root>/<namespace> --log <bundle>/log.json --log-format json`` and ``create``,
``start``, ``exec --process F --detach --pid-file F``, ``ps``, ``pause``, ``resume``, ``kill``,
``delete``. A wrapper records each call, so the tests see that strata-oci, not runc, was driven.

The daemon is the test's own: its root, state, sockets, FIFOs and runc root under one temporary
dir, a namespace of its own, the CRI and the snapshotters it does not use disabled; it is stopped by
pid, the shims it started found by their ``-address`` and stopped by pid, what the container left
(a pid in strata-oci's state, a mount under the dir, its cgroups) removed by exact path. The shim
sockets go where containerd 1.6 always puts them (/run/containerd/s): what the test made there
is removed as well."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import REPO, stop_process, strata, wait_for

from runner.process import process_alive

CGROUP_ROOT = "/sys/fs/cgroup"
RUN_DIRS = ("/run/containerd", "/run/containerd/s", "/run/containerd/fifo")
IMAGE = "docker.io/library/bb:latest"

CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


class Containerd:
    """The test's daemon and the ``ctr`` that talks to it."""

    def __init__(self, directory: str, namespace: str, runtime: str, calls: str) -> None:
        self.dir, self.ns, self.runtime, self.calls = directory, namespace, runtime, calls
        self.sock = os.path.join(directory, "c.sock")
        self.runc_root = os.path.join(directory, "runc")
        self.proc: subprocess.Popen[bytes] | None = None

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ctr", "-a", self.sock, "-n", self.ns, *args], capture_output=True, text=True, timeout=timeout, **kwargs
        )  # type: ignore[call-overload]
        if check and res.returncode:
            raise AssertionError(f"ctr {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def run_args(self, *flags: str) -> list[str]:
        """``ctr run``'s flags for strata-oci (and FIFOs under the test's dir)."""
        return [
            "run",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-binary",
            self.runtime,
            "--runc-root",
            self.runc_root,
            "--fifo-dir",
            os.path.join(self.dir, "fifo"),
            *flags,
        ]

    def verbs(self) -> list[str]:
        """The verbs strata-oci was called with so far (the wrapper's record), global flags dropped."""
        if not os.path.exists(self.calls):
            return []
        verbs = []
        for line in open(self.calls).read().splitlines():
            args = line.split(" ")
            while args and args[0].startswith("--"):  # --root R --log L --log-format json
                args = args[2:] if args[0] in ("--root", "--log", "--log-format") else args[1:]
            verbs.append(args[0] if args else "")
        return verbs

    def shims(self) -> list[int]:
        """The shims this daemon started (their command line names its socket)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if b"containerd-shim" in cmdline[0] and os.fsencode(self.sock) in cmdline:
                    found.append(int(entry))
        return found


def _tasks(c: Containerd, check: bool = True) -> dict[str, tuple[int, str]]:
    rows = c.ctr("task", "ls", check=check).stdout.splitlines()[1:]
    return {r.split()[0]: (int(r.split()[1]), r.split()[2]) for r in rows if len(r.split()) == 3}


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, full_busybox):
    """containerd on a private socket and root, with a busybox image from ``strata save`` imported."""
    if os.geteuid() != 0 or shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("the containerd test runs as root with containerd installed (make test installs it)")
    work = tmp_path_factory.mktemp("containerd")
    store = str(work / "store")
    strata(store, "import", full_busybox, "bb:latest", "--change", 'CMD ["/bin/sh"]')
    strata(store, "save", "bb:latest", "-o", str(work / "bb.tar"))
    directory = tempfile.mkdtemp(prefix="strata-ctrd-", dir="/tmp")  # (socket paths: 108 bytes at most)
    calls = os.path.join(directory, "calls.log")
    runtime = os.path.join(directory, "strata-oci")
    with open(runtime, "w") as f:  # the console script, before the venv is rebuilt with it; and a record
        f.write(f'#!/bin/sh\necho "$*" >> {calls}\nPYTHONPATH={REPO} exec {sys.executable} -m runner.oci "$@"\n')
    os.chmod(runtime, 0o755)
    with open(os.path.join(directory, "config.toml"), "w") as f:
        f.write(CONFIG.format(d=directory))
    existed = {d for d in RUN_DIRS if os.path.isdir(d)}
    sockets_before = set(os.listdir("/run/containerd/s")) if os.path.isdir("/run/containerd/s") else set()
    c = Containerd(directory, f"strata-test-{os.getpid()}", runtime, calls)
    log = open(os.path.join(directory, "containerd.log"), "wb")
    c.proc = subprocess.Popen(
        ["containerd", "--config", os.path.join(directory, "config.toml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def up() -> bool:
            assert c.proc is not None and c.proc.poll() is None, open(log.name).read()[-2000:]
            return os.path.exists(c.sock) and c.ctr("version", check=False, timeout=10).returncode == 0

        wait_for(up, 60, "containerd's socket")
        c.ctr("images", "import", str(work / "bb.tar"))
        yield c
    finally:
        _stop(c, existed, sockets_before)
        log.close()


def _stop(c: Containerd, existed: set[str], sockets_before: set[str]) -> None:
    """Containers, shims, the daemon, then what they left (mounts, cgroups, dirs), each by pid or path."""
    assert c.proc is not None
    if c.proc.poll() is None:  # (best effort, through containerd: what follows does not depend on it)
        for name in _tasks(c, check=False):
            c.ctr("task", "kill", "-s", "SIGKILL", name, check=False)
            c.ctr("task", "delete", "-f", name, check=False)
        for name in c.ctr("containers", "ls", "-q", check=False).stdout.split():
            c.ctr("containers", "rm", name, check=False)
    state_dir = os.path.join(c.runc_root, c.ns)
    for cid in os.listdir(state_dir) if os.path.isdir(state_dir) else []:  # PID 1 of what containerd kept
        try:
            recorded = json.load(open(os.path.join(state_dir, cid, "state.json")))
        except OSError:
            continue
        if process_alive(recorded["pid"], recorded["pid_start"]):
            os.kill(recorded["pid"], signal.SIGKILL)
    for pid in c.shims():
        stop_process(pid)
    c.proc.send_signal(signal.SIGTERM)
    try:
        c.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        c.proc.kill()
        c.proc.wait(timeout=30)
    left = [line.split()[4] for line in open("/proc/self/mountinfo") if line.split()[4].startswith(c.dir + "/")]
    for mountpoint in sorted(left, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)
    for controller in sorted(os.listdir(CGROUP_ROOT)):
        group = os.path.join(CGROUP_ROOT, controller, c.ns)
        if os.path.isdir(group):
            for child in os.listdir(group):
                if os.path.isdir(os.path.join(group, child)):
                    os.rmdir(os.path.join(group, child))
            os.rmdir(group)
    if os.path.isdir("/run/containerd/s"):
        for name in set(os.listdir("/run/containerd/s")) - sockets_before:
            os.unlink(os.path.join("/run/containerd/s", name))
    for d in reversed(RUN_DIRS):
        if d not in existed and os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
    shutil.rmtree(c.dir)
    assert left == [], f"mounts left under the test's dir: {left}"


def _leftovers(c: Containerd, name: str) -> list[str]:
    """What a removed container must not have left: strata-oci's state, its cgroup, its mounts."""
    found = [d for d in (os.path.join(c.runc_root, c.ns, name),) if os.path.exists(d)]
    found += [
        os.path.join(CGROUP_ROOT, ctl, c.ns, name)
        for ctl in os.listdir(CGROUP_ROOT)
        if os.path.isdir(os.path.join(CGROUP_ROOT, ctl, c.ns, name))
    ]
    found += [line.split()[4] for line in open("/proc/self/mountinfo") if f"/{name}/rootfs" in line.split()[4]]
    return found


def test_ctr_run_rm_gives_the_commands_output_and_exit_code(containerd):
    c = containerd
    res = c.ctr(
        *c.run_args("--rm"), IMAGE, "hello", "sh", "-c", "echo hello from $(cat /proc/1/cmdline | tr '\\0' ' ')"
    )
    assert res.stdout == "hello from sh -c echo hello from $(cat /proc/1/cmdline | tr '\\0' ' ')\n"
    assert c.verbs()[:2] == ["create", "start"] and "delete" in c.verbs()  # strata-oci's, through the shim
    create = open(c.calls).read().splitlines()[0].split(" ")
    assert create[:6] == ["--root", f"{c.runc_root}/{c.ns}", "--log", create[3], "--log-format", "json"]
    assert create[3].endswith("/hello/log.json") and "--pid-file" in create
    failed = c.ctr(*c.run_args("--rm"), IMAGE, "seven", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    assert c.ctr("containers", "ls", "-q").stdout == ""
    assert _leftovers(c, "hello") == [] and _leftovers(c, "seven") == []


def test_ctr_run_of_a_missing_command_reports_the_runtimes_error(containerd):
    c = containerd
    res = c.ctr(*c.run_args("--rm"), IMAGE, "missing", "no-such-command", check=False)
    assert res.returncode != 0
    # the shim read it back from log.json ({"level": "error", "msg": ...}) and containerd passed it on
    assert 'OCI runtime create failed: exec: "no-such-command": executable file not found in $PATH' in res.stderr
    assert c.ctr("containers", "ls", "-q").stdout == "" and _leftovers(c, "missing") == []


def test_ctr_detached_task_takes_exec_ps_pause_kill_and_delete(containerd):
    c = containerd
    before = len(c.verbs())
    c.ctr(*c.run_args("-d"), IMAGE, "detached", "sleep", "1000")
    try:
        pid, status = _tasks(c)["detached"]
        assert status == "RUNNING" and process_alive(pid, None)
        ran = c.ctr(
            "task",
            "exec",
            "--fifo-dir",
            os.path.join(c.dir, "fifo"),
            "--exec-id",
            "e1",
            "detached",
            "sh",
            "-c",
            "echo from exec $(cat /proc/1/cmdline | tr '\\0' ' '); exit 4",
            check=False,
        )
        assert (ran.returncode, ran.stdout) == (4, "from exec sleep 1000\n")
        assert c.ctr("task", "ps", "detached").stdout.split()[2] == str(pid)
        c.ctr("task", "pause", "detached")
        assert _tasks(c)["detached"][1] == "PAUSED"
        c.ctr("task", "resume", "detached")
        assert _tasks(c)["detached"][1] == "RUNNING"
        c.ctr("task", "kill", "-s", "SIGKILL", "detached")
        wait_for(lambda: _tasks(c)["detached"][1] == "STOPPED", 30, "the task to stop")
        deleted = c.ctr("task", "delete", "detached")
        assert "exit code 137" in deleted.stderr  # the status the shim reaped, passed on
        c.ctr("containers", "rm", "detached")
        verbs = c.verbs()[before:]
        for verb in ("create", "start", "exec", "ps", "pause", "resume", "kill", "delete"):
            assert verb in verbs, (verb, verbs)
        assert not process_alive(pid, None) and _leftovers(c, "detached") == []
    finally:
        if "detached" in _tasks(c):
            c.ctr("task", "kill", "-s", "SIGKILL", "detached", check=False)
            c.ctr("task", "delete", "-f", "detached", check=False)
        c.ctr("containers", "rm", "detached", check=False)


def test_ctr_run_t_gives_the_container_a_terminal_through_the_console_socket(containerd):
    c = containerd
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            ["ctr", "-a", c.sock, "-n", c.ns, *c.run_args("--rm", "-t"), IMAGE, "tty", "sh", "-c", "tty; exit 3"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and select.select([master], [], [], deadline - time.monotonic())[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: ctr has gone, and the slave with it
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 3
        assert b"/dev/pts/0" in output, output  # the container's own devpts, through containerd's console socket
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert _leftovers(c, "tty") == []

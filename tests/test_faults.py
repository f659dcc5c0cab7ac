"""Faults, tried for real: a supervisor killed, a store whose disk fills up, ``run`` racing ``rmi``, a
writer killed mid-way. Each time strata says what is true and leaves nothing behind."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys

import pytest
from helpers import REPO, STRATA, strata, wait_for

from runner import cgroups
from unionfs import mountinfo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")


def _inspect(root: str, ref: str) -> dict:
    return json.loads(strata(root, "inspect", ref).out)[0]


def _raw_state(root: str, cid: str) -> dict:
    with open(os.path.join(root, "containers", cid, "state.json")) as f:
        return json.load(f)


def _cgroup(root: str, ref: str) -> cgroups.Cgroup:
    doc = _inspect(root, ref)
    return cgroups.load(int(doc["HostConfig"]["CgroupVersion"]), doc["Id"])


def _pidfd(pid: int) -> int:
    return os.pidfd_open(pid)


def _gone(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def test_a_killed_supervisor_takes_its_container_with_it(rootdir):
    """kill -9 of a detached container's supervisor: PID 1 and the union daemon go too, the mount
    goes, and every verb then tells the truth; start runs one instance again."""
    cid = strata(rootdir, "run", "-d", "--name", "orphan", "bb", "sleep", "1000").out.strip()
    state = _raw_state(rootdir, cid)
    merged = os.path.join(rootdir, "containers", cid, "merged")
    pid1, union = _pidfd(state["Pid"]), _pidfd(state["UnionPid"])
    try:
        os.kill(state["SupervisorPid"], signal.SIGKILL)
        wait_for(lambda: _gone(pid1), what="PID 1 to die with its supervisor")
        wait_for(lambda: _gone(union), what="the union daemon to end with its supervisor")
    finally:
        os.close(pid1)
        os.close(union)
    wait_for(lambda: not mountinfo.mounts_at(merged), what="the union to be unmounted")
    assert "Exited (255)" in strata(rootdir, "ps", "-a").out.splitlines()[1]
    assert "supervisor died" in _inspect(rootdir, "orphan")["State"]["Error"]
    for verb in (["kill"], ["exec", "orphan", "true"], ["top"]):
        res = strata(rootdir, *verb, *(["orphan"] if len(verb) == 1 else []), check=False)
        assert res.code != 0 and "not running" in res.err  # true now: nothing runs
    assert strata(rootdir, "stop", "orphan").code == 0  # nothing to stop; the state stays what it is
    assert "Exited (255)" in strata(rootdir, "ps", "-a").out.splitlines()[1]

    strata(rootdir, "start", "orphan")
    again = _raw_state(rootdir, cid)
    assert again["Status"] == "running" and again["SupervisorPid"] != state["SupervisorPid"]
    cg = _cgroup(rootdir, "orphan")
    assert cg.pids() == [again["Pid"]]  # one PID 1, one mount: never two instances on one upper
    assert len(mountinfo.mounts_at(merged)) == 1
    res = strata(rootdir, "start", "orphan", check=False)  # a running container: nothing more starts
    assert res.code == 0 and cg.pids() == [again["Pid"]] and len(mountinfo.mounts_at(merged)) == 1
    res = strata(rootdir, "rm", "orphan", check=False)
    assert res.code == 1 and "You cannot remove a running container" in res.err
    assert cg.pids() == [again["Pid"]]
    strata(rootdir, "rm", "-f", "orphan")


def test_concurrent_starts_run_one_instance(rootdir):
    strata(rootdir, "run", "--name", "twice", "bb", "true")
    procs = [
        subprocess.Popen(
            [*STRATA, "--root", rootdir, "start", "twice"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for p in procs:
        p.wait(timeout=60)
    # each start ran the command once, one after another, or said it was already running
    assert strata(rootdir, "wait", "twice").out.strip() == "0"
    with open(os.path.join(rootdir, "containers", _inspect(rootdir, "twice")["Id"], "container.log")) as f:
        assert f.read() == ""


@pytest.fixture
def small_store(tmp_path, full_busybox):
    """A store on a 24 MiB tmpfs, with the busybox image in it; unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "strata-test-small", str(mnt)], check=True)
    root = str(mnt / "store")
    try:
        strata(root, "import", full_busybox, "bb:latest", "--change", 'CMD ["/bin/sh"]')
        yield root
    finally:
        for cid in (
            os.listdir(os.path.join(root, "containers")) if os.path.isdir(os.path.join(root, "containers")) else []
        ):
            if len(cid) == 64:
                strata(root, "rm", "-f", cid, check=False)
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_loses_no_exit_code_and_leaves_nothing_behind(small_store):
    root = small_store
    sleeper = strata(root, "run", "-d", "--name", "sleeper", "bb", "sleep", "1000").out.strip()
    # the container fills the store's filesystem (its upper is there), then exits 3
    res = strata(
        root,
        "run",
        "--name",
        "filler",
        "bb",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fill bs=64k 2>/dev/null; echo lost output; exit 3",
        check=False,
    )
    assert res.code == 3
    assert os.statvfs(root).f_bavail == 0
    state = _inspect(root, "filler")["State"]
    assert (state["Status"], state["ExitCode"], state["Error"]) == ("exited", 3, "")
    assert "Exited (3)" in next(line for line in strata(root, "ps", "-a").out.splitlines() if "filler" in line)

    strata(root, "stop", "-t", "1", "sleeper")  # recorded with the disk full
    state = _inspect(root, "sleeper")["State"]
    assert (state["Status"], state["ExitCode"], state["Running"]) == ("exited", 137, False)

    before = sorted(os.listdir(os.path.join(root, "containers")))
    for args in (["run", "bb", "true"], ["run", "-d", "bb", "true"], ["run", "--rm", "bb", "true"]):
        res = strata(root, *args, check=False)
        assert res.code == 125 and len(res.err.strip().splitlines()) == 1, res.err
        assert "No space left on device" in res.err and "Traceback" not in res.err
        assert sorted(os.listdir(os.path.join(root, "containers"))) == before  # nothing left behind
    with open("/proc/self/mountinfo") as f:
        assert os.path.join(root, "containers") not in f.read()
    strata(root, "rm", "filler", sleeper)
    strata(root, "run", "--rm", "bb", "true")  # room again: the store works as before


def test_a_state_keeps_to_its_blocks_whatever_its_error(tmp_path):
    """An Error of any length and script (the user names the command it quotes) is capped once
    encoded: a state is always exactly one 4 KiB block, so it and its spare never need another."""
    from runner.containers import STATE_BLOCK, Container

    c = Container(str(tmp_path), {"Id": "x" * 64, "Name": "x"})
    c.set_state(Status="exited", ExitCode=127, Error='exec: "' + "é\U0001f600" * 3000 + '": not found')
    c.set_state(Status="exited", ExitCode=0, Error="")
    for name in ("state.json", "state.spare"):
        assert os.path.getsize(tmp_path / name) == STATE_BLOCK
    assert c.state()["ExitCode"] == 0


def test_rm_never_removes_a_container_a_supervisor_holds(rootdir):
    """A container being started (its supervisor holds supervisor.lock; its state may still say
    exited) is not removed under it, with or without -f."""
    strata(rootdir, "run", "--name", "held", "bb", "true")
    cid = _inspect(rootdir, "held")["Id"]
    lock = os.open(os.path.join(rootdir, "containers", cid, "supervisor.lock"), os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(os.path.join(rootdir, "containers", cid, "state.json")) as f:
            state = json.load(f)
        state["Status"] = "starting"  # as a start writes it first
        with open(os.path.join(rootdir, "containers", cid, "state.json"), "w") as f:
            json.dump(state, f)
        res = strata(rootdir, "rm", "held", check=False)
        assert res.code == 1 and "You cannot remove a running container" in res.err
        assert os.path.isdir(os.path.join(rootdir, "containers", cid))
    finally:
        os.close(lock)
    assert _inspect(rootdir, "held")["State"]["Status"] == "exited"  # its supervisor is gone: so it reads
    strata(rootdir, "rm", "held")


def test_a_supervisor_that_fails_after_the_start_leaves_nothing_running(rootdir):
    """Recording the running state fails (injected): the container is killed, not left unwatched,
    and run -d says so in one line instead of waiting for the container's end."""
    script = (
        "import sys\n"
        "import runner.containers as rc\n"
        "real = rc.Container.set_state\n"
        "def failing(self, read=None, **changes):\n"
        "    if changes.get('Status') == 'running':\n"
        "        raise OSError(5, 'Input/output error (injected)')\n"
        "    return real(self, read, **changes)\n"
        "rc.Container.set_state = failing\n"
        "from runner.cli import main\n"
        f"sys.exit(main(['--root', {rootdir!r}, 'run', '-d', '--name', 'doomed', 'bb', 'sleep', '1000']))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "STRATA_NO_ZYGOTE": "1"},
        timeout=60,
    )
    assert res.returncode == 125 and "Input/output error (injected)" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    cid = _inspect(rootdir, "doomed")["Id"]
    assert _cgroup(rootdir, "doomed").pids() == []
    assert not mountinfo.mounts_at(os.path.join(rootdir, "containers", cid, "merged"))

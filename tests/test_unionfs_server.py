"""``strata-unionfs`` (``unionfs.client``) and its warm mount server (``unionfs.server``), as a mount
program is exec'd: the console script the package installs (a copy pointed at this checkout), its
exit code and one line of error, the mount it leaves, and the server it asks.

Each test has a server directory of its own (``STRATA_UNIONFS_DIR``); the servers started in it,
their spare daemons and any daemon left are stopped by pid, and every mountpoint is unmounted by
exact path."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile

import pytest
from helpers import wait_for
from mount_server_support import children, console_script, exited, naming, server_pids, stop
from unionfs_support import WHITEOUT, is_mounted, make_layer

from unionfs import client
from unionfs.mount import daemon_pid


class Caller:
    """Runs the console script as a mount program is run: its own cwd, its env, stderr kept."""

    def __init__(self, tmp_path) -> None:
        self.dir = str(tmp_path / "servers")
        os.mkdir(self.dir, 0o700)
        self.script = console_script(str(tmp_path))
        self.env = {**os.environ, "STRATA_UNIONFS_DIR": self.dir}
        self.env.pop("PYTHONPATH", None)
        self.points: list[str] = []

    def __call__(self, *args: str, cwd: str = "/", preexec: object = None) -> subprocess.CompletedProcess[str]:
        self.points += [os.path.join(cwd, a) for a in args if not a.startswith("-")]
        return subprocess.run(
            [self.script, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=60, preexec_fn=preexec
        )  # type: ignore[arg-type]

    def wait_for_server(self) -> int:
        wait_for(lambda: bool(server_pids(self.dir)), what="the mount server to listen")
        return server_pids(self.dir)[0]

    def cleanup(self) -> None:
        for point in self.points:
            while is_mounted(point):
                pid = daemon_pid(point)
                subprocess.run(["fusermount3", "-u", point], check=True)
                if pid is not None:
                    assert exited(pid)
        servers = server_pids(self.dir)
        spares = [c for s in servers for c in children(s)]
        stop(servers)
        stop(spares)


@pytest.fixture
def caller(tmp_path):
    c = Caller(tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


def _layers(tmp_path) -> tuple[str, str, str, str]:
    lower = make_layer(str(tmp_path / "lower"), {"etc/passwd": "root\n", "gone": "x", "keep": "k"})
    top = make_layer(str(tmp_path / "top"), {"gone": WHITEOUT, "new": "n"})
    links = tmp_path / "l"  # containers-storage's l/ links: the lowerdir entries are symlinks
    links.mkdir()
    os.symlink(top, links / "A")
    os.symlink(lower, links / "B")
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()
    return str(links / "A"), str(links / "B"), str(tmp_path / "upper"), str(tmp_path / "work")


def test_the_first_mount_starts_a_server_and_the_next_is_forked_by_it(tmp_path, caller):
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    first = caller("-o", f"lowerdir={a}:{b},upperdir={upper},workdir={work}", merged)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert sorted(os.listdir(merged)) == ["etc", "keep", "new"]
    cold = daemon_pid(merged)
    assert cold is not None
    subprocess.run(["fusermount3", "-u", merged], check=True)
    assert exited(cold)

    server = caller.wait_for_server()
    assert os.stat(caller.dir).st_mode & 0o777 == 0o700
    spare = children(server)
    assert len(spare) == 1  # a daemon forked before anyone asks, waiting for its order
    warm = caller("-o", f",lowerdir={a}:{b},upperdir={upper},workdir={work},,volatile", merged)  # as podman run --rm
    assert warm.returncode == 0 and warm.stderr == "", warm.stderr
    pid = daemon_pid(merged)
    assert pid == spare[0]  # the spare took the order: no fork, no trio start on the caller's time
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == server
    with open(os.path.join(merged, "new"), "a") as f:
        f.write("+")
    os.unlink(os.path.join(merged, "keep"))
    assert os.path.isdir(os.path.join(work, "incompat", "volatile"))
    subprocess.run(["fusermount3", "-u", merged], check=True)
    assert exited(pid)
    assert sorted(os.listdir(upper)) == [".wh.keep", "new"]  # the OCI spelling, as strata's layers
    assert not os.path.exists(os.path.join(work, "incompat"))
    wait_for(lambda: len(children(server)) == 1 and children(server) != spare, what="the next spare")


def test_the_default_server_directory_if_others_may_only_enter_it_is_closed_and_used(tmp_path, caller):
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    xdg = tempfile.mkdtemp(prefix="xdg-", dir="/tmp")  # short: the socket's path has 107 bytes at most
    try:
        caller.dir = os.path.join(xdg, "strata-unionfs")  # $XDG_RUNTIME_DIR/strata-unionfs: the default place
        os.mkdir(caller.dir)
        os.chmod(caller.dir, 0o755)  # as a makedirs of a path under it would have made it
        del caller.env["STRATA_UNIONFS_DIR"]
        caller.env["XDG_RUNTIME_DIR"] = xdg
        assert caller("-o", f"lowerdir={a}:{b},upperdir={upper},workdir={work}", merged).returncode == 0
        subprocess.run(["fusermount3", "-u", merged], check=True)
        caller.wait_for_server()
        assert os.stat(caller.dir).st_mode & 0o777 == 0o700
    finally:
        caller.cleanup()  # (its servers, by pid, before their directory goes)
        shutil.rmtree(xdg)


def test_a_named_server_directory_others_may_enter_is_refused_as_it_is(tmp_path, caller):
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    os.chmod(caller.dir, 0o755)  # named by STRATA_UNIONFS_DIR: the user's to set, not ours to change
    assert caller("-o", f"lowerdir={a}:{b},upperdir={upper},workdir={work}", merged).returncode == 0
    subprocess.run(["fusermount3", "-u", merged], check=True)
    assert os.stat(caller.dir).st_mode & 0o777 == 0o755 and os.listdir(caller.dir) == []
    assert naming(caller.dir) == []  # (a server would have been started before the mount program exited)


def test_relative_paths_are_the_callers(tmp_path, caller):
    """containers-storage runs its mount program in the overlay home: relative paths are from there."""
    a, b, upper, work = _layers(tmp_path)
    for _ in range(2):  # cold, then through the server
        res = caller("-o", "lowerdir=l/A:l/B,upperdir=upper,workdir=work", "merged", cwd=str(tmp_path))
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "merged" / "etc" / "passwd").read_text() == "root\n"
        pid = daemon_pid(str(tmp_path / "merged"))
        subprocess.run(["fusermount3", "-u", str(tmp_path / "merged")], check=True)
        assert pid is not None and exited(pid)
        caller.wait_for_server()


@pytest.mark.parametrize("through", ["cold", "server"])
def test_bad_options_give_one_line_and_mount_nothing(tmp_path, caller, through):
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    if through == "server":
        assert caller("-o", f"lowerdir={a}", merged).returncode == 0
        subprocess.run(["fusermount3", "-u", merged], check=True)
        server = caller.wait_for_server()
        before = children(server)
    base = f"lowerdir={a}:{b},upperdir={upper},workdir={work}"
    for extra, words in (
        (",bogus", "unknown option 'bogus'"),
        (",fsname=x", "unknown option 'fsname=x'"),
        (",max_read=4096", "unknown option 'max_read=4096'"),
        (',context="system_u:object_r:container_file_t:s0:c1,c2"', "SELinux labels are not supported"),
        (",fsync=2", "fsync=2"),
        (",squash_to_uid=5", "squash_to_uid"),
    ):
        res = caller("-o", base + extra, merged)
        assert res.returncode == 1 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("unionfs: ") and words in res.stderr, res.stderr
        assert not is_mounted(merged)
    res = caller("-o", f"lowerdir={tmp_path}/missing", merged)
    assert res.returncode == 1 and res.stderr == f"unionfs: {tmp_path}/missing: not a directory\n"
    if through == "server":
        assert children(server) == before  # nothing forked for them: the spare still waits
    else:
        assert server_pids(caller.dir) == []  # and no server started by a mount that failed


def test_what_containers_storage_and_its_mountopt_pass_is_taken(tmp_path, caller):
    """Empty items, fsync=0, an empty SELinux context, nodev (storage.conf's mountopt), allow_other."""
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    for _ in range(2):
        res = caller(
            "-o", f'lowerdir={a}:{b},,upperdir={upper},workdir={work},fsync=0,context="",nodev,allow_other,', merged
        )
        assert res.returncode == 0, res.stderr
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if f" {merged} " in ln)
        assert "nodev" in line.split()[5] and "allow_other" in line.split()[-1]
        fd = os.open(os.path.join(merged, "new"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"!")
            os.fsync(fd)  # fsync=0: answered at once
        finally:
            os.close(fd)
        pid = daemon_pid(merged)
        subprocess.run(["fusermount3", "-u", merged], check=True)
        assert pid is not None and exited(pid)
        caller.wait_for_server()


def test_a_caller_allowed_more_open_files_than_the_server_mounts_by_itself(tmp_path, caller):
    """A server started under a lower RLIMIT_NOFILE cannot give a daemon the caller's: it answers
    stale and stops listening; the caller mounts cold and starts a server that can."""
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard}: the test lowers it below the caller's")

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    assert caller("-o", f"lowerdir={a}", merged, preexec=lower_limit).returncode == 0
    subprocess.run(["fusermount3", "-u", merged], check=True)
    low = caller.wait_for_server()
    spare = children(low)
    res = caller("-o", f"lowerdir={a}", merged)
    assert res.returncode == 0, res.stderr
    pid = daemon_pid(merged)
    assert pid not in spare
    with open(f"/proc/{pid}/limits") as f:
        assert any(line.startswith("Max open files") and str(hard) in line for line in f)
    assert exited(low)  # stale: it ended once it stopped listening
    subprocess.run(["fusermount3", "-u", merged], check=True)
    assert exited(pid)
    assert caller.wait_for_server() != low


def test_a_server_only_mounts_in_its_own_namespaces(tmp_path, caller):
    """The socket is named by the caller's user and mount namespaces: a caller in a mount namespace
    of its own gets a server of its own, and the mount is made there, not in ours."""
    a, b, upper, work = _layers(tmp_path)
    merged = str(tmp_path / "merged")
    assert caller("-o", f"lowerdir={a}", merged).returncode == 0
    subprocess.run(["fusermount3", "-u", merged], check=True)
    ours = caller.wait_for_server()
    spare = children(ours)
    inner = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{caller.script} -o lowerdir={a} {merged} && grep -c " {merged} " /proc/self/mountinfo'
            f" && readlink /proc/self/ns/mnt",
        ],
        env=caller.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    namespace = inner.stdout.split()[-1] if inner.stdout.split() else ""
    try:
        assert inner.returncode == 0, inner.stderr
        count = inner.stdout.split()[0]
        assert count == "1" and not is_mounted(merged)  # made in its namespace only
        assert children(ours) == spare  # not ours to make
        key = f"{os.stat('/proc/self/ns/user').st_ino}-{namespace.strip('mnt:[]')}"
        wait_for(
            lambda: os.path.exists(os.path.join(caller.dir, client.socket_name(key)[:-5] + ".pid")),
            what="a server for that namespace",
        )  # started once the (cold) mount was made
        assert len(server_pids(caller.dir)) == 2
    finally:
        # that namespace's daemon and server (and its spare) are stopped by pid: nothing else is in it
        stop([int(p) for p in os.listdir("/proc") if p.isdigit() and _in_namespace(int(p), namespace)])


def _in_namespace(pid: int, namespace: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == namespace
    except OSError:
        return False

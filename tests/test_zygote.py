"""``strata`` hands each command to a warm zygote (``runner.launch`` -> ``runner.zygote``): the command
must behave exactly as if it ran in the client's own process."""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

from helpers import REPO, STRATA, docker_v12_save, stop_process, strata, tar_bytes, wait_for, zygote_pid


def _warm(root: str, directory: str) -> int:
    """Make sure a zygote listens in ``directory``; return its pid."""
    strata(root, "images")
    wait_for(lambda: zygote_pid(directory) is not None, what="the zygote to listen")
    pid = zygote_pid(directory)
    assert pid is not None
    return pid


def _inspect(root: str, ref: str) -> dict:
    return json.loads(strata(root, "inspect", ref).out)[0]


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_a_foreground_run_is_a_fork_of_the_zygote(rootdir, zygote_dir):
    zygote = _warm(rootdir, zygote_dir)
    proc = subprocess.Popen(
        [*STRATA, "--root", rootdir, "run", "--name", "forked", "bb", "sh", "-c", "echo ready; exec sleep 1000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        # PID 1 may print before its supervisor records it running (once it saw the exec)
        wait_for(lambda: _inspect(rootdir, "forked")["State"]["Running"], what="the run recorded running")
        doc = _inspect(rootdir, "forked")
        with open(os.path.join(rootdir, "containers", doc["Id"], "state.json")) as f:
            supervisor = json.load(f)["SupervisorPid"]
        assert supervisor != proc.pid and _ppid(supervisor) == zygote
        strata(rootdir, "stop", "-t", "1", "forked")
        assert proc.wait(timeout=30) == 137  # SIGKILLed after the grace period: sleep ignores TERM as PID 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stdio_exit_code_cwd_umask_and_environment_are_the_clients(rootdir, zygote_dir, tmp_path):
    _warm(rootdir, zygote_dir)
    env = {**os.environ, "PYTHONPATH": REPO, "GREETING": "hello from the client"}
    res = subprocess.run(
        [
            *STRATA,
            "--root",
            rootdir,
            "run",
            "-i",
            "--rm",
            "-e",
            "GREETING",
            "bb",
            "sh",
            "-c",
            'cat; echo "$GREETING"; echo err >&2; exit 3',
        ],
        input=b"piped in\n",
        capture_output=True,
        cwd=REPO,
        env=env,
    )
    assert (res.returncode, res.stdout, res.stderr) == (3, b"piped in\nhello from the client\n", b"err\n")
    # a relative path is the client's cwd; the file gets the client's umask
    work = tmp_path / "cwd"
    work.mkdir()
    subprocess.run(
        [*STRATA, "--root", rootdir, "save", "-o", "out.tar", "bb"],
        cwd=work,
        env=env,
        check=True,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert (work / "out.tar").stat().st_mode & 0o777 == 0o600
    # a usage error: argparse's exit code and message
    res = subprocess.run([*STRATA, "--root", rootdir, "no-such-verb"], capture_output=True, cwd=REPO, env=env)
    assert res.returncode == 125 and b"is not a strata command" in res.stderr


def test_limits_affinity_and_niceness_are_the_clients(rootdir, zygote_dir):
    _warm(rootdir, zygote_dir)
    cpu = max(os.sched_getaffinity(0))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        os.sched_setaffinity(0, {cpu})
        os.nice(3)

    res = subprocess.run(
        [
            *STRATA,
            "--root",
            rootdir,
            "run",
            "--rm",
            "bb",
            "sh",
            "-c",
            "ulimit -n; grep Cpus_allowed_list /proc/self/status; cut -d' ' -f19 /proc/self/stat",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        preexec_fn=limited,
        check=True,
    )
    lines = res.stdout.split("\n")
    assert lines[0] == "100" and lines[1].split()[-1] == str(cpu) and lines[2] == "3"
    assert zygote_pid(zygote_dir) is not None  # lower limits: served by the same zygote


def test_a_command_killed_by_a_signal_kills_the_client_alike(root, zygote_dir, tmp_path):
    strata(root, "images")
    wait_for(lambda: zygote_pid(zygote_dir) is not None, what="the zygote to listen")
    archive = tmp_path / "one.tar"
    archive.write_bytes(docker_v12_save([tar_bytes([{"name": "f", "data": b"x"}])], ["one:1"]))
    res = subprocess.run(
        [*STRATA, "--root", root, "load", "-i", str(archive)],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "STRATA_FAILPOINT": "layer-published"},
    )
    assert res.returncode == -signal.SIGKILL


def test_a_client_that_goes_away_hangs_up_its_container(rootdir, zygote_dir):
    """SIGHUP, as a closed terminal would send (PID 1 ignores it unless it has a handler, and keeps
    running, as a container does when ``docker run``'s client dies)."""
    _warm(rootdir, zygote_dir)
    proc = subprocess.Popen(
        [
            *STRATA,
            "--root",
            rootdir,
            "run",
            "--name",
            "orphaned",
            "bb",
            "sh",
            "-c",
            "trap 'exit 9' HUP; echo ready; while :; do sleep 1; done",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()

    def exited() -> bool:
        return json.loads(strata(rootdir, "inspect", "orphaned").out)[0]["State"]["Status"] == "exited"

    wait_for(exited, what="the hung-up container to stop")
    assert json.loads(strata(rootdir, "inspect", "orphaned").out)[0]["State"]["ExitCode"] == 9
    with open("/proc/self/mountinfo") as f:
        assert rootdir not in f.read()


def test_a_worker_takes_a_hang_up_even_from_a_zygote_that_ignores_it(root, tmp_path):
    """A zygote started by a client that ignored SIGHUP (nohup) ignores it too: its workers must not,
    or a command whose client went away runs on (and a container's PID 1 could not trap it)."""
    directory = tmp_path / "zygote"
    directory.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": REPO, "STRATA_ZYGOTE_DIR": str(directory)}
    subprocess.run(
        [*STRATA, "--root", root, "images"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    wait_for(lambda: zygote_pid(str(directory)) is not None, what="the zygote to listen")
    pid = zygote_pid(str(directory))
    assert pid is not None
    client = subprocess.Popen(
        [*STRATA, "--root", root, "load", "-q"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert client.stdin is not None
    try:
        assert _sigign(pid) & 1 << (signal.SIGHUP - 1)  # else this test proves nothing
        pipe = os.fstat(client.stdin.fileno()).st_ino

        def reading() -> list[int]:  # the worker: a child of the zygote, reading our pipe (stdin kept open)
            return [w for w in _children(pid) if _stdin_inode(w) == pipe]

        wait_for(reading, what="the worker to read the archive")
        [worker] = reading()
        client.kill()
        client.wait()
        wait_for(lambda: worker not in _children(pid), what="the hung-up worker to end")
    finally:
        client.stdin.close()
        if client.poll() is None:
            client.kill()
            client.wait()
        stop_process(pid)


def _sigign(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _stdin_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/fd/0").st_ino
    except OSError:
        return None


def test_a_zygote_steps_down_when_strata_changes(tmp_path, root):
    """A copy of strata, with a zygote of its own: touching one of its files makes the zygote stale."""
    copy = tmp_path / "copy"
    for package in ("store", "unionfs", "runner"):
        shutil.copytree(os.path.join(REPO, package), copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    directory = tmp_path / "zygote"
    directory.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(copy), "STRATA_ZYGOTE_DIR": str(directory)}

    def run() -> str:
        return subprocess.run(
            [sys.executable, "-m", "runner", "--root", root, "images", "-q"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    first = None
    try:
        run()
        wait_for(lambda: zygote_pid(str(directory)) is not None, what="the first zygote")
        first = zygote_pid(str(directory))
        assert first is not None
        later = time.time() + 10
        os.utime(copy / "runner" / "cli" / "format.py", (later, later))
        assert run() == ""  # answered "stale": ran in the client, and started a new zygote
        wait_for(lambda: zygote_pid(str(directory)) not in (None, first), what="a new zygote")
        wait_for(lambda: not os.path.exists(f"/proc/{first}"), what="the stale zygote to exit")
    finally:
        for pid in {first, zygote_pid(str(directory))} - {None}:
            assert pid is not None
            stop_process(pid)


def test_garbage_on_the_socket_does_not_hurt_the_zygote(root, zygote_dir):
    strata(root, "images")
    wait_for(lambda: zygote_pid(zygote_dir) is not None, what="the zygote to listen")
    pid = zygote_pid(zygote_dir)
    for garbage in (b"", b"\xff" * 3, (10).to_bytes(4, "little") + b"not a request", b"\0\0\0\x7f" + b"x" * 100):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(os.path.join(zygote_dir, "zygote.sock"))
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""  # no answer, connection closed
    assert strata(root, "images", "-q").code == 0
    assert zygote_pid(zygote_dir) == pid


def test_python_and_python3_of_one_venv_share_a_zygote(root, zygote_dir):
    """The installed ``strata`` runs the venv's ``python3``, ``python -m runner`` its ``python``:
    links to one interpreter, so one zygote serves both (it would step down for each in turn)."""
    bin_dir = os.path.dirname(sys.executable)
    names = [n for n in ("python", "python3") if os.path.exists(os.path.join(bin_dir, n))]
    assert len(names) == 2 and len({os.path.realpath(os.path.join(bin_dir, n)) for n in names}) == 1
    strata(root, "images")
    wait_for(lambda: zygote_pid(zygote_dir) is not None, what="the zygote to listen")
    pid = zygote_pid(zygote_dir)
    for name in names * 2:
        res = subprocess.run(
            [os.path.join(bin_dir, name), "-m", "runner", "--root", root, "images", "-q"],
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        assert (res.returncode, res.stderr) == (0, b"")
        assert zygote_pid(zygote_dir) == pid, name  # not told "stale": the same zygote still listens


def test_without_a_private_directory_or_when_told_the_command_runs_in_the_client(root, tmp_path, busybox_rootfs):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    for env in (
        {"STRATA_ZYGOTE_DIR": str(shared)},
        {"STRATA_ZYGOTE_DIR": str(tmp_path / "unused"), "STRATA_NO_ZYGOTE": "1"},
    ):
        res = subprocess.run(
            [*STRATA, "--root", root, "import", busybox_rootfs, "bb"],
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO, **env},
        )
        assert res.returncode == 0, res.stderr
        assert not os.path.exists(os.path.join(env["STRATA_ZYGOTE_DIR"], "zygote.sock"))
    assert os.listdir(shared) == []


def test_a_directory_of_ours_others_may_only_enter_is_closed_at_the_default_place_only(root, tmp_path, busybox_rootfs):
    """A 0755 directory at the default place (``os.makedirs`` made /run/strata so) is closed to
    0700 and used: refused, every later command would be cold. One the user named is refused as it
    is (the command runs in the client), never chmod'ed: it is theirs (their home, say)."""
    from runner import launch

    opened = tmp_path / "opened"
    opened.mkdir()
    os.chmod(opened, 0o755)
    env = {**os.environ, "PYTHONPATH": REPO, "STRATA_ZYGOTE_DIR": str(opened)}
    res = subprocess.run([*STRATA, "--root", root, "import", busybox_rootfs, "bb"], capture_output=True, env=env)
    assert res.returncode == 0, res.stderr
    assert os.stat(opened).st_mode & 0o777 == 0o755 and os.listdir(opened) == []
    assert launch.private_dir(str(opened), heal=True)  # what the client does with its default place
    assert os.stat(opened).st_mode & 0o777 == 0o700
    os.chmod(opened, 0o775)  # a group may write there: never taken
    assert not launch.private_dir(str(opened), heal=True) and os.stat(opened).st_mode & 0o777 == 0o775


def test_a_client_in_a_removed_directory_still_works(root, zygote_dir, tmp_path):
    strata(root, "images")
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_and_remove() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    res = subprocess.run(
        [*STRATA, "--root", root, "images", "-q"],
        capture_output=True,
        preexec_fn=enter_and_remove,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert (res.returncode, res.stderr) == (0, b"")


def test_many_clients_at_once_and_a_clean_stop(root, tmp_path):
    """A zygote of its own: 20 commands at once all succeed; SIGTERM takes its socket with it."""
    directory = tmp_path / "zygote"
    directory.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": REPO, "STRATA_ZYGOTE_DIR": str(directory)}
    subprocess.run([*STRATA, "--root", root, "images"], env=env, cwd=REPO, check=True, capture_output=True)
    wait_for(lambda: zygote_pid(str(directory)) is not None, what="the zygote to listen")
    pid = zygote_pid(str(directory))
    assert pid is not None
    try:
        procs = [
            subprocess.Popen(
                [*STRATA, "--root", root, "images", "-q"],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(20)
        ]
        results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
        assert all(code == 0 and err == b"" for _out, err, code in results)
        assert zygote_pid(str(directory)) == pid  # the same zygote still listens
    finally:
        stop_process(pid)
    assert sorted(os.listdir(directory)) == ["zygote.lock"]  # socket and pid file gone with it


def _own_zygote(root: str, tmp_path: pathlib.Path) -> tuple[dict[str, str], int]:
    """A zygote of the test's own, listening (started by a first command): the environment that
    names its directory, and its pid."""
    directory = tmp_path / "zygote"
    directory.mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": REPO, "STRATA_ZYGOTE_DIR": str(directory)}
    subprocess.run([*STRATA, "--root", root, "images"], env=env, check=True, capture_output=True)
    wait_for(lambda: zygote_pid(str(directory)) is not None, what="the zygote to listen")
    zygote = zygote_pid(str(directory))
    assert zygote is not None
    return env, zygote


def _inheritable_fds(pid: int) -> list[int]:
    """The fds above 2 of ``pid`` an exec would pass on (no close-on-exec flag)."""
    found = []
    for fd in map(int, os.listdir(f"/proc/{pid}/fd")):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        except FileNotFoundError:  # closed meanwhile
            continue
        if fd > 2 and not flags & os.O_CLOEXEC:
            found.append(fd)
    return found


def _syscall(pid: int) -> str | None:
    """The number of the system call ``pid`` is blocked in (``running`` if none); None if it is gone."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0]
    except FileNotFoundError:
        return None


def _ready(pid: int) -> bool:
    """Is ``pid`` blocked in poll (x86-64's poll or ppoll): a spare ready, waiting for its order?"""
    return _syscall(pid) in ("7", "271")


def _ready_spare(zygote: int) -> int:
    """The zygote's one spare, once it is ready."""
    wait_for(lambda: len(_children(zygote)) == 1 and _ready(_children(zygote)[0]), what="a ready spare")
    return _children(zygote)[0]


def test_a_spare_forked_ahead_takes_the_next_command_and_passes_no_fd_on(root, tmp_path):
    """The zygote forks a worker before its request comes (a spare), and another once it is taken.
    The next quick command runs in it, in the client's cwd; the connection and stdio it was handed,
    like every fd of its own, are not passed on to what it execs (a container's processes)."""
    env, zygote = _own_zygote(root, tmp_path)
    try:
        spare = _ready_spare(zygote)
        here = tmp_path / "here"
        here.mkdir()
        load = subprocess.Popen(  # waits for its archive on stdin: long enough to look at it
            [*STRATA, "--root", root, "load", "-i", "-"],
            cwd=here,
            env=env,
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: os.readlink(f"/proc/{spare}/cwd") == str(here), what="the spare to take the command")
            assert _inheritable_fds(spare) == []
            wait_for(lambda: len(_children(zygote)) == 2, what="the next spare")
            (following,) = set(_children(zygote)) - {spare}
        finally:
            _out, err = load.communicate(b"", timeout=30)  # an empty archive: one line, and the end
        assert load.returncode == 1 and err.count(b"\n") == 1, err
        # a command that may leave processes behind (here: ``wait``) is forked from the zygote itself:
        # the spare's copied pages would stay with them
        wait_for(lambda: _ready(following), what="the next spare to be ready")
        res = subprocess.run([*STRATA, "--root", root, "wait", "nosuch"], env=env, capture_output=True, timeout=60)
        assert res.returncode != 0 and res.stderr.count(b"\n") == 1
        assert _ready(following) and os.readlink(f"/proc/{following}/cwd") == "/"
    finally:
        stop_process(zygote)
    assert not os.path.exists(f"/proc/{following}")  # reaped by the zygote before it ended


def test_a_quick_command_handed_to_a_spare_runs_once(root, tmp_path):
    """Quick commands, each handed to a ready spare, each run once. (A spare may take its order and
    close its end before the zygote is done sending: no dead spare, whose command is forked again.
    Seen under load, as an error said twice; rarely on a quiet machine.)"""
    env, zygote = _own_zygote(root, tmp_path)
    try:
        for _ in range(20):
            _ready_spare(zygote)
            res = subprocess.run(
                [*STRATA, "--root", root, "inspect", "nosuch"], env=env, capture_output=True, text=True, timeout=60
            )
            assert (res.returncode, res.stderr.count("\n")) == (1, 1), res.stderr
    finally:
        stop_process(zygote)


def test_a_spare_that_died_unused_stalls_no_one(root, tmp_path):
    """A ready spare killed while the zygote is busy: the next request finds it dead (EPIPE) and is
    forked at once, and the worker's pidfd may take the dead spare's fd number while the spare's
    hang-up is still among the events being handled. That event is no sign the worker ended: the
    zygote must not wait for it (it would serve no one until that command ends)."""
    env, zygote = _own_zygote(root, tmp_path)
    load = None
    try:
        spare = _ready_spare(zygote)
        os.kill(zygote, signal.SIGSTOP)
        try:
            os.kill(spare, signal.SIGKILL)
            load = subprocess.Popen(  # a quick verb, waiting on its stdin: it lasts while we keep it open
                [*STRATA, "--root", root, "load", "-i", "-"], env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE
            )
            wait_for(lambda: _syscall(load.pid) == "45", what="the client's request sent")  # recvfrom
        finally:
            os.kill(zygote, signal.SIGCONT)
        res = subprocess.run([*STRATA, "--root", root, "inspect", "nosuch"], env=env, capture_output=True, timeout=60)
        assert (res.returncode, res.stderr.count(b"\n")) == (1, 1), res.stderr
    finally:
        if load is not None:
            load.communicate(b"", timeout=60)
        stop_process(zygote)


def test_a_command_that_ends_before_its_pid_is_told_does_not_run_again(tmp_path, monkeypatch):
    """The zygote tells the client the worker's pid after forking it, and the worker tells the
    command's end itself, on the same socket: a quick command (``inspect``) can end first. The
    client then has the command's exit code, and must not take the first line for a zygote that
    failed and run the command a second time itself (seen as ``inspect`` printing twice)."""
    import threading

    from runner import launch

    directory = tmp_path / "zygote"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("STRATA_ZYGOTE_DIR", str(directory))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / launch.SOCKET_NAME))
    listener.listen(1)

    def zygote() -> None:  # a worker that was quicker than its zygote
        conn, _ = listener.accept()
        with conn:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            for fd in fds:
                os.close(fd)
            size = int.from_bytes(data[:4], "little")
            while len(data) < 4 + size:
                data += conn.recv(1 << 16)
            conn.sendall(b"exit 3\npid 4242\n")

    server = threading.Thread(target=zygote)
    server.start()
    try:
        assert launch.via_zygote(["images", "-q"]) == 3  # None: "run it here", a second time
    finally:
        server.join(timeout=10)
        listener.close()
    assert not server.is_alive()


def _leaf_cgroup() -> str:
    """A fresh cgroup of the test's own: in cgroup v2's tree, else in v1's pids hierarchy."""
    base = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/pids"
    path = os.path.join(base, f"strata-test-zygote-{os.getpid()}")
    os.mkdir(path)
    return path


def test_a_client_in_other_cgroups_is_not_served_by_a_zygote_started_elsewhere(rootdir, zygote_dir):
    """A worker makes and limits its containers from where it runs: a zygote started in another login
    session's scope, or outside the subtree systemd delegates, would put them elsewhere or leave them
    unlimited. A client from other cgroups runs the command itself and starts a zygote where it is."""
    first = _warm(rootdir, zygote_dir)
    group = _leaf_cgroup()
    try:
        res = subprocess.run(
            [*STRATA, "--root", rootdir, "images", "-q"],
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            check=True,
            preexec_fn=lambda: open(os.path.join(group, "cgroup.procs"), "w").write("0"),
        )
        assert res.stdout.decode().strip() != ""  # (the command ran, in the client)
        wait_for(lambda: zygote_pid(zygote_dir) not in (None, first), what="a zygote started from the other cgroup")
        second = zygote_pid(zygote_dir)
        assert second is not None
        with open(os.path.join(group, "cgroup.procs")) as f:
            assert str(second) in f.read().split()
        wait_for(lambda: not os.path.exists(f"/proc/{first}"), what="the first zygote to end")  # it stopped listening
    finally:
        with open(os.path.join(group, "cgroup.procs")) as f:
            for pid in f.read().split():
                stop_process(int(pid))
        os.rmdir(group)

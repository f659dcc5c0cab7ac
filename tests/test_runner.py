"""strata run and friends, for real: namespaces, the union mount, cgroups, the supervisor."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
from helpers import REPO, STRATA, strata, wait_for

from runner import cgroups, syscalls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")


def _state(root: str, ref: str) -> dict:
    return json.loads(strata(root, "inspect", ref).out)[0]["State"]


def test_run_foreground_output_and_exit_code(rootdir):
    res = strata(rootdir, "run", "bb", "/bin/sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (res.code, res.out, res.err) == (3, "out\n", "err\n")
    lines = strata(rootdir, "ps", "-a").out.splitlines()
    assert len(lines) == 2 and "Exited (3)" in lines[1] and '"/bin/sh -c echo out…"' in lines[1]


def test_pid_1_starts_with_no_signal_ignored_or_blocked(rootdir):
    """Python ignores SIGPIPE and SIGXFSZ, a client under nohup SIGHUP, a CI runner even the C library's
    own signal 32; exec keeps what is ignored, so the init resets every signal: the command starts as
    under runc (``yes | head`` ends by SIGPIPE)."""

    def ignore_some() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        syscalls.set_signal_action(32, ignore=True)  # glibc's SIGCANCEL: signal.signal refuses it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGINT})  # a mask passes through exec too

    for extra in ({}, {"STRATA_NO_ZYGOTE": "1"}):  # through the zygote, and in the client's own process
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
                "grep -E 'SigBlk|SigIgn' /proc/self/status; yes | head -c 1 >/dev/null; echo done",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**os.environ, "PYTHONPATH": REPO, **extra},
            preexec_fn=ignore_some,
        )
        assert (res.returncode, res.stdout.split()) == (0, ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16, "done"]), (
            res.stderr
        )


def test_ignored_signals_are_read_from_the_kernel_as_status_shows_them():
    """The init asks rt_sigaction, not /proc (a container may have none mounted), and sees what the
    C library hides: its own signal 32 too."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            syscalls.set_signal_action(32, ignore=True)
            syscalls.set_signal_action(40, ignore=True)
            with open("/proc/self/status") as f:
                mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
            status = [sig for sig in range(1, 65) if mask >> (sig - 1) & 1]
            os.write(w, json.dumps([syscalls.ignored_signals(), status]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        got, status = json.loads(f.read())
    assert os.waitpid(pid, 0)[1] == 0
    assert got == status and {signal.SIGHUP, 32, 40} <= set(got)


def test_container_sees_its_own_world(rootdir):
    out = strata(
        rootdir,
        "run",
        "--rm",
        "--network",
        "none",
        "--hostname",
        "box",
        "-e",
        "FOO=bar",
        "-w",
        "/work",
        "bb",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; echo $FOO; pwd; echo $$; echo /proc/[0-9]*; "
        "grep CapEff /proc/self/status; cat /proc/self/status | grep NoNewPrivs; "
        "ip -o link | cut -d: -f2; touch /sys/x 2>&1 | head -c 40; ls /dev",
    ).out.split("\n")
    assert out[0:4] == ["box", "box", "bar", "/work"]
    assert out[4] == "1"  # the command is PID 1
    assert out[5] == "/proc/1"  # it sees only its own processes (the shell expands the glob itself)
    assert out[6].split()[1] == "00000000a80425fb"  # Docker's default capability set
    assert out[7].split()[1] == "0"  # no_new_privs is off, as Docker's (setuid programs work): --security-opt sets it
    assert out[8].strip() == "lo"  # network none: loopback only
    assert "Read-only file system" in out[9]
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"} <= set(out[10:])
    assert strata(rootdir, "ps", "-a", "-q").out == ""  # --rm removed it


def test_user_and_image_defaults(rootdir):
    assert (
        strata(rootdir, "run", "--rm", "-u", "nobody", "bb", "id").out.strip() == "uid=65534(nobody) gid=65534(nogroup)"
    )
    assert strata(rootdir, "run", "--rm", "-u", "1234:5", "bb", "id", "-u").out.strip() == "1234"
    res = strata(rootdir, "run", "--rm", "bb", input=b"echo from-default-cmd\n", check=False)  # CMD ["/bin/sh"]
    assert res.code == 0


def test_bad_input_leaves_nothing_behind(rootdir):
    cases = [
        (["run", "nosuch"], 125, "Unable to find image"),
        (["run", "-m", "3m", "bb", "true"], 125, "Minimum memory limit allowed is 6MB"),
        (["run", "-m", "lots", "bb", "true"], 125, "invalid memory value"),
        (["run", "bb", "no-such-command"], 127, "executable file not found"),
        (["run", "bb", "/etc/passwd"], 126, "permission denied"),
    ]
    for args, code, message in cases:
        res = strata(rootdir, *args, check=False)
        assert res.code == code, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1 and message in res.err, res.err
    strata(rootdir, "run", "--name", "taken", "bb", "true")
    res = strata(rootdir, "run", "--name", "taken", "bb", "true", check=False)
    assert res.code == 125 and "is already in use" in res.err
    assert strata(rootdir, "ps", "-a", "-q").out.split() != [] and len(strata(rootdir, "ps", "-aq").out.split()) == 1


def test_detached_container_life_cycle(rootdir):
    cid = strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "pinger",
        "--cpu-shares=256",
        "-m",
        "64m",
        "bb",
        "ping",
        "-c",
        "300",
        "127.0.0.1",
    ).out.strip()
    assert len(cid) == 64
    ps = strata(rootdir, "ps").out.splitlines()
    assert len(ps) == 2 and ps[1].startswith(cid[:12]) and "Up " in ps[1] and ps[1].endswith("pinger")
    top = strata(rootdir, "top", "pinger").out.splitlines()
    assert top[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert len(top) == 2 and top[1].split()[-4:] == ["ping", "-c", "300", "127.0.0.1"]
    doc = json.loads(strata(rootdir, "inspect", cid[:8]).out)[0]
    assert doc["State"]["Running"] and doc["State"]["Pid"] == int(top[1].split()[1])
    assert doc["HostConfig"]["CpuShares"] == 256 and doc["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert set(doc["GraphDriver"]["Data"]) == {"LowerDir", "UpperDir", "WorkDir", "MergedDir"}
    assert doc["Config"]["Cmd"] == ["ping", "-c", "300", "127.0.0.1"] and doc["Name"] == "/pinger"
    wait_for(lambda: "seq=1 " in strata(rootdir, "logs", "pinger").out, what="two pings in the log")
    assert strata(rootdir, "logs", "--tail", "1", "pinger").out.count("\n") == 1
    res = strata(rootdir, "rm", "pinger", check=False)
    assert res.code == 1 and "You cannot remove a running container" in res.err
    assert strata(rootdir, "exec", "pinger", "sh", "-c", "echo $$; hostname").out.split()[1] == cid[:12]
    strata(rootdir, "stop", "-t", "1", "pinger")
    state = _state(rootdir, "pinger")
    assert state["Status"] == "exited" and state["ExitCode"] == 137 and not state["Running"]
    strata(rootdir, "start", "pinger")  # same container, same writable layer
    assert _state(rootdir, "pinger")["Running"]
    # start returns once PID 1 exec'd ping, maybe before it took SIGINT (a default action the kernel drops
    # for a PID namespace's init): its first reply is printed after, so wait for the second run's
    wait_for(lambda: strata(rootdir, "logs", "pinger").out.count(": seq=0 ") >= 2, what="the second run's ping")
    strata(rootdir, "kill", "-s", "INT", "pinger")  # ping prints its statistics and exits on SIGINT
    assert strata(rootdir, "wait", "pinger").out.strip() == "0"
    assert "packets transmitted" in strata(rootdir, "logs", "pinger").out
    strata(rootdir, "rm", "pinger")
    assert strata(rootdir, "ps", "-aq").out == ""


def test_only_a_rm_containers_writable_layer_is_volatile(rootdir):
    """--rm: nothing in the union is fsynced (its writable layer cannot outlive the container, as
    podman decides for --rm): the union's workdir holds overlayfs's volatile mark while it runs."""
    kept = strata(rootdir, "run", "-d", "bb", "sleep", "60").out.strip()
    gone = strata(rootdir, "run", "-d", "--rm", "bb", "sleep", "60").out.strip()
    try:
        for cid, volatile in ((kept, False), (gone, True)):
            work = json.loads(strata(rootdir, "inspect", cid).out)[0]["GraphDriver"]["Data"]["WorkDir"]
            assert os.path.isdir(os.path.join(work, "incompat", "volatile")) == volatile
    finally:
        strata(rootdir, "rm", "-f", kept, gone)
    assert strata(rootdir, "ps", "-aq").out == ""


def test_writable_layers_are_separate(rootdir):
    strata(rootdir, "run", "--name", "ca", "bb", "sh", "-c", "echo A > /tmp/a")
    strata(rootdir, "run", "--name", "cb", "bb", "sh", "-c", "echo B > /tmp/b")
    a = json.loads(strata(rootdir, "inspect", "ca").out)[0]["GraphDriver"]["Data"]
    b = json.loads(strata(rootdir, "inspect", "cb").out)[0]["GraphDriver"]["Data"]
    assert os.listdir(os.path.join(a["UpperDir"], "tmp")) == ["a"]
    assert os.listdir(os.path.join(b["UpperDir"], "tmp")) == ["b"]
    assert a["LowerDir"] == b["LowerDir"]
    strata(rootdir, "start", "ca")
    strata(rootdir, "wait", "ca")
    assert os.listdir(os.path.join(a["UpperDir"], "tmp")) == ["a"]


def test_memory_limit_oom_kills(rootdir):
    res = strata(
        rootdir,
        "run",
        "--name",
        "hog",
        "-m",
        "32m",
        "bb",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=100M",
        "count=1",
        check=False,
    )
    assert res.code == 137
    state = _state(rootdir, "hog")
    assert state["OOMKilled"] is True and state["ExitCode"] == 137


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cpu_shares_split_one_cpu_near_four_to_one(rootdir):
    spin = ["bb", "sh", "-c", "while :; do :; done"]
    pin = ["taskset", "-c", "0"]  # (and --cpuset-cpus: a v2 cpuset, once enabled, gives a task its CPUs as it joins)
    env = {**os.environ, "PYTHONPATH": REPO}
    ids = []
    for shares, name in ((1024, "heavy"), (256, "light")):
        out = subprocess.run(
            [
                *pin,
                *STRATA,
                "--root",
                rootdir,
                "run",
                "-d",
                "--name",
                name,
                "--cpu-shares",
                str(shares),
                "--cpuset-cpus",
                "0",
                *spin,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        ids.append(out.stdout.strip())
    pids = [_state(rootdir, n)["Pid"] for n in ("heavy", "light")]
    base = [_cpu_seconds(p) for p in pids]
    wait_for(lambda: sum(_cpu_seconds(p) for p in pids) - sum(base) > 4.0, timeout=60, what="4 s of CPU")
    used = [_cpu_seconds(p) - b for p, b in zip(pids, base, strict=True)]
    strata(rootdir, "rm", "-f", "heavy", "light")
    ratio = used[0] / max(used[1], 1e-3)
    # 4 by the shares (v2: weights 39:10, 3.9); the lab's emulated VMs (vagrant/; a 250 Hz kernel, whose
    # 4 ms tick is longer than the light one's share of a scheduling period) measured 2.9; no weight gives 1
    assert 2.5 < ratio < 5.5, f"cpu time heavy:light = {used} (ratio {ratio:.2f})"


def test_interactive_shell_on_a_pty(rootdir):
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.environ["PYTHONPATH"] = REPO
        os.execv(sys.executable, [*STRATA, "--root", rootdir, "run", "-t", "-i", "--name", "shell", "bb", "/bin/sh"])
    try:
        termios.tcsetwinsize(master, (30, 100))  # before strata starts: the container's pty gets this size
        seen = b""

        def read_until(token: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 30
            while token not in seen:
                assert time.monotonic() < deadline, seen
                if select.select([master], [], [], 1)[0]:
                    seen += os.read(master, 4096)

        read_until(b"# ")  # the prompt: the shell is up, on a terminal
        if b"\x1b[6n" in seen:  # busybox's line editor asks where the cursor is: answer as a terminal would
            os.write(master, b"\x1b[1;1R")
        os.write(master, b"echo $((6*7)); tty\n")
        read_until(b"42")
        read_until(b"/dev/pts/0")  # fd 0 is a pty of the container's own devpts
        os.write(master, b"stty size\n")
        read_until(b"30 100")
        termios.tcsetwinsize(master, (40, 120))  # a resized terminal: SIGWINCH, forwarded; the pty follows
        deadline = time.monotonic() + 30
        while b"40 120" not in seen:
            assert time.monotonic() < deadline, seen
            os.write(master, b"stty size\n")
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)
        os.write(master, b"exit 5\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 5
    finally:
        os.close(master)
    assert "42" in strata(rootdir, "logs", "shell").out


def test_signals_are_forwarded_in_the_foreground(rootdir):
    proc = subprocess.Popen(
        [
            *STRATA,
            "--root",
            rootdir,
            "run",
            "--name",
            "fg",
            "bb",
            "sh",
            "-c",
            "trap 'exit 7' INT; echo ready; while :; do sleep 1; done",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 7


def test_union_process_death_stops_the_container(rootdir):
    strata(rootdir, "run", "-d", "--name", "victim", "bb", "sleep", "1000")
    cid = json.loads(strata(rootdir, "inspect", "victim").out)[0]["Id"]
    with open(os.path.join(rootdir, "containers", cid, "state.json")) as f:
        union = json.load(f)["UnionPid"]
    os.kill(union, signal.SIGKILL)
    wait_for(lambda: _state(rootdir, "victim")["Status"] == "exited", what="the container to stop")
    assert "union filesystem process died" in _state(rootdir, "victim")["Error"]


def test_concurrent_runs_with_one_name(rootdir):
    procs = [
        subprocess.Popen(
            [*STRATA, "--root", rootdir, "run", "--name", "same", "bb", "true"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    codes = [p.wait(timeout=60) for p in procs]
    assert sorted(codes) == [0, 125, 125, 125]
    assert len(strata(rootdir, "ps", "-aq").out.split()) == 1


def test_rmi_refuses_an_image_in_use(rootdir):
    strata(rootdir, "run", "--name", "user", "bb", "true")
    res = strata(rootdir, "rmi", "bb", check=False)
    assert res.code == 1 and "image is being used by user" in res.err
    assert strata(rootdir, "rmi", "-f", "bb").out.strip() == "Untagged: bb:latest"  # the layers stay for it
    assert strata(rootdir, "start", "user").code == 0 and strata(rootdir, "wait", "user").out.strip() == "0"
    image_id = json.loads(strata(rootdir, "inspect", "user").out)[0]["Image"]
    strata(rootdir, "rm", "user")
    assert strata(rootdir, "rmi", image_id).out.splitlines()[0] == f"Deleted: {image_id}"


def test_cgroup_v2_code_path_on_a_fake_root(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    cg = cgroups.for_host("abc", str(root))
    assert isinstance(cg, cgroups.V2)
    attached = []  # a BPF program attaches to a real cgroup only: tests/test_devices.py does that
    monkeypatch.setattr(cgroups.devices, "attach_v2", lambda d, rules: attached.append((d, rules)))
    cg.create()
    assert attached == [(str(root / "strata" / "abc"), cgroups.devices.DEFAULT_RULES)]
    cg.limit(1024, 64 * 1024 * 1024)
    assert (root / "strata" / "abc" / "cpu.weight").read_text() == "100"
    assert (root / "strata" / "abc" / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (root / "strata" / "abc" / "memory.swap.max").read_text() == str(64 * 1024 * 1024)
    assert "+cpu" in (root / "cgroup.subtree_control").read_text()
    (root / "strata" / "abc" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert not cg.oom_killed()
    (root / "strata" / "abc" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()
    (root / "strata" / "abc" / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # as the kernel says it
    cg.freeze(True)
    assert (root / "strata" / "abc" / "cgroup.freeze").read_text() == "1"
    assert [cgroups.shares_to_weight(s) for s in (2, 512, 1024, 2048, 4096, 262144)] == [1, 59, 100, 174, 303, 10000]
    v1 = cgroups.for_host("abc", str(tmp_path / "nov2"))
    assert isinstance(v1, cgroups.V1)


def test_no_host_fds_or_interpreter_reach_the_container(rootdir):
    out = strata(
        rootdir,
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        "readlink /proc/1/exe; echo; "
        "for p in /proc/timer_list /proc/keys /proc/sched_debug /proc/kcore; do "
        "[ -e $p ] && wc -c < $p; done; (echo x > /proc/sys/kernel/hostname) 2>&1; true",
    ).out.splitlines()
    assert out[0] == "/bin/busybox"  # PID 1 is the command, not the host's python
    masked = [int(n) for n in out[2:-1]]  # the masks that exist on this kernel read as empty (/dev/null)
    assert masked and all(n == 0 for n in masked)
    assert "Read-only file system" in out[-1]
    # every inherited fd closed: seen from an exec, while PID 1 (a sleep) opens nothing of its own (a
    # shell's pipeline fds come and go under a listing of its own)
    strata(rootdir, "run", "-d", "--name", "fds", "bb", "sleep", "1000")
    assert strata(rootdir, "exec", "fds", "ls", "/proc/1/fd").out.split() == ["0", "1", "2"]
    strata(rootdir, "rm", "-f", "fds")


def test_stdin_pipe_and_host_network(rootdir):
    res = strata(rootdir, "run", "--rm", "-i", "bb", "sh", "-c", "tr a-z A-Z", input=b"piped in\n")
    assert res.out == "PIPED IN\n"
    links = strata(rootdir, "run", "--rm", "--network", "host", "bb", "ip", "-o", "link").out
    with open("/proc/net/dev") as f:
        host_links = len(f.read().splitlines()) - 2
    assert len(links.splitlines()) == host_links


def test_logs_follow_until_the_container_ends(rootdir):
    strata(
        rootdir,
        "run",
        "-d",
        "--name",
        "talker",
        "bb",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo oops >&2",
    )
    res = strata(rootdir, "logs", "-f", "talker")
    assert res.out == "line 1\nline 2\nline 3\n" and res.err == "oops\n"
    with open(json.loads(strata(rootdir, "inspect", "talker").out)[0]["LogPath"]) as f:
        first = json.loads(f.readline())
    assert first["log"] == "line 1\n" and first["stream"] == "stdout" and first["time"].endswith("Z")


def test_a_failure_after_the_union_is_forked_leaves_nothing_behind(rootdir):
    """The union daemon is forked before the cgroup is made: if that fails, the mount still goes."""
    script = (
        "import sys\n"
        "import runner.cgroups as cg\n"
        "def refuse(self, rules=None):\n"
        "    raise OSError(28, 'No space left on device (injected)')\n"
        "cg.V1.create = cg.V2.create = refuse\n"
        "from runner.cli import main\n"
        f"sys.exit(main(['--root', {rootdir!r}, 'run', '--name', 'doomed', 'bb', 'true']))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=60,
    )
    assert res.returncode == 125 and "No space left on device (injected)" in res.stderr
    assert strata(rootdir, "ps", "-aq").out == ""  # a run that never started leaves no container
    with open("/proc/self/mountinfo") as f:
        assert rootdir not in f.read()


def test_a_second_sigterm_to_the_client_kills_a_container_that_ignores_the_first(rootdir):
    """run -t without -i, a command reading its terminal (it never sees the end of its input), and
    PID 1 ignores SIGTERM: the client is not stuck for ever; a second SIGTERM (timeout -k) kills."""
    proc = subprocess.Popen(
        [*STRATA, "--root", rootdir, "run", "-t", "--name", "reader", "bb", "cat"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: '"Running": true' in strata(rootdir, "inspect", "reader", check=False).out,
            what="the container to run",
        )
        # signals of one kind sent back to back merge into one: send until two have been taken apart
        wait_for(lambda: proc.send_signal(signal.SIGTERM) or proc.poll() is not None, what="the client to end")
        assert proc.wait() == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

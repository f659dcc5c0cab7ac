"""exec's flags as Docker's (-i, -t, -d, -e, -w, -u), a terminal only where there is one (run -it and
exec -it refuse a pipe, as Docker does), and no way for a closed stdin to hang the client."""

from __future__ import annotations

import os
import select
import subprocess
import termios
import time

import pytest
from helpers import REPO, STRATA, strata

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def in_pty(root: str, *args: str, keys: bytes = b"", after: bytes = b"# ", timeout: float = 30) -> tuple[int, str]:
    """Run strata with a pty as its terminal (stdin, stdout and stderr), type ``keys`` once it has
    written ``after`` (a shell's prompt: what is typed before its terminal is raw would be flushed),
    and return its exit code and everything it wrote, once it has exited."""
    master, slave = os.openpty()
    termios.tcsetwinsize(slave, (30, 100))  # rows, columns: what the container's pty should take on
    proc = subprocess.Popen(
        [*STRATA, "--root", root, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:  # until the pty's last holder closes it (EIO), bounded
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([master], [], [], left)[0]:
                pytest.fail(f"strata {' '.join(args)} did not end; it wrote {out!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if keys and after in out:
                os.write(master, keys)
                keys = b""
        return proc.wait(timeout=timeout), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.fixture
def running(rootdir):
    strata(rootdir, "run", "-d", "--name", "box", "bb", "sleep", "300")
    return rootdir


@needs_root
def test_exec_sets_env_workdir_and_user(running):
    out = strata(
        running,
        "exec",
        "-e",
        "A=1",
        "--env",
        "B",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "box",
        "sh",
        "-c",
        'echo "$A.${B-unset}"; pwd; id -u',
    ).out
    assert out.splitlines() == ["1.unset", "/tmp", "65534"]
    assert strata(running, "exec", "--workdir=/etc", "--user=0", "box", "pwd").out == "/etc\n"


def test_exec_without_a_command_is_a_usage_error(root):
    res = strata(root, "exec", "box", check=False)
    assert (res.code, res.out) == (125, "")
    assert res.err.splitlines() == [
        "strata: 'strata exec' is missing an argument: command",
        "See 'strata exec --help'.",
    ]


@needs_root
def test_exec_attaches_stdin_only_with_i(running):
    assert strata(running, "exec", "box", "cat", input=b"typed\n").out == ""  # /dev/null: cat ends at once
    assert strata(running, "exec", "-i", "box", "cat", input=b"typed\n").out == "typed\n"
    assert strata(running, "exec", "--interactive", "box", "wc", "-c", input=b"x" * 200000).out.strip() == "200000"


@needs_root
def test_exec_detached_returns_once_started(running):
    res = strata(running, "exec", "-d", "box", "sh", "-c", "echo done > /tmp/detached; sleep 300")
    assert res.out == "" and res.err == ""
    deadline = time.monotonic() + 30
    while strata(running, "exec", "box", "cat", "/tmp/detached", check=False).out != "done\n":
        assert time.monotonic() < deadline, "the detached command never ran"
    procs = strata(running, "top", "box").out
    assert "sleep 300" in procs.split("\n", 2)[2]  # still running after exec returned
    res = strata(running, "exec", "-d", "box", "no-such-command", check=False)
    assert res.code == 127 and "executable file not found" in res.err


@needs_root
def test_exec_t_gives_the_command_a_terminal_of_the_container(running):
    code, out = in_pty(running, "exec", "-it", "box", "sh", keys=b"tty; stty size; exit 3\n")
    assert code == 3, out
    assert "/dev/pts/0" in out  # the container's own devpts: a name the command can find
    assert "30 100" in out  # the client's terminal size
    code, out = in_pty(running, "exec", "-t", "box", "sh", "-c", "test -t 0 && test -t 1 && echo $TERM")
    assert code == 0 and out.strip() == "xterm", out
    res = strata(running, "exec", "-t", "box", "echo", "piped")  # -t with no terminal here: fine, as Docker
    assert res.out == "piped\r\n"


@needs_root
def test_exec_t_outlives_no_background_holder_of_its_terminal(running):
    """A child left running with the pty open does not keep exec waiting (the command's end does)."""
    code, out = in_pty(running, "exec", "-t", "box", "sh", "-c", "sleep 300 & echo started", timeout=20)
    assert code == 0 and "started" in out


@needs_root
def test_it_with_stdin_that_is_not_a_terminal_is_refused(running):
    for args in (("run", "--rm", "-it", "bb", "cat"), ("exec", "-it", "box", "cat"), ("run", "-i", "-t", "bb", "cat")):
        res = strata(running, *args, input=b"hi\n", check=False)
        assert (res.code, res.out, res.err) == (1, "", "the input device is not a TTY\n"), args
    assert strata(running, "ps", "-aq").out.split() == [strata(running, "ps", "-q").out.strip()]  # only box


@needs_root
def test_run_it_on_a_terminal_works(rootdir):
    code, out = in_pty(rootdir, "run", "--rm", "-it", "bb", "sh", keys=b"echo in-$((6*7)); exit 4\n")
    assert code == 4 and "in-42" in out, out


@needs_root
@pytest.mark.parametrize("flags", [("-it",), ("-t",)])
def test_run_t_gives_pid_1_a_terminal_of_the_container(rootdir, flags):
    """As runc's console socket: PID 1's terminal is a pty of the container's own devpts (tty says
    /dev/pts/N, not /dev/console), at the size of the client's terminal."""
    code, out = in_pty(rootdir, "run", "--rm", *flags, "bb", "sh", "-c", "tty; stty size; ls /dev/pts; exit 3")
    assert code == 3, out
    lines = out.replace("\r", "").split("\n")
    assert lines[0] == "/dev/pts/0" and lines[1] == "30 100", out
    assert lines[2].split() == ["0", "ptmx"], out  # the container's devpts: only its own pty


@needs_root
def test_run_dt_logs_the_terminal_and_exec_shares_the_devpts(rootdir):
    cid = strata(rootdir, "run", "-dt", "bb", "sh", "-c", "tty; sleep 300").out.strip()
    try:
        out = strata(rootdir, "exec", "-t", cid, "tty").out
        assert out.strip() == "/dev/pts/1", out
        assert strata(rootdir, "logs", cid).out.replace("\r", "").split("\n")[0] == "/dev/pts/0"
    finally:
        strata(rootdir, "rm", "-f", cid)


@needs_root
def test_home_comes_from_the_image_passwd(rootdir):
    """HOME is the user's home in the image's /etc/passwd ("/" for an id it does not list), unless
    the image or the command line sets it, as Docker gives."""
    strata(
        rootdir, "run", "--name", "homes", "bb", "sh", "-c", "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd"
    )
    strata(rootdir, "commit", "homes", "bb-homes")

    def run(*flags: str) -> str:
        return strata(rootdir, "run", "--rm", *flags, "bb-homes", "sh", "-c", "echo $HOME").out.strip()

    assert run() == "/root"
    assert run("-u", "app") == "/home/app"
    assert run("-u", "1000") == "/home/app"
    assert run("-u", "4242") == "/"
    assert run("-e", "HOME=/elsewhere") == "/elsewhere"
    cid = strata(rootdir, "run", "-d", "bb-homes", "sleep", "300").out.strip()
    try:
        assert strata(rootdir, "exec", "-u", "app", cid, "sh", "-c", "echo $HOME").out.strip() == "/home/app"
    finally:
        strata(rootdir, "rm", "-f", cid)


@needs_root
@pytest.mark.parametrize("zygote", [False, True])
def test_a_closed_stdin_never_hangs_the_client(running, zygote):
    env = {} if zygote else {"STRATA_NO_ZYGOTE": "1"}
    for args in (
        ("run", "--rm", "-i", "bb", "cat"),
        ("run", "--rm", "bb", "cat"),
        ("run", "--rm", "-t", "bb", "true"),
        ("exec", "-i", "box", "cat"),
        ("exec", "box", "cat"),
        ("exec", "-t", "box", "true"),
    ):
        for closed in (True, False):
            res = subprocess.run(
                [*STRATA, "--root", running, *args],
                capture_output=True,
                cwd=REPO,
                timeout=15,
                env={**os.environ, "PYTHONPATH": REPO, **env},
                stdin=subprocess.DEVNULL,
                preexec_fn=(lambda: os.close(0)) if closed else None,
            )
            assert res.returncode == 0 and res.stdout.strip() == b"", (args, closed, res)
    for args in (("run", "--rm", "-it", "bb", "cat"), ("exec", "-it", "box", "cat")):
        res = subprocess.run(
            [*STRATA, "--root", running, *args],
            capture_output=True,
            cwd=REPO,
            timeout=15,
            env={**os.environ, "PYTHONPATH": REPO, **env},
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(0),
        )
        assert res.returncode == 1 and res.stderr == b"the input device is not a TTY\n"

"""What our pyfuse3 series (``unionfs/patches``) gives, shown through a real mount: the kernel's
caches of listings and link targets, the main loop that finds trio's wakeup socket, the INIT reply
rewritten through libfuse 3.14's hooks (FUSE_HANDLE_KILLPRIV_V2), and handlers that wait without
holding up the others."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pyfuse3
import pytest
import unionfs_support
from unionfs_support import is_mounted, make_layer, mounted, python_child

daemon = unionfs_support.daemon  # the fixture: a test that takes it runs on our pyfuse3 and on a stock one


def test_the_kernel_keeps_listings_and_link_targets_until_the_mount_changes_them(tmp_path):
    """With the patched pyfuse3 the kernel answers a second listing and readlink from its own cache. Shown
    by changing the upper dir behind the mount's back (never done in use), keeping its mtime (which the
    kernel checks): the change stays unseen until a change made through the mount drops the listing."""
    from unionfs.fs import DIR_CACHE

    assert DIR_CACHE, "pyfuse3 without unionfs/patches: make installs the patched one"
    lower = make_layer(str(tmp_path / "lower"), {"d/": None, "d/low": "1", "d/gone": "2", "d/sub/": None})
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work)):
        d = point / "d"
        os.chmod(d, 0o750)  # copied up: the upper dir exists from here on
        os.symlink("old-target", point / "link")
        assert sorted(os.listdir(d)) == ["gone", "low", "sub"]
        assert os.readlink(point / "link") == "old-target"
        before = os.stat(upper / "d")
        (upper / "d" / "sneaked").touch()
        os.utime(upper / "d", ns=(before.st_atime_ns, before.st_mtime_ns))
        os.unlink(upper / "link")
        os.symlink("new-target", upper / "link")
        assert sorted(os.listdir(d)) == ["gone", "low", "sub"]
        assert os.readlink(point / "link") == "old-target"

        expected = {"gone", "low", "sub", "sneaked"}  # every change below drops the cached listing
        changes = [
            (lambda: (d / "new").touch(), {"new"}, set()),
            (lambda: os.mkdir(d / "newdir"), {"newdir"}, set()),
            (lambda: os.symlink("x", d / "sym"), {"sym"}, set()),
            (lambda: os.link(d / "new", d / "hard"), {"hard"}, set()),
            (lambda: os.rename(point / "link", d / "moved-in"), {"moved-in"}, set()),
            (lambda: os.rename(d / "low", point / "moved-out"), set(), {"low"}),
            (lambda: os.unlink(d / "gone"), set(), {"gone"}),
            (lambda: os.rmdir(d / "sub"), set(), {"sub"}),
            (lambda: os.mknod(d / "fifo", stat.S_IFIFO | 0o644), {"fifo"}, set()),
        ]
        for change, added, removed in changes:
            change()
            expected = (expected | added) - removed
            assert set(os.listdir(d)) == expected
            assert set(os.listdir(d)) == expected  # and again, from the cache
        assert sorted(os.listdir(point)) == ["d", "moved-out"]


def _daemon_threads_in_syscalls(pid: int) -> list[str]:
    """The syscall numbers a daemon's threads are in, but for waiting on a futex (202: idle worker
    threads) or in epoll_wait (232: the loop between requests)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                call = f.read().split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if call not in ("202", "232", "running"):
            found.append(call)
    return found


async def test_the_patched_loop_finds_trios_wakeup_socket():
    """Our pyfuse3's reader waits in poll(2) on /dev/fuse and on trio's wakeup socket, and reads
    the loop's state, both found in trio's runner; a trio that keeps them elsewhere would silently
    cost a scheduler pass per request again. This says so first."""
    assert pyfuse3._poll_loop_usable()  # type: ignore[attr-defined]  # our patch's, not in the stubs


def test_the_hooks_are_installed_only_on_the_libfuse_they_were_written_for():
    """0004 rewrites libfuse 3.14's INIT reply through its custom I/O hooks: on another libfuse
    (fuse_pkgversion() at run time; the headers at build time) it installs none."""
    fits = pyfuse3._killpriv_v2_libfuse  # type: ignore[attr-defined]  # our patch's, not in the stubs
    headers = subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True, text=True).stdout
    # built against 3.14's headers (Debian 12), the hooks are in for a 3.14.x at run time; else left out
    assert fits("3.14.0") == fits("3.14.1") == headers.startswith("3.14."), headers
    for other in ("3.13.0", "3.15.0", "3.16.2", "3.17.2", "4.14.0", "3.1", "3", "", "unknown"):
        assert not fits(other), other


@pytest.mark.parametrize("libfuse", ["3.14", "other"])
def test_the_kernel_takes_killpriv_v2_and_a_chown_costs_no_getattr(tmp_path, libfuse):
    """Our pyfuse3 adds FUSE_HANDLE_KILLPRIV_V2 to the INIT reply (libfuse 3.14 cannot): the
    kernel then leaves dropping setuid bits to us (test_unionfs_mount's setuid test checks we do) and stops
    asking for the attributes before each chown. A union served in a child process reports what
    its INIT reply carried, and how many GETATTRs a chown of a file it made cost. On a libfuse
    the hooks were not written for ("other": the check made to say so) the union goes on without
    the flag, and the kernel asks as it does of a stock pyfuse3."""
    layer = make_layer(str(tmp_path / "l"), {"f": "x"})
    upper, work, point = (tmp_path / n for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    script = (
        "import os, sys, trio, pyfuse3\n"
        "from unionfs.fs import UnionFS\n"
        "lower, upper, work, point = sys.argv[1:]\n"
        "fs = UnionFS([lower], upper, work, no_open=True)\n"
        "calls = []\n"
        "getattr_ = fs.getattr\n"
        "async def counted(inode, ctx):\n"
        "    calls.append(inode)\n"
        "    return await getattr_(inode, ctx)\n"
        "fs.getattr = counted\n"
        + ("pyfuse3._killpriv_v2_libfuse = lambda version: False\n" if libfuse == "other" else "")
        + "pyfuse3.init(fs, point, ['fsname=strata-test'])\n"
        "async def main():\n"
        "    async with trio.open_nursery() as n:\n"
        "        n.start_soon(pyfuse3.main)\n"
        "        await fs.initialised.wait()\n"
        "        def chown():\n"
        "            path = os.path.join(point, 'new')\n"
        "            with open(path, 'w') as f:\n"
        "                f.write('data')\n"
        "            os.stat(path)\n"
        "            before = len(calls)\n"
        "            os.chown(path, 1, 1)\n"
        "            return len(calls) - before\n"
        "        print(pyfuse3.handles_killpriv_v2(), await trio.to_thread.run_sync(chown))\n"
        "        pyfuse3.terminate()\n"
        "try:\n"
        "    trio.run(main)\n"
        "finally:\n"
        "    pyfuse3.close(unmount=True)\n"
    )
    done = python_child(script, layer, str(upper), str(work), str(point))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["True", "0"] if libfuse == "3.14" else ["False", "1"])
    assert not is_mounted(str(point))


def test_a_handler_that_waits_does_not_hold_up_the_others(tmp_path, daemon):
    """A copy-up whose lower sits on a stopped FUSE daemon waits in a thread; meanwhile the union still
    answers requests (pyfuse3's loop hands the FUSE fd to another task only when a handler waits)."""
    inner_src = make_layer(str(tmp_path / "inner-src"), {"held": "lower data\n"})
    top = make_layer(str(tmp_path / "top"), {"other": "x"})
    os.setxattr(os.path.join(top, "other"), "user.probe", b"answered")
    inner, upper, work, point = (tmp_path / n for n in ("inner", "upper", "work", "mnt"))
    for d in (inner, upper, work, point):
        d.mkdir()
    with (
        mounted(str(inner), [inner_src], python=daemon.python) as inner_daemon,
        mounted(str(point), [top, str(inner)], str(upper), str(work), python=daemon.python) as union,
    ):
        assert os.stat(point / "held").st_size == len("lower data\n")
        assert os.stat(point / "other").st_size == 1
        os.kill(inner_daemon.pid, signal.SIGSTOP)
        try:
            # chmod: a copy-up with data, whose first touch of the lower is the copy itself (a write
            # would first have the kernel ask for the lower file's security.capability, inline)
            writer = subprocess.Popen(
                [sys.executable, "-c", "import os, sys; os.chmod(sys.argv[1], 0o640)", str(point / "held")]
            )
            deadline = time.monotonic() + 30
            while not _daemon_threads_in_syscalls(union.pid):  # the copy-up, stuck on the inner mount
                assert time.monotonic() < deadline, "the copy-up never started"
                assert writer.poll() is None
                time.sleep(0.01)
            answer = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import os, sys; print(os.getxattr(sys.argv[1], 'user.probe').decode())",
                    str(point / "other"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert answer.stdout == "answered\n"
            assert writer.poll() is None  # still waiting for the inner daemon
        finally:
            os.kill(inner_daemon.pid, signal.SIGCONT)
        assert writer.wait(timeout=30) == 0
        assert (point / "held").read_text() == "lower data\n"
        assert (upper / "held").read_text() == "lower data\n"
        assert stat.S_IMODE(os.stat(upper / "held").st_mode) == 0o640

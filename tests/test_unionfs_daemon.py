"""The daemon's life cycle: ``python -m unionfs`` in daemon mode, readiness, unmounting (fusermount3,
umount, signals, during I/O), the trio ``Mount`` API and ``fork_serve``, options and many layers."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

import pytest
import trio
import unionfs_support
from unionfs_support import REPO, WHITEOUT, is_mounted, make_layer, mounted

from unionfs import mountinfo
from unionfs.errors import UnionError
from unionfs.mount import Mount

daemon = unionfs_support.daemon  # the fixture: a test that takes it runs on our pyfuse3 and on a stock one


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m unionfs ARGS`` from this checkout, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "unionfs", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _daemon(tmp_path, extra: str = ""):
    """Mount with ``python -m unionfs`` in daemon mode (it returns once the mount is ready)."""
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    point = tmp_path / "mnt"
    point.mkdir()
    res = _cli("-o", f"lowerdir={lower}{extra}", str(point))
    assert res.returncode == 0, res.stderr
    return point


def test_daemon_mode_and_fusermount(tmp_path):
    point = _daemon(tmp_path)
    try:
        assert is_mounted(str(point)) and (point / "f").read_text() == "x"
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=True)
    assert not is_mounted(str(point))


@pytest.mark.skipif(os.geteuid() != 0, reason="sysfs readahead and umount2 need root")
def test_ready_means_the_kernel_has_our_init_reply(tmp_path, daemon):
    """``ok`` is told once the kernel has our INIT reply: by then the readahead is tuned, and nothing of
    the daemon's own holds the mount, so an unmount at once succeeds (it could fail with EBUSY while
    the daemon's own stat of the mount waited for INIT)."""
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    point = tmp_path / "mount point"  # a space: mountinfo spells it in octal
    point.mkdir()
    with mounted(str(point), [lower], python=daemon.python) as proc:
        assert is_mounted(str(point))
        device = mountinfo.mounts_at(str(point))[-1][0]
        assert _read(f"/sys/class/bdi/{device}/read_ahead_kb") == "1024"  # no waiting: ready means tuned
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.umount2(os.fsencode(point), 0) == 0, os.strerror(ctypes.get_errno())
        assert proc.wait(timeout=20) == 0


def test_bad_options_give_one_line_and_mount_nothing(tmp_path):
    point = tmp_path / "mnt"
    point.mkdir()
    for opts in ("upperdir=/x", f"lowerdir={tmp_path}/nope", f"lowerdir={tmp_path},upperdir={tmp_path}/u"):
        res = _cli("-f", "-o", opts, str(point))
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not is_mounted(str(point))


def test_unmount_during_io(tmp_path, daemon):
    lower = make_layer(str(tmp_path / "l"), {"f": b"x" * 1_000_000})
    upper, work, point = (tmp_path / n for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work), python=daemon.python) as proc:
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys\nwhile True:\n    open(sys.argv[1],'rb').read()\n    "
                "open(sys.argv[2],'ab').write(b'y'*4096)\n",
                str(point / "f"),
                str(point / "g"),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            while not (upper / "g").exists():  # wait until I/O is under way
                assert reader.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert reader.wait(timeout=30) != 0  # the reader saw the mount go, and stopped
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    assert not is_mounted(str(point))


async def test_mount_api_for_trio(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    upper, work, point = (tmp_path / n for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    m = await Mount.start(str(point), [lower], str(upper), str(work))
    try:
        assert is_mounted(str(point))
        assert await trio.to_thread.run_sync((point / "f").read_text) == "x"
    finally:
        await m.unmount()
    assert not is_mounted(str(point)) and m.process.returncode == 0
    with pytest.raises(UnionError):
        await Mount.start(str(point), [str(tmp_path / "missing")])


def test_umount_and_option_pass_through(tmp_path):
    point = _daemon(tmp_path, ",allow_other")
    try:
        with open("/proc/self/mountinfo") as f:
            line = next(x for x in f if x.split()[4] == str(point))
        assert "allow_other" in line and "fuse.unionfs" in line
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert not is_mounted(str(point))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_volatile_is_ours_and_readahead_is_a_whole_request(tmp_path):
    point = _daemon(tmp_path, ",volatile")
    try:
        with open("/proc/self/mountinfo") as f:
            fields = next(x for x in f if x.split()[4] == str(point)).split()
        assert "volatile" not in fields[5] + fields[-1]  # not among the mount's options: not passed to FUSE
        assert _read(f"/sys/class/bdi/{fields[2]}/read_ahead_kb") == "1024"  # tuned before ready was told
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert not is_mounted(str(point))


def test_a_volatile_mount_marks_its_workdir_until_it_ends(tmp_path):
    """As kernel overlayfs's work/incompat/volatile: while a volatile mount is up its workdir holds
    the mark; a clean end removes it; a mark left behind (the host died, or the daemon was killed)
    makes the next mount of that upper fail with one line, and nothing is mounted."""
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    upper, work, point = (tmp_path / n for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work), extra=",volatile"):
        assert (work / "incompat" / "volatile").is_dir()
        (point / "f").write_text("y")
    assert os.listdir(work) == [] and (upper / "f").read_text() == "y"
    (work / "incompat" / "volatile").mkdir(parents=True)  # as a killed daemon leaves it
    res = _cli("-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(point))
    assert res.returncode == 1 and not is_mounted(str(point))
    assert res.stderr.count("\n") == 1 and "did not end cleanly" in res.stderr, res.stderr


def test_hundreds_of_layers(tmp_path, daemon):
    """No page-sized option limit (kernel overlayfs's ~128 layers): 300 lowers mount and resolve."""
    lowers = [
        make_layer(str(tmp_path / f"layer{i:03}"), {f"only{i}": str(i), "shared": f"from {i}"}) for i in range(300)
    ]
    make_layer(lowers[150], {"only299": WHITEOUT})  # a whiteout half-way down hides the bottom file
    point = tmp_path / "mnt"
    point.mkdir()
    with mounted(str(point), lowers, python=daemon.python):
        assert (point / "shared").read_text() == "from 0"
        assert (point / "only298").read_text() == "298"
        assert not (point / "only299").exists()
        assert len(os.listdir(point)) == 300  # shared + only0..only298


def _exited(pid: int) -> bool:
    """Has ``pid`` exited (a zombie awaiting its reaper counts)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_unmount_returns_once_the_daemon_is_gone_so_its_dirs_can_go_at_once(tmp_path):
    """``-u`` waits for the daemon's exit: an ``rm -rf`` of the upper and workdir right after it
    races with nothing (the daemon syncs and tidies the workdir after the kernel has unmounted)."""
    for round_ in range(5):
        base = tmp_path / str(round_)
        lower = make_layer(str(base / "l"), {f"f{i}": "x" * 100 for i in range(50)})
        upper, work, point = (base / n for n in ("u", "w", "mnt"))
        for d in (upper, work, point):
            d.mkdir()
        res = _cli("-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(point))
        assert res.returncode == 0, res.stderr
        try:
            from unionfs.mount import daemon_pid

            pid = daemon_pid(str(point))
            assert pid is not None
            for i in range(50):  # copy-ups with journal notes, which the daemon's end syncs and removes
                os.chmod(point / f"f{i}", 0o600)
            res = _cli("-u", str(point))
            assert res.returncode == 0, res.stderr
            assert not is_mounted(str(point))
            assert _exited(pid)
            subprocess.run(["rm", "-rf", str(upper), str(work)], check=True)
            assert not upper.exists() and not work.exists()
        finally:
            if is_mounted(str(point)):
                subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)


def test_unmount_of_something_not_mounted_says_so_in_one_line(tmp_path):
    res = _cli("-u", str(tmp_path))
    assert res.returncode == 1 and res.stderr.startswith("unionfs: cannot unmount") and res.stderr.count("\n") == 1


def test_raw_shows_one_layer_as_it_is_stored(tmp_path, daemon):
    """``-o raw`` (``strata mount --layer``): whiteouts and opaque markers are the files they are,
    read-only; it takes one lowerdir and no upper."""
    layer = make_layer(str(tmp_path / "layer"), {"kept": "k", "gone": WHITEOUT, "d/x": "x"})
    open(tmp_path / "layer" / "d" / ".wh..wh..opq", "w").close()
    point = tmp_path / "mnt"
    point.mkdir()
    with mounted(str(point), [layer], extra=",raw", python=daemon.python):
        assert sorted(os.listdir(point)) == [".wh.gone", "d", "kept"]
        assert sorted(os.listdir(point / "d")) == [".wh..wh..opq", "x"]
        assert os.path.isfile(point / ".wh.gone") and (point / "kept").read_text() == "k"
        with pytest.raises(OSError):
            (point / "new").write_text("n")
    for bad in (f"lowerdir={layer}:{layer},raw", f"lowerdir={layer},upperdir={tmp_path},workdir={tmp_path},raw"):
        res = subprocess.run(
            [sys.executable, "-m", "unionfs", "-o", bad, str(point)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
        )
        assert res.returncode == 1 and "raw shows one layer" in res.stderr and not is_mounted(str(point))

"""What only a real mount can show: open-after-unlink, mmap, paths past PATH_MAX, readdir offsets,
concurrency, other users, and a randomized comparison against an in-memory model."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile

import pytest
import unionfs_support
from unionfs_support import REPO, is_mounted, make_layer, mounted

from unionfs import mountinfo

daemon = unionfs_support.daemon  # the fixture: a test that takes it runs on our pyfuse3 and on a stock one


@pytest.fixture
def mnt(tmp_path, daemon):
    lower = make_layer(
        str(tmp_path / "lower"),
        {
            "lowerfile": "lower content\n",
            "dir/": None,
            **{f"dir/e{i:03}": str(i) for i in range(200)},
            "big": b"L" * (3 * 1024 * 1024 + 17),
        },
    )
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work), python=daemon.python):
        yield str(point)


def test_file_open_after_unlink_stays_usable(mnt):
    for name in ("lowerfile", "newfile"):
        path = os.path.join(mnt, name)
        if name == "newfile":
            with open(path, "w") as f:
                f.write("new content\n")
        fd = os.open(path, os.O_RDWR)
        try:
            os.unlink(path)
            assert not os.path.exists(path)
            assert os.pread(fd, 3, 0) in (b"low", b"new")
            os.pwrite(fd, b"XYZ", 0)
            assert os.pread(fd, 3, 0) == b"XYZ"
            assert os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)


def test_an_open_for_writing_copies_up_at_the_first_write(mnt, tmp_path, daemon):
    """Where the kernel sends no OPEN (enable_no_open: our pyfuse3, without passthrough) a lower file
    opened for writing is copied up when the first write (or truncation, or chmod...) comes, not at
    the open. Where it does (a stock pyfuse3; passthrough, as root on ours), the open copies it up."""
    path, copy = os.path.join(mnt, "lowerfile"), tmp_path / "upper" / "lowerfile"
    fd = os.open(path, os.O_RDWR)
    try:
        assert copy.exists() == daemon.pyfuse3.opens
        assert os.pread(fd, 5, 0) == b"lower"
        os.pwrite(fd, b"LOWER", 0)
        assert copy.read_bytes() == b"LOWER content\n"
    finally:
        os.close(fd)
    with open(path, "w") as f:  # O_TRUNC: a setattr without an OPEN
        f.write("short\n")
    assert open(path).read() == "short\n" and copy.read_bytes() == b"short\n"


def test_the_daemon_keeps_a_bounded_number_of_backing_fds(tmp_path, daemon):
    """With no RELEASE from the kernel, the daemon closes backing fds itself: reading more files
    than its cache holds leaves it with no more than that many open, and every file still reads.
    The cache is a quarter of the open-file limit where that is below FD_CACHE (1024 here: 256)."""
    from unionfs.fs import FD_CACHE

    limit = 1024
    cap = min(FD_CACHE, limit // 4)
    count = cap + 200
    lower = make_layer(str(tmp_path / "lower"), {f"d/f{i:05}": f"{i}\n" for i in range(count)})
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    python = ["prlimit", f"--nofile={limit}:{limit}", *daemon.python]
    with mounted(str(point), [lower], str(upper), str(work), python=python) as proc:
        for _ in range(2):
            for i in range(count):
                with open(point / "d" / f"f{i:05}", "rb") as f:
                    assert f.read() == f"{i}\n".encode()
        held = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert cap <= held <= cap + 32, held  # the cache, the layers' dirs, /dev/fuse, epoll, logs


def test_mmap_shared_writes_reach_the_file(mnt):
    path = os.path.join(mnt, "big")
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED) as m:
            m[0:5] = b"HELLO"
            m[-5:] = b"WORLD"
            m.flush()
    with open(path, "rb") as f:
        data = f.read()
    assert data[:5] == b"HELLO" and data[-5:] == b"WORLD" and data[5:10] == b"LLLLL"


def test_paths_longer_than_path_max(mnt):
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        for _ in range(30):  # 30 * 200 bytes: well past PATH_MAX (4096)
            os.mkdir("d" * 200, dir_fd=fd)
            nfd = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        wfd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"deep")
        os.close(wfd)
        os.rename("leaf", "leaf2", src_dir_fd=fd, dst_dir_fd=fd)
        assert os.stat("leaf2", dir_fd=fd).st_size == 4
        assert os.listdir(fd) == ["leaf2"]
        os.unlink("leaf2", dir_fd=fd)
    finally:
        os.close(fd)
    assert depth == 30


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    return libc


class _Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def _next(libc, d) -> str | None:
    ent = libc.readdir(d)
    return None if not ent else ctypes.cast(ent, ctypes.POINTER(_Dirent)).contents.d_name.decode()


def test_telldir_seekdir_and_listing_while_changing(mnt):
    libc = _libc()
    path = os.path.join(mnt, "dir")
    for i in range(50):  # some entries in the upper too
        open(os.path.join(path, f"u{i:03}"), "w").close()
    d = libc.opendir(path.encode())
    assert d
    try:
        seen = []
        for _ in range(100):
            seen.append(_next(libc, d))
        mark = libc.telldir(d)
        after = [_next(libc, d) for _ in range(10)]
        libc.seekdir(d, mark)
        assert [_next(libc, d) for _ in range(10)] == after
        # change the directory while listing: remove some not yet listed, add new ones
        rest_expected = set()
        os.unlink(os.path.join(path, "e199"))
        os.unlink(os.path.join(path, "u049"))
        for i in range(20):
            open(os.path.join(path, f"new{i}"), "w").close()
        while (name := _next(libc, d)) is not None:
            rest_expected.add(name)
            seen.append(name)
        seen.extend(after)
    finally:
        libc.closedir(d)
    stayed = {f"e{i:03}" for i in range(199)} | {f"u{i:03}" for i in range(49)}
    listed = [n for n in seen if n not in (".", "..")]
    assert stayed <= set(listed)
    assert len([n for n in listed if n in stayed]) == len(stayed)  # none repeated


def test_concurrent_writers_and_readers(mnt):
    script = (
        "import os,sys\n"
        "path=sys.argv[1]; me=int(sys.argv[2])\n"
        "for i in range(200):\n"
        "    p=os.path.join(path,f'w{me}-{i%10}')\n"
        "    with open(p,'wb') as f: f.write(bytes([me])*(1000+i))\n"
        "    with open(os.path.join(path,'big'),'rb') as f: assert f.read(1)==b'L'\n"
        "    with open(p,'rb') as f: assert f.read()==bytes([me])*(1000+i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, mnt, str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    for n in range(4):
        for i in range(10):
            assert os.path.getsize(os.path.join(mnt, f"w{n}-{i}")) == 1000 + 190 + i


NOBODY = 65534


def test_an_ordinary_user_mounts_writes_and_unmounts():
    """Rootless-ish: the daemon runs as uid 65534 and mounts through the setuid fusermount3. libfuse
    3.14 falls back to fusermount3 only if it can open /dev/fuse (0666 on most hosts, 0600 on some):
    the test opens it to others for as long as the mount takes, then puts its mode back."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    python = [*drop, "/usr/bin/python3"]  # the venv's interpreter may sit where others cannot run it
    pythonpath = f"{REPO}:{sysconfig.get_paths()['purelib']}"
    probe = subprocess.run(
        [*python, "-c", "import pyfuse3, trio, unionfs"],
        cwd="/",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot import strata from {pythonpath}: {probe.stderr.strip().splitlines()[-1:]}")
    base = tempfile.mkdtemp(prefix="strata-rootless-", dir="/tmp")  # pytest's tmp_path is root's alone
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    try:
        os.chmod(base, 0o755)
        lower = make_layer(os.path.join(base, "lower"), {"d/f": "lower\n", "d/gone": "x"})
        upper, work, point = (os.path.join(base, n) for n in ("upper", "work", "mnt"))
        for d in (upper, work, point):
            os.mkdir(d)
        for path in (lower, *(os.path.join(lower, p) for p in ("d", "d/f", "d/gone")), upper, work, point):
            os.chown(path, NOBODY, NOBODY)  # the user's own layers (as after a rootless pull)
        os.chmod("/dev/fuse", fuse_mode | 0o666)
        try:
            with mounted(point, [lower], upper, work, python=python, pythonpath=pythonpath) as daemon:
                os.chmod("/dev/fuse", fuse_mode)  # the daemon holds its fd: that is all it needs
                assert os.stat(f"/proc/{daemon.pid}").st_uid == NOBODY
                assert mountinfo.mounts_at(point)[0][1] == "fuse.unionfs"
                # (root itself may not look inside: FUSE keeps a mount to its owner without allow_other)
                user = subprocess.run(
                    [
                        *drop,
                        "sh",
                        "-c",
                        'cd "$1" && echo more >> d/f && rm d/gone && mkdir new && cat d/f',
                        "sh",
                        point,
                    ],
                    capture_output=True,
                    text=True,
                )
                assert user.returncode == 0, user.stderr
                assert user.stdout == "lower\nmore\n"
                with open(os.path.join(upper, "d", "f")) as f:
                    assert f.read() == "lower\nmore\n"
                whiteout = os.stat(os.path.join(upper, "d", ".wh.gone"))
                assert (whiteout.st_uid, os.stat(os.path.join(upper, "new")).st_uid) == (NOBODY, NOBODY)
                assert subprocess.run([*drop, "fusermount3", "-u", point]).returncode == 0
                assert daemon.wait(timeout=30) == 0
                assert not is_mounted(point)
        finally:
            os.chmod("/dev/fuse", fuse_mode)
    finally:
        shutil.rmtree(base)


def test_randomized_io_against_a_model(mnt):
    rng = random.Random(1234)
    for name in ("lowerfile", "fresh"):
        path = os.path.join(mnt, name)
        if name == "fresh":
            open(path, "wb").close()
        model = bytearray(open(path, "rb").read())
        fd = os.open(path, os.O_RDWR)
        try:
            for _step in range(400):
                op = rng.choice(["write", "read", "truncate", "mmap", "append"])
                if op == "write":
                    off, data = rng.randrange(0, 70_000), rng.randbytes(rng.randrange(1, 5000))
                    os.pwrite(fd, data, off)
                    if off > len(model):
                        model.extend(bytes(off - len(model)))
                    model[off : off + len(data)] = data
                elif op == "append":
                    data = rng.randbytes(rng.randrange(1, 3000))
                    os.pwrite(fd, data, len(model))
                    model.extend(data)
                elif op == "truncate":
                    size = rng.randrange(0, 80_000)
                    os.ftruncate(fd, size)
                    model = model[:size] + bytearray(max(0, size - len(model)))
                elif op == "mmap" and len(model) > 0:
                    with mmap.mmap(fd, len(model)) as m:
                        off = rng.randrange(0, len(model))
                        data = rng.randbytes(min(100, len(model) - off))
                        m[off : off + len(data)] = data
                        m.flush()
                    model[off : off + len(data)] = data
                else:
                    off, size = rng.randrange(0, 80_000), rng.randrange(1, 10_000)
                    assert os.pread(fd, size, off) == bytes(model[off : off + size])
                assert os.fstat(fd).st_size == len(model)
        finally:
            os.close(fd)
        assert open(path, "rb").read() == bytes(model)


def test_statfs_fsync_xattrs_and_special_files(mnt):
    sv = os.statvfs(mnt)
    assert sv.f_bsize > 0 and sv.f_blocks > 0
    path = os.path.join(mnt, "synced")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"data")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    os.setxattr(path, "user.a", b"1")
    assert os.getxattr(path, "user.a") == b"1"
    os.removexattr(path, "user.a")
    assert "user.a" not in os.listxattr(path)
    import socket

    sock_path = os.path.join(mnt, "sock")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(sock_path)
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        s.close()
    if os.geteuid() == 0:
        os.mknod(os.path.join(mnt, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert os.lstat(os.path.join(mnt, "null")).st_rdev == os.makedev(1, 3)
        os.setxattr(path, "trusted.t", b"2")
        assert os.getxattr(path, "trusted.t") == b"2"
        os.setxattr(path, "security.s", b"3")
        assert os.getxattr(path, "security.s") == b"3"
        # file capabilities (the kernel asks for them before every write, to take them away)
        with pytest.raises(OSError) as info:
            os.getxattr(path, "security.capability")
        assert info.value.errno == errno.ENODATA
        with open(path, "ab") as f:
            f.write(b"more")
        caps = struct.pack("<5I", 0x02000000, 1 << 13, 0, 0, 0)  # VFS_CAP_REVISION_2: cap_net_raw
        os.setxattr(path, "security.capability", caps)
        assert os.getxattr(path, "security.capability") == caps
        with open(path, "ab") as f:  # a write takes file capabilities away, as on any filesystem
            f.write(b"more")
        with pytest.raises(OSError) as info:
            os.getxattr(path, "security.capability")
        assert info.value.errno == errno.ENODATA
        with pytest.raises(OSError) as info:
            os.setxattr(path, "trusted.overlay.opaque", b"y")
        assert info.value.errno == errno.EPERM


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_new_objects_in_a_setgid_dir_take_its_group(mnt):
    """As the kernel does: files and dirs made in a setgid directory get its group, and dirs the bit,
    also after the directory's group changed through the mount."""
    d = os.path.join(mnt, "dir")  # a lower directory: copied up by the chown
    os.chown(d, -1, 4321)
    os.chmod(d, 0o2775)
    with open(os.path.join(d, "new"), "w") as f:
        f.write("x")
    os.mkdir(os.path.join(d, "sub"))
    assert os.lstat(os.path.join(d, "new")).st_gid == 4321
    sub = os.lstat(os.path.join(d, "sub"))
    assert sub.st_gid == 4321 and sub.st_mode & stat.S_ISGID
    os.chown(d, -1, 4322)
    with open(os.path.join(d, "newer"), "w") as f:
        f.write("y")
    assert os.lstat(os.path.join(d, "newer")).st_gid == 4322


def test_setting_one_time_keeps_the_other(mnt):
    """utimensat with UTIME_OMIT for one of the two (``touch -m`` / ``touch -a``), on a lower file."""
    path = os.path.join(mnt, "lowerfile")
    before = os.lstat(path)
    subprocess.run(["touch", "-m", "-d", "@1000000000", path], check=True)
    after = os.lstat(path)
    assert after.st_mtime_ns == 1_000_000_000_000_000_000 and after.st_atime_ns == before.st_atime_ns
    subprocess.run(["touch", "-a", "-d", "@2000000000", path], check=True)
    again = os.lstat(path)
    assert again.st_atime_ns == 2_000_000_000_000_000_000 and again.st_mtime_ns == after.st_mtime_ns


def test_a_file_created_read_only_can_be_written_by_its_creator(daemon):
    """With our pyfuse3 create answers ENOSYS and the kernel makes files with MKNOD, then opens
    them without an OPEN (one request less per file). That open must still skip the permission
    check, as open(2) does for the file it created: an ordinary user creates a file 0444 and
    writes through the fd it got. The kernel asks CREATE once, then never again."""
    base = tempfile.mkdtemp(prefix="strata-create-", dir="/tmp")  # pytest's tmp_path is root's alone
    try:
        os.chmod(base, 0o755)
        lower = make_layer(os.path.join(base, "l"), {"pub/.keep": ""})
        os.chmod(os.path.join(lower, "pub"), 0o777)
        upper, work, point = (os.path.join(base, n) for n in ("u", "w", "mnt"))
        for d in (upper, work, point):
            os.mkdir(d)
        script = (
            "import os, sys\n"
            "for name in ('a', 'b'):\n"
            "    fd = os.open(os.path.join(sys.argv[1], name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)\n"
            "    os.write(fd, b'written')\n"
            "    os.close(fd)\n"
        )
        with mounted(point, [lower], upper, work, extra=",allow_other", python=daemon.python):
            done = subprocess.run(
                [
                    "setpriv",
                    f"--reuid={NOBODY}",
                    f"--regid={NOBODY}",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    script,
                    os.path.join(point, "pub"),
                ],
                capture_output=True,
                text=True,
                cwd="/",
            )
            assert done.returncode == 0, done.stderr
            for name in ("a", "b"):
                path = os.path.join(point, "pub", name)
                st = os.stat(path)
                with open(path, "rb") as f:
                    assert (stat.S_IMODE(st.st_mode), st.st_uid, f.read()) == (0o444, NOBODY, b"written")
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("daemon", ["patched", "stock", "no-killpriv-v2"], indirect=True)
def test_writes_truncations_and_chowns_drop_setuid_bits_as_the_kernel_does(daemon):
    """A write or a truncation by a caller without CAP_FSETID (an ordinary user) drops a file's
    setuid bit, and its setgid bit where group-execute is set; root's keep them; a chown drops
    them whoever makes it. The same operations run on a plain directory of the upper's filesystem
    and through the mount (on copies of lower files), and must leave the same modes: with
    FUSE_HANDLE_KILLPRIV_V2 the daemon drops them where the kernel says so; without it (a stock
    pyfuse3, or ours on a libfuse its hooks were not written for) the kernel sends the new mode."""
    base = tempfile.mkdtemp(prefix="strata-suid-", dir="/tmp")  # pytest's tmp_path is root's alone
    names = ("user-write", "user-truncate", "root-write", "root-truncate", "chown")
    try:
        os.chmod(base, 0o755)
        lower = make_layer(os.path.join(base, "l"), {f"pub/{n}": "data" for n in names})
        plain = os.path.join(base, "plain")
        shutil.copytree(os.path.join(lower, "pub"), plain)
        upper, work, point = (os.path.join(base, n) for n in ("u", "w", "mnt"))
        for d in (upper, work, point):
            os.mkdir(d)
        for d in (os.path.join(lower, "pub"), plain):
            os.chmod(d, 0o777)
            for n in names:
                os.chmod(os.path.join(d, n), 0o6777)  # setuid, setgid and group-execute: both can go
        user = (
            "import os, sys\n"
            "with open(os.path.join(sys.argv[1], 'user-write'), 'ab') as f:\n"
            "    f.write(b'more')\n"
            "os.truncate(os.path.join(sys.argv[1], 'user-truncate'), 1)\n"
        )

        def act(d: str) -> dict[str, int]:
            done = subprocess.run(
                [
                    "setpriv",
                    f"--reuid={NOBODY}",
                    f"--regid={NOBODY}",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    user,
                    d,
                ],
                capture_output=True,
                text=True,
                cwd="/",
            )
            assert done.returncode == 0, done.stderr
            with open(os.path.join(d, "root-write"), "ab") as f:
                f.write(b"more")
            os.truncate(os.path.join(d, "root-truncate"), 1)
            os.chown(os.path.join(d, "chown"), NOBODY, NOBODY)
            return {n: stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) for n in names}

        expected = act(plain)
        assert expected["user-write"] == expected["user-truncate"] == expected["chown"] == 0o777
        assert expected["root-write"] == expected["root-truncate"] == 0o6777
        with mounted(point, [lower], upper, work, extra=",allow_other", python=daemon.python):
            assert act(os.path.join(point, "pub")) == expected
        assert {n: stat.S_IMODE(os.stat(os.path.join(upper, "pub", n)).st_mode) for n in names} == expected
    finally:
        shutil.rmtree(base)

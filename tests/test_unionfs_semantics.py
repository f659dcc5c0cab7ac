"""Corners where a union must behave as a local filesystem and kernel overlayfs do: hard links of any
kind of lower file, "." and "..", link counts, fresh objects never taking a held number, renameat2's
flags, uppers written by other overlay implementations, and layers given through symlinks. Each runs
on the handlers called directly and through a real mount."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat

import pytest
import unionfs_support
from unionfs_support import OpsClient, errno_of, make_layer, mounted

from unionfs.fs import UnionFS

union = unionfs_support.union  # the fixture: each test runs on the handlers and on a mount
ROOT = os.geteuid() == 0
T1, T2 = 1_000_000_000, 2_000_000_123  # ns


def _kinds(root: bool) -> list[str]:
    return ["sym", "fifo", "sock"] + (["chr", "blk"] if root else [])


async def test_a_hard_link_of_any_lower_file_keeps_its_type_mode_owner_and_times(union):
    kinds = _kinds(ROOT)

    def prepare(lowers):
        d = lowers[0]
        os.symlink("target", f"{d}/sym")
        os.mkfifo(f"{d}/fifo", 0o640)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(f"{d}/sock")
        if ROOT:
            os.mknod(f"{d}/chr", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
            os.mknod(f"{d}/blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        for k in kinds:
            if ROOT:
                os.chown(f"{d}/{k}", 1234, 5678, follow_symlinks=False)
            os.utime(f"{d}/{k}", ns=(T1, T2), follow_symlinks=False)

    fs = union({"x": "x"}, prepare=prepare)
    before = {k: await fs.stat(k) for k in kinds}
    for k in kinds:
        await fs.link(k, f"{k}2")
    for k in kinds:
        for name in (k, f"{k}2"):
            st = await fs.stat(name)
            want = before[k]
            assert (st.st_mode, st.st_uid, st.st_gid, st.st_ino) == (
                want.st_mode,
                want.st_uid,
                want.st_gid,
                want.st_ino,
            ), name
            assert st.st_nlink == 2, name
            up = os.lstat(os.path.join(fs.upper, name))
            assert up.st_mtime_ns == T2, name  # the link's copy-up kept the lower's mtime
    assert await fs.readlink("sym2") == "target"


async def test_readdir_lists_dot_and_dotdot(union):
    fs = union({"d/": None, "d/a": "a", "d/e/": None}, upper_spec={"u/": None, "u/f": "f"})
    for path, parent in (("d", ""), ("u", ""), ("d/e", "d"), ("", "")):
        entries = await fs.listdir_all(path)
        names = [n for n, _ in entries]
        assert names[:2] == [".", ".."] and names.count(".") == names.count("..") == 1, path
        inos = dict(entries)
        assert inos["."] == (await fs.stat(path)).st_ino
        if path:  # the root's ".." is the mountpoint's parent, outside the mount
            assert inos[".."] == (await fs.stat(parent)).st_ino
    assert sorted(n for n, _ in await fs.listdir_all("d")) == [".", "..", "a", "e"]


async def test_directory_link_counts_are_two_plus_subdirs_or_one_when_merged(union):
    fs = union(
        {"low/": None, "low/a/": None, "low/b/": None, "low/f": "f", "both/": None, "both/a/": None},
        upper_spec={"up/": None, "up/a/": None, "up/f": "f", "both/": None, "both/b/": None},
    )
    assert (await fs.stat("low")).st_nlink == 4
    assert (await fs.stat("up")).st_nlink == 3
    assert (await fs.stat("both")).st_nlink == 1  # merged: "unknown", never a wrong number
    assert (await fs.stat("low/a")).st_nlink == 2
    await fs.mkdir("up/c")
    assert (await fs.stat("up")).st_nlink == 4
    await fs.chmod("low", 0o700)  # copied up: now merged with its lower part
    assert (await fs.stat("low")).st_nlink == 1


async def test_a_new_object_never_takes_the_number_of_one_still_held(union):
    """The upper filesystem reuses a removed directory's inode; the kernel may still hold the old
    one (a cwd, an open fd): the new directory must get a number of its own (the kernel answered
    ESTALE to the mkdir when it did not)."""
    fs = union({"x": "x"})
    await fs.mkdir("a")
    await fs.mkdir("b")
    held = {}
    fds = []
    try:
        reused = False
        for i in range(200):
            await fs.mkdir(f"a/d{i}")
            st = await fs.stat(f"a/d{i}")
            if fs.kind == "mount":
                fds.append(os.open(fs.p(f"a/d{i}"), os.O_RDONLY | os.O_DIRECTORY))  # the kernel holds it
            held[os.lstat(os.path.join(fs.upper, f"a/d{i}")).st_ino] = st.st_ino
            await fs.rmdir(f"a/d{i}")
            await fs.mkdir(f"b/n{i}")  # must not fail (ESTALE)
            new = await fs.stat(f"b/n{i}")
            assert new.st_ino not in held.values()
            reused |= os.lstat(os.path.join(fs.upper, f"b/n{i}")).st_ino in held
            if reused and i > 20:
                break
        assert reused, "the upper never reused an inode: the test proved nothing"
    finally:
        for fd in fds:
            os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


async def _rename2(fs, src: str, dst: str, flags: int) -> None:
    if isinstance(fs, OpsClient):
        sp, sn = await fs._parent(src)
        dp, dn = await fs._parent(dst)
        await fs._call(fs.fs.rename, sp, sn, dp, dn, flags, fs.ctx)
        return
    if _libc.renameat2(-100, os.fsencode(fs.p(src)), -100, os.fsencode(fs.p(dst)), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


async def test_rename_noreplace_refuses_a_name_of_any_layer(union):
    fs = union({"low": "l", "src": "s"}, upper_spec={"up": "u"})
    assert await errno_of(_rename2(fs, "src", "low", RENAME_NOREPLACE)) == errno.EEXIST
    assert await errno_of(_rename2(fs, "src", "up", RENAME_NOREPLACE)) == errno.EEXIST
    await _rename2(fs, "src", "new", RENAME_NOREPLACE)
    assert await fs.read("new") == b"s" and not await fs.exists("src")


async def test_rename_exchange_swaps_files_and_dirs_across_layers(union):
    fs = union(
        {"a": "A", "b": "B", "ld/": None, "ld/x": "x", "d1/": None}, upper_spec={"u": "U", "ud/": None, "ud/y": "y"}
    )
    ino_a, ino_b = (await fs.stat("a")).st_ino, (await fs.stat("b")).st_ino
    await _rename2(fs, "a", "b", RENAME_EXCHANGE)  # two lower files: both copied up
    assert (await fs.read("a"), await fs.read("b")) == (b"B", b"A")
    assert ((await fs.stat("a")).st_ino, (await fs.stat("b")).st_ino) == (ino_b, ino_a)
    await _rename2(fs, "u", "ud", RENAME_EXCHANGE)  # a file and an upper dir
    assert await fs.read("ud") == b"U" and await fs.listdir("u") == ["y"]
    assert await errno_of(_rename2(fs, "a", "ld", RENAME_EXCHANGE)) == errno.EXDEV  # a dir with lower parts
    assert await errno_of(_rename2(fs, "a", "missing", RENAME_EXCHANGE)) == errno.ENOENT
    assert await fs.listdir("ld") == ["x"] and await fs.read("a") == b"B"
    await fs.unlink("a")
    await fs.unlink("b")
    assert not await fs.exists("a") and not await fs.exists("b")  # whiteouts hide the lowers


@pytest.mark.skipif(not ROOT, reason="0/0 whiteouts need mknod, trusted.* xattrs need root")
async def test_an_upper_written_by_another_overlay_is_honoured(union, tmp_path):
    def prepare(lowers):
        upper = str(tmp_path / "upper")
        make_layer(upper, {"d/": None, "d/new": "n", "e/": None, "e/mine": "m"})
        os.mknod(f"{upper}/gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        os.mknod(f"{upper}/gdir", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        os.setxattr(f"{upper}/d", "trusted.overlay.opaque", b"y")
        os.setxattr(f"{upper}/e", "user.overlay.opaque", b"y")

    fs = union(
        {"gone": "g", "gdir/": None, "gdir/old": "o", "d/": None, "d/old": "o", "e/": None, "e/old": "o", "keep": "k"},
        prepare=prepare,
    )
    assert await fs.listdir("") == ["d", "e", "keep"]
    assert not await fs.exists("gone")
    assert await fs.listdir("d") == ["new"] and await fs.listdir("e") == ["mine"]
    assert await errno_of(fs.read("d/old")) == errno.ENOENT
    await fs.write("gone", b"again")  # a name made where a 0/0 whiteout hid it
    assert await fs.read("gone") == b"again"
    await fs.mkdir("gdir")  # over a whiteout: opaque, the lower dir's entries stay hidden
    assert await fs.listdir("gdir") == []
    assert not any(stat.S_ISCHR(os.lstat(os.path.join(fs.upper, n)).st_mode) for n in ("gone", "gdir"))


async def test_lowerdirs_given_through_symlinks_work(tmp_path):
    real = make_layer(str(tmp_path / "real"), {"f": "lower"})
    os.makedirs(tmp_path / "l")
    link = str(tmp_path / "l" / "SHORT")
    os.symlink(real, link)  # as containers-storage's overlay/l/ links
    upper, work, point = (str(tmp_path / n) for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        os.makedirs(d)
    fs = UnionFS([link], upper, work)
    try:
        assert await OpsClient(fs).read("f") == b"lower"
    finally:
        fs.close()
    with mounted(point, [link], upper, work):
        with open(os.path.join(point, "f"), "rb") as f:
            assert f.read() == b"lower"


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


async def test_fallocate_copies_up_then_allocates_keeps_size_or_punches_holes(union):
    fs = union({"f": b"L" * 8192, "g": b"G" * 8192})
    if fs.kind == "mount" and not fs.daemon.pyfuse3.fallocate:
        # a stock pyfuse3 does not pass FALLOCATE on (unionfs/patches/0005): the kernel says so
        assert fs.daemon.name == "stock", "this pyfuse3 has no fallocate: build it with unionfs/patches (make deps)"
        assert await errno_of(fs.fallocate("f", 0, 0, 1 << 20)) == errno.EOPNOTSUPP
        assert await fs.read("f") == b"L" * 8192
        return
    await fs.fallocate("f", 0, 0, 1 << 20)  # mode 0: the size grows, the data stays
    assert (await fs.stat("f")).st_size == 1 << 20
    assert await fs.read("f", 8192) == b"L" * 8192 and await fs.read("f", 10, 8192) == b"\0" * 10
    assert os.lstat(os.path.join(fs.upper, "f")).st_size == 1 << 20  # on the copy-up
    await fs.fallocate("g", FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
    assert (await fs.stat("g")).st_size == 8192
    assert os.lstat(os.path.join(fs.upper, "g")).st_blocks * 512 >= 1 << 20
    await fs.fallocate("g", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
    assert await fs.read("g") == b"\0" * 4096 + b"G" * 4096
    assert open(os.path.join(fs.lowers[0], "g"), "rb").read() == b"G" * 8192


async def test_a_read_through_the_union_moves_no_atime_in_a_layer(union):
    """Kernel overlayfs reads a lower file through a noatime mount of its own: layers are shared and
    read-only, their atimes too. The atime here is before the mtime, which relatime would move."""
    fs = union({"f": "lower"})
    lower = os.path.join(fs.lowers[0], "f")
    if os.statvfs(lower).f_flag & os.ST_NOATIME:
        pytest.skip("the layers' filesystem is mounted noatime: no read would move an atime")
    os.utime(lower, ns=(T1, T2))  # (after the fixture's snapshot of the layer, which read it)
    assert await fs.read("f") == b"lower"
    assert os.stat(lower).st_atime_ns == T1
    assert int((await fs.stat("f")).st_atime) == T1 // 10**9  # (the handlers' stat has seconds only)

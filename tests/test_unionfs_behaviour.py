"""The union filesystem's semantics, run twice: on the handlers called directly and through a real
mount. Kernel overlayfs (Documentation/filesystems/overlayfs.rst) is the reference."""

from __future__ import annotations

import errno
import os
import stat
import sys
from types import SimpleNamespace

import pyfuse3
import pytest
import unionfs_support
from unionfs_support import OPAQUE, WHITEOUT, MountClient, OpsClient, errno_of, make_layer, mounted

from unionfs import journal
from unionfs.fs import UnionFS

union = unionfs_support.union  # the fixture: each test runs on the handlers and on a mount


async def test_lookup_goes_upper_then_lowers_in_order(union):
    fs = union(
        {"etc/hostname": "l0\n", "only0": "a"},
        {"etc/hostname": "l1\n", "etc/passwd": "p", "only1": "b"},
        upper_spec={"etc/hostname": "up\n"},
    )
    assert await fs.read("etc/hostname") == b"up\n"
    assert await fs.read("only1") == b"b"
    assert await fs.listdir("") == ["etc", "only0", "only1"]
    assert await fs.listdir("etc") == ["hostname", "passwd"]


async def test_whiteouts_and_opaque_dirs_in_lowers_are_honoured(union):
    fs = union({"gone": WHITEOUT, "var/": OPAQUE, "var/new": "n"}, {"gone": "g", "var/old": "o", "keep": "k"})
    assert not await fs.exists("gone")
    assert await fs.listdir("") == ["keep", "var"]
    assert await fs.listdir("var") == ["new"]
    assert await errno_of(fs.read("var/old")) == errno.ENOENT


async def test_write_to_lower_file_copies_it_up_with_its_metadata(union):
    def prepare(lowers):
        os.chmod(f"{lowers[0]}/d/f", 0o4751)
        os.setxattr(f"{lowers[0]}/d/f", "user.note", b"kept")
        os.utime(f"{lowers[0]}/d", ns=(1_000_000_000, 2_000_000_000))
        os.utime(f"{lowers[0]}/d/f", ns=(3_000_000_000, 4_000_000_000))

    fs = union({"d/": None, "d/f": "lower data", "d/g": "other"}, prepare=prepare)
    lower = fs.lowers[0]
    ino = (await fs.stat("d/f")).st_ino
    await fs.write("d/f", b"LOWER", flags=os.O_WRONLY)
    assert await fs.read("d/f") == b"LOWER data"
    assert open(f"{lower}/d/f", "rb").read() == b"lower data"
    up = os.lstat(f"{fs.upper}/d/f")
    assert stat.S_IMODE(up.st_mode) == 0o4751  # setuid survived the copy
    assert os.getxattr(f"{fs.upper}/d/f", "user.note") == b"kept"
    assert os.lstat(f"{fs.upper}/d").st_mtime_ns == 2_000_000_000  # the parent's times came along
    assert (await fs.stat("d/f")).st_ino == ino  # stable across copy-up
    assert os.listdir(fs.work) == [journal.DIRNAME]  # no copy left behind; the journal's dir


async def test_copy_up_keeps_every_owner_and_mode(union):
    """The copy is created with its final mode when nothing would change it afterwards (the owner is
    already the daemon's, no bit the umask takes away): either way it ends as the lower file was."""
    cases = {
        "plain": (0o644, None),
        "open": (0o777, None),
        "setuid": (0o4755, None),
        "sticky": (0o1640, None),
        "other": (0o4750, (1234, 5678)),
        "group": (0o2755, (0, 5678)),
    }
    if os.geteuid() != 0:
        cases = {k: v for k, v in cases.items() if v[1] is None}

    def prepare(lowers):
        for name, (mode, owner) in cases.items():
            if owner:
                os.chown(f"{lowers[0]}/{name}", *owner)
            os.chmod(f"{lowers[0]}/{name}", mode)

    fs = union(dict.fromkeys(cases, "data"), prepare=prepare)
    for name, (mode, owner) in cases.items():
        await fs.write(name, b"D", flags=os.O_WRONLY)
        st = os.lstat(f"{fs.upper}/{name}")
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert (st.st_uid, st.st_gid) == (owner or (os.geteuid(), os.getegid())), name
        assert await fs.read(name) == b"Data"


async def test_metadata_changes_copy_up(union):
    fs = union({"a": "1", "b": "2", "c": "3", "x": "4"})
    await fs.chmod("a", 0o600)
    await fs.utime("b", (5_000_000_000, 6_000_000_000))
    await fs.truncate("c", 1)
    await fs.setxattr("x", "user.k", b"v")
    assert stat.S_IMODE(os.lstat(f"{fs.upper}/a").st_mode) == 0o600
    assert os.lstat(f"{fs.upper}/b").st_mtime_ns == 6_000_000_000
    assert await fs.read("c") == b"3"
    assert await fs.getxattr("x", "user.k") == b"v" and "user.k" in await fs.listxattr("x")
    if os.geteuid() == 0:
        await fs.chown("a", 1234, 5678)
        st = await fs.stat("a")
        assert (st.st_uid, st.st_gid) == (1234, 5678)


async def test_unlink_lower_file_leaves_whiteout(union):
    fs = union({"f": "x", "d/": None, "d/g": "y"})
    await fs.unlink("f")
    await fs.unlink("d/g")
    assert not await fs.exists("f") and await fs.listdir("d") == []
    assert os.path.isfile(f"{fs.upper}/.wh.f") and os.path.isfile(f"{fs.upper}/d/.wh.g")
    await fs.rmdir("d")  # looks empty in the merged view
    assert not await fs.exists("d") and os.path.isfile(f"{fs.upper}/.wh.d")
    assert await fs.listdir("") == []


async def test_unlink_of_upper_only_file_leaves_no_whiteout(union):
    fs = union({})
    await fs.write("new", b"n")
    await fs.unlink("new")
    assert os.listdir(fs.upper) == []


async def test_rename_over_lower_file_then_unlink_does_not_resurrect(union):
    fs = union({"src": "new content", "dst": "old lower"})
    await fs.rename("src", "dst")
    assert await fs.read("dst") == b"new content" and not await fs.exists("src")
    await fs.unlink("dst")
    assert not await fs.exists("dst")
    assert await fs.listdir("") == []


async def test_mkdir_over_whiteout_makes_opaque_dir(union):
    fs = union({"d/": None, "d/old": "o"})
    await fs.unlink("d/old")
    await fs.rmdir("d")
    await fs.mkdir("d")
    assert await fs.listdir("d") == []
    assert os.path.isfile(f"{fs.upper}/d/.wh..wh..opq")
    await fs.write("d/new", b"n")
    assert await fs.listdir("d") == ["new"]


async def test_rmdir_of_non_empty_merged_dir_fails(union):
    fs = union({"d/": None, "d/f": "x"})
    assert await errno_of(fs.rmdir("d")) == errno.ENOTEMPTY


async def test_directory_rename(union):
    fs = union({"lowerdir/": None, "lowerdir/f": "x"})
    assert await errno_of(fs.rename("lowerdir", "moved")) == errno.EXDEV
    await fs.mkdir("updir")
    await fs.write("updir/f", b"u")
    await fs.rename("updir", "moved")
    assert await fs.read("moved/f") == b"u" and not await fs.exists("updir")


async def test_rename_dir_over_lower_dir_hides_its_contents(union):
    fs = union({"target/": None, "target/old": "o"})
    await fs.unlink("target/old")
    await fs.mkdir("fresh")
    await fs.rename("fresh", "target")
    assert await fs.listdir("target") == []


async def test_whiteout_names_cannot_be_created(union):
    fs = union({})
    assert await errno_of(fs.write(".wh.evil", b"")) == errno.EINVAL
    assert await errno_of(fs.mkdir(".wh..wh..opq")) == errno.EINVAL
    assert await errno_of(fs.read(".wh.anything")) == errno.ENOENT


async def test_inode_numbers_unique_across_layers_and_stable(union):
    fs = union({"a": "1", "dir/": None}, {"b": "2", "dir/x": "x"})
    inos = {name: (await fs.stat(name)).st_ino for name in ("a", "b", "dir", "dir/x")}
    assert len(set(inos.values())) == 4
    await fs.write("a", b"changed", flags=os.O_WRONLY)
    await fs.write("dir/new", b"n")  # copies dir up
    assert {name: (await fs.stat(name)).st_ino for name in inos} == inos


async def test_hard_links(union):
    fs = union({"one": "linked", "two": ("link", "one")})
    s1, s2 = await fs.stat("one"), await fs.stat("two")
    assert s1.st_ino == s2.st_ino and s1.st_nlink == 2
    await fs.write("made", b"abc")
    await fs.link("made", "alias")
    await fs.write("alias", b"XY", flags=os.O_WRONLY)
    assert await fs.read("made") == b"XYc"
    await fs.write("made", b"Z", flags=os.O_WRONLY, offset=2)
    assert await fs.read("alias") == b"XYZ"
    m, a = await fs.stat("made"), await fs.stat("alias")
    assert m.st_ino == a.st_ino and m.st_nlink == 2
    # a link to a lower file copies it up first, and stays linked
    await fs.link("one", "three")
    await fs.write("three", b"L", flags=os.O_WRONLY)
    assert (await fs.read("one"))[:1] == b"L"


async def test_symlinks_fifos_and_long_names(union):
    fs = union({"abs": ("symlink", "/etc/passwd"), "rel": ("symlink", "abs")})
    assert await fs.readlink("abs") == "/etc/passwd"
    assert stat.S_ISLNK((await fs.stat("rel")).st_mode)
    await fs.symlink("/somewhere/else", "new")
    assert await fs.readlink("new") == "/somewhere/else"
    await fs.mkfifo("pipe")
    assert stat.S_ISFIFO((await fs.stat("pipe")).st_mode)
    assert await errno_of(fs.write("n" * 256, b"")) == errno.ENAMETOOLONG
    await fs.write("n" * 255, b"ok")
    assert await fs.read("n" * 255) == b"ok"


async def test_append_sparse_and_large_offsets(union):
    fs = union({"log": "line1\n"})
    await fs.write("log", b"line2\n", flags=os.O_WRONLY | os.O_APPEND)
    assert await fs.read("log") == b"line1\nline2\n"
    await fs.write("big", b"tail", flags=os.O_WRONLY | os.O_CREAT, offset=5 * 2**30)  # > 4 GiB, sparse
    st = await fs.stat("big")
    assert st.st_size == 5 * 2**30 + 4
    assert await fs.read("big", 4, 5 * 2**30) == b"tail"
    assert await fs.read("big", 4, 2**30) == b"\0\0\0\0"


async def test_open_with_trunc_on_lower_file(union):
    fs = union({"f": "x" * 100_000})
    await fs.write("f", b"short")
    assert await fs.read("f") == b"short"


async def test_remount_same_upper_gives_same_view(union, tmp_path):
    fs = union({"a": "1", "d/": None, "d/x": "x"})
    await fs.write("a", b"changed", flags=os.O_WRONLY | os.O_TRUNC)
    await fs.unlink("d/x")
    await fs.mkdir("n")
    view = {p: sorted(await fs.listdir(p)) for p in ("", "d", "n")}
    mnt = tmp_path / "again"
    mnt.mkdir()
    work2 = tmp_path / "work2"
    work2.mkdir()
    python = fs.daemon.python if fs.kind == "mount" else (sys.executable,)  # the same pyfuse3 again
    with mounted(str(mnt), fs.lowers, fs.upper, str(work2), python=python):
        again = MountClient(str(mnt))
        assert {p: sorted(await again.listdir(p)) for p in ("", "d", "n")} == view
        assert await again.read("a") == b"changed"


async def test_read_only_union_without_upper(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(str(mnt), [lower]):
        assert open(mnt / "f").read() == "x"
        with pytest.raises(OSError) as info:
            open(mnt / "new", "w")
        assert info.value.errno == errno.EROFS


async def test_a_name_made_again_after_its_whiteout_shows(union):
    """A directory this daemon copies up starts with no whiteouts, and creating in it or looking a
    name up in it skips the search for one, until a whiteout is made in it."""
    fs = union({"d/": None, "d/g": "lower", "d/h": "lower h"})
    await fs.write("d/new", b"n")  # copies d up: a new, empty upper directory
    assert await fs.read("d/h") == b"lower h"  # looked up past the upper, which has no whiteout
    await fs.unlink("d/g")
    assert os.path.isfile(f"{fs.upper}/d/.wh.g")
    assert not await fs.exists("d/g")  # the whiteout is asked for again
    await fs.write("d/g", b"made again")
    assert await fs.read("d/g") == b"made again" and not os.path.exists(f"{fs.upper}/d/.wh.g")
    await fs.mkdir("e")
    await fs.write("e/f", b"x")
    assert sorted(os.listdir(f"{fs.upper}/e")) == ["f"]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file for another user is root's")
@pytest.mark.parametrize("uid", [0, 1234])
async def test_a_new_setuid_file_keeps_its_bits_and_goes_to_the_caller(tmp_path, uid):
    """The daemon creates as root, then hands the file to the caller: that chown would drop the
    setuid bits the caller asked for, so they are put back (and no chown is made for root)."""
    fs = UnionFS(
        [make_layer(str(tmp_path / "l"), {})], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {})
    )
    try:
        ctx = SimpleNamespace(uid=uid, gid=uid, pid=os.getpid(), umask=0)
        _info, attr = await fs.create(pyfuse3.ROOT_INODE, b"tool", stat.S_IFREG | 0o6755, os.O_WRONLY, ctx)
        st = os.lstat(tmp_path / "u" / "tool")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o6755, uid, uid)
        assert (stat.S_IMODE(attr.st_mode), attr.st_uid) == (0o6755, uid)
    finally:
        fs.close()


async def test_unexpected_error_becomes_eio_and_the_filesystem_survives(tmp_path, monkeypatch):
    lower = make_layer(str(tmp_path / "l"), {"f": "x"})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}))
    client = OpsClient(fs)
    try:

        def broken(*args, **kwargs):
            raise RuntimeError("injected")

        monkeypatch.setattr(fs.layers, "resolve", broken)
        assert await errno_of(client.read("f")) == errno.EIO
        monkeypatch.undo()
        assert await client.read("f") == b"x"
    finally:
        fs.close()


@pytest.mark.parametrize("no_open", [False, True])
async def test_o_trunc_copies_no_data(tmp_path, monkeypatch, no_open):
    import unionfs.copyup as copyup

    lower = make_layer(str(tmp_path / "l"), {"f": "x" * 10_000})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}), no_open=no_open)
    copied = []
    real = copyup.copy_data
    monkeypatch.setattr(copyup, "copy_data", lambda *a: (copied.append(a), real(*a)))
    try:
        await OpsClient(fs).write("f", b"new", flags=os.O_WRONLY | os.O_TRUNC)
        assert copied == []
        assert open(f"{tmp_path}/u/f", "rb").read() == b"new"
    finally:
        fs.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a 0/0 whiteout device needs mknod (root)")
async def test_overlay_style_whiteouts_and_opaque_xattrs_in_lowers(union):
    def prepare(lowers):
        os.mknod(f"{lowers[0]}/gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        os.makedirs(f"{lowers[0]}/opq")
        open(f"{lowers[0]}/opq/new", "w").close()
        os.setxattr(f"{lowers[0]}/opq", "trusted.overlay.opaque", b"y")
        os.makedirs(f"{lowers[0]}/uopq")
        os.setxattr(f"{lowers[0]}/uopq", "user.overlay.opaque", b"y")

    fs = union({}, {"gone": "g", "opq/old": "o", "uopq/old": "o", "kept": "k"}, prepare=prepare)
    assert not await fs.exists("gone")
    assert await fs.listdir("") == ["kept", "opq", "uopq"]
    assert await fs.listdir("opq") == ["new"]
    assert await fs.listdir("uopq") == []
    assert "trusted.overlay.opaque" not in await fs.listxattr("opq")  # internal markers stay hidden

"""The union filesystem's semantics, run twice: on the handlers called directly and through a real
mount. Kernel overlayfs (Documentation/filesystems/overlayfs.rst) is the reference."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from contextlib import ExitStack
from types import SimpleNamespace

import pyfuse3
import pytest
from helpers import snapshot
from unionfs_support import OPAQUE, WHITEOUT, MountClient, OpsClient, make_layer, mounted

from unionfs import journal
from unionfs.fs import UnionFS


@pytest.fixture(params=["ops", "ops-no-open", "mount"])
def union(request, tmp_path):
    stack = ExitStack()

    def build(*lower_specs, upper_spec=None, prepare=None):
        lowers = [make_layer(str(tmp_path / f"lower{i}"), spec) for i, spec in enumerate(lower_specs)]
        if prepare:
            prepare(lowers)
        upper = make_layer(str(tmp_path / "upper"), upper_spec or {})
        work = str(tmp_path / "work")
        os.makedirs(work)
        before = [snapshot(lower) for lower in lowers]
        # lower dirs are never modified, whatever the test did
        stack.callback(lambda: [snapshot(lower) for lower in lowers] == before or pytest.fail("a lower changed"))
        if request.param.startswith("ops"):
            # "ops-no-open": open answers ENOSYS, as a mount on our patched pyfuse3 does
            fs = UnionFS(lowers, upper, work, no_open=request.param == "ops-no-open")
            stack.callback(fs.close)
            client = OpsClient(fs)
        else:
            mnt = str(tmp_path / "mnt")
            os.makedirs(mnt)
            stack.enter_context(mounted(mnt, lowers, upper, work))
            client = MountClient(mnt)
        client.upper, client.lowers, client.work = upper, lowers, work
        return client

    yield build
    stack.close()


async def _errno(coro) -> int:
    try:
        await coro
    except OSError as e:
        return e.errno
    return 0


async def test_lookup_goes_upper_then_lowers_in_order(union):
    fs = union({"etc/hostname": "l0\n", "only0": "a"}, {"etc/hostname": "l1\n", "etc/passwd": "p", "only1": "b"},
               upper_spec={"etc/hostname": "up\n"})
    assert await fs.read("etc/hostname") == b"up\n"
    assert await fs.read("only1") == b"b"
    assert await fs.listdir("") == ["etc", "only0", "only1"]
    assert await fs.listdir("etc") == ["hostname", "passwd"]


async def test_whiteouts_and_opaque_dirs_in_lowers_are_honoured(union):
    fs = union({"gone": WHITEOUT, "var/": OPAQUE, "var/new": "n"}, {"gone": "g", "var/old": "o", "keep": "k"})
    assert not await fs.exists("gone")
    assert await fs.listdir("") == ["keep", "var"]
    assert await fs.listdir("var") == ["new"]
    assert await _errno(fs.read("var/old")) == errno.ENOENT


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
    cases = {"plain": (0o644, None), "open": (0o777, None), "setuid": (0o4755, None), "sticky": (0o1640, None),
             "other": (0o4750, (1234, 5678)), "group": (0o2755, (0, 5678))}
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
    assert await _errno(fs.rmdir("d")) == errno.ENOTEMPTY


async def test_directory_rename(union):
    fs = union({"lowerdir/": None, "lowerdir/f": "x"})
    assert await _errno(fs.rename("lowerdir", "moved")) == errno.EXDEV
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
    assert await _errno(fs.write(".wh.evil", b"")) == errno.EINVAL
    assert await _errno(fs.mkdir(".wh..wh..opq")) == errno.EINVAL
    assert await _errno(fs.read(".wh.anything")) == errno.ENOENT


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
    assert await _errno(fs.write("n" * 256, b"")) == errno.ENAMETOOLONG
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
    with mounted(str(mnt), fs.lowers, fs.upper, str(work2)):
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
    """A directory this daemon copies up starts with no whiteouts, and creating in it skips the
    search for one, until a whiteout is made in it."""
    fs = union({"d/": None, "d/g": "lower"})
    await fs.write("d/new", b"n")  # copies d up: a new, empty upper directory
    await fs.unlink("d/g")
    assert os.path.isfile(f"{fs.upper}/d/.wh.g")
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
    fs = UnionFS([make_layer(str(tmp_path / "l"), {})], make_layer(str(tmp_path / "u"), {}),
                 make_layer(str(tmp_path / "w"), {}))
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
        assert await _errno(client.read("f")) == errno.EIO
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
    real = copyup._copy_data
    monkeypatch.setattr(copyup, "_copy_data", lambda *a: (copied.append(a), real(*a)))
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


@pytest.mark.parametrize("volatile", [False, True])
async def test_a_copy_up_with_data_is_noted_before_it_is_renamed_into_place(tmp_path, monkeypatch, volatile):
    """Else a power cut could leave an empty upper file that hides the lower one (kernel overlayfs
    fsyncs each copy-up instead; fuse-overlayfs 1.10 does neither). The note goes once the data is
    on disk: after an fsync here. ``volatile`` (overlayfs's option) notes nothing, and makes fsync a
    no-op as well."""
    lower = make_layer(str(tmp_path / "l"), {"f": "x" * 100, "g": "y"})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}), volatile)
    events: list[str] = []
    _record(monkeypatch, events, fsync="fsync", rename="rename", symlink="note")
    try:
        client = OpsClient(fs)
        await client.chmod("f", 0o600)  # a copy-up with data
        assert events == (["rename"] if volatile else ["note", "rename"])
        notes = [] if volatile else [(f"{os.stat(tmp_path / 'u' / 'f').st_ino}.0", f"{lower}/f")]
        assert _notes(tmp_path / "w") == notes
        events.clear()
        await client.write("g", b"new", flags=os.O_WRONLY | os.O_TRUNC)  # no data copied: nothing to note
        assert events == ["rename"]
        events.clear()
        ino = (await fs.lookup(pyfuse3.ROOT_INODE, b"f", client.ctx)).st_ino
        await fs.fsync(ino, False)
        assert events == ([] if volatile else ["fsync"])
        assert _notes(tmp_path / "w") == []  # on disk now
    finally:
        fs.close()


def _record(monkeypatch, events: list[str], **calls: str) -> None:
    """Each ``os.NAME`` in ``calls`` appends its label to ``events``, then does its work."""
    for name, label in calls.items():
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _label=label, **k: (events.append(_label), _real(*a, **k))[1])


def _notes(work) -> list[tuple[str, str]]:
    d = work / journal.DIRNAME
    return sorted((n, os.readlink(d / n)) for n in os.listdir(d) if n != journal.UPPER) if d.exists() else []


async def test_a_note_goes_when_nothing_copied_can_be_lost(tmp_path, monkeypatch):
    """The last name going drops a note (a second name keeps it); a truncation below the lower's
    size first fsyncs the copy (recovery could not tell it from lost data), one to zero just drops
    it, one above keeps it; the flusher's sync of the upper drops every note made before it."""
    lower = make_layer(str(tmp_path / "l"), {n: "x" * 100 for n in ("a", "b", "c", "d", "e", "f")})
    work = tmp_path / "w"
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(work), {}))
    synced: list[str] = []
    _record(monkeypatch, synced, fsync="fsync")
    try:
        client = OpsClient(fs)
        for name in "abcdef":
            await client.chmod(name, 0o600)

        def noted() -> list[str]:
            return sorted(os.path.basename(target) for _, target in _notes(work))
        assert noted() == list("abcdef") and synced == []
        await client.link("a", "a2")
        await client.unlink("a")
        await client.unlink("b")
        assert noted() == list("acdef")  # a keeps its other name
        await client.truncate("c", 10)
        assert noted() == list("adef") and len(synced) == 1
        await client.truncate("d", 0)
        await client.truncate("e", 1000)
        assert noted() == list("aef") and len(synced) == 1
        assert fs._journal is not None
        fs._journal.flush_every(0.01)  # the mounted daemon's thread (every vm.dirty_expire_centisecs)
        deadline = time.monotonic() + 10
        while fs._journal.notes:
            assert time.monotonic() < deadline, "the flusher never synced"
            time.sleep(0.01)
        assert noted() == []
    finally:
        fs.close()


@pytest.mark.parametrize("volatile", [False, True])
async def test_the_next_mount_recovers_only_files_that_lost_data(tmp_path, volatile):
    """Leftover notes (a crash): a noted file shorter than its lower gets the lower's data back, its
    mode and times kept; one that kept its data (here: grown since) is not touched; a note whose
    file is gone just goes. A volatile mount recovers too (it makes no notes of its own). A file
    that cannot be repaired (immutable here) is logged and does not keep the mount down."""
    lower, upper, work = _crashed(tmp_path)
    stuck = make_layer(f"{upper}/stuck", {"f": ""})
    os.symlink(f"{lower}/lost", work / journal.DIRNAME / f"{os.stat(f'{stuck}/f').st_ino}.8")
    subprocess.run(["chattr", "+i", f"{stuck}/f"], check=True)
    try:
        fs = UnionFS([lower], upper, str(work), volatile)
    finally:
        subprocess.run(["chattr", "-i", f"{stuck}/f"], check=True)
    try:
        assert open(f"{upper}/sub/lost").read() == "lower one"
        st = os.stat(f"{upper}/sub/lost")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o4750, 2_000_000_000)
        assert open(f"{upper}/kept").read() == "lower two, and more"
        assert os.listdir(work) == ([] if volatile else [journal.DIRNAME])
        assert volatile or os.listdir(work / journal.DIRNAME) == [journal.UPPER]
    finally:
        fs.close()


async def test_notes_made_for_another_upper_are_dropped_unused(tmp_path):
    lower, upper, work = _crashed(tmp_path)
    os.unlink(work / journal.DIRNAME / journal.UPPER)
    os.symlink("12345", work / journal.DIRNAME / journal.UPPER)  # not this upper's root
    fs = UnionFS([lower], upper, str(work))
    try:
        assert open(f"{upper}/sub/lost").read() == ""
        assert os.listdir(work / journal.DIRNAME) == [journal.UPPER]
        assert os.readlink(work / journal.DIRNAME / journal.UPPER) == str(os.stat(upper).st_ino)
    finally:
        fs.close()


def _crashed(tmp_path):
    """(lower, upper, work) as a crash leaves them: notes for a file that lost its data, one that
    kept it, and one that is gone."""
    lower = make_layer(str(tmp_path / "l"), {"lost": "lower one", "kept": "lower two", "gone": "x"})
    upper = make_layer(str(tmp_path / "u"), {"sub/lost": "", "kept": "lower two, and more"})
    work = tmp_path / "w"
    notes = work / journal.DIRNAME
    notes.mkdir(parents=True)
    os.symlink(str(os.stat(upper).st_ino), notes / journal.UPPER)
    os.chmod(f"{upper}/sub/lost", 0o4750)
    for name in ("sub/lost", "kept"):
        os.utime(f"{upper}/{name}", ns=(1_000_000_000, 2_000_000_000))
    for name, target in (("sub/lost", "lost"), ("kept", "kept")):
        os.symlink(f"{lower}/{target}", notes / f"{os.stat(f'{upper}/{name}').st_ino}.7")
    os.symlink(f"{lower}/gone", notes / "999999999.3")
    return lower, upper, work


async def test_a_small_copy_up_runs_on_the_loop_only_when_its_data_is_in_memory(tmp_path, monkeypatch):
    """The first copy from a lower filesystem goes to a thread and finds out whether RWF_NOWAIT can
    ask its page cache; then a small copy whose data is cached runs on the loop, and one whose data
    would be read from the disk goes to a thread. That miss is simulated: the kernel's own answer
    (EAGAIN) depends on its page cache, which it fills by itself (a RWF_NOWAIT miss starts the
    readahead, and the test saw a file dropped with POSIX_FADV_DONTNEED come back)."""
    import trio

    lower = make_layer(str(tmp_path / "l"), {n: os.urandom(50_000).hex() for n in ("first", "cached", "cold")})
    for name in ("first", "cached"):  # read, and seen in the page cache (fincore: mincore(2))
        for _ in range(5):
            with open(f"{lower}/{name}", "rb") as f:
                f.read()
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", f"{lower}/{name}"],
                                 check=True, capture_output=True, text=True).stdout
            if int(out) >= 100_000:
                break
        else:
            raise AssertionError(f"{name}: the kernel would not keep its pages")
    cold = os.stat(f"{lower}/cold").st_ino
    real_preadv = os.preadv

    def preadv(fd: int, buffers, offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT and os.fstat(fd).st_ino == cold:
            raise BlockingIOError(errno.EAGAIN, "not in the page cache")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}))
    threads: list[str] = []
    real = trio.to_thread.run_sync
    monkeypatch.setattr(trio.to_thread, "run_sync", lambda fn, *a, **k: (threads.append("thread"), real(fn, *a, **k))[1])
    try:
        client = OpsClient(fs)
        for name, thread in (("first", True), ("cached", False), ("cold", True)):
            threads.clear()
            await client.chmod(name, 0o600)
            assert threads == (["thread"] if thread else []), (name, threads)
            assert open(f"{tmp_path}/u/{name}").read() == open(f"{lower}/{name}").read()
    finally:
        fs.close()


async def test_a_copy_up_that_cannot_be_noted_is_fsynced(tmp_path, monkeypatch):
    """A note is a symlink to the lower file: a lower path too long for one (PATH_MAX) is fsynced
    before the rename instead, in a worker thread."""
    lower = make_layer(str(tmp_path / "l"), {"f": "x" * 100})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}))
    monkeypatch.setattr(journal, "_NOTE_MAX", len(lower))  # shorter than f"{lower}/f"
    events: list[str] = []
    _record(monkeypatch, events, fsync="fsync", rename="rename")
    try:
        await OpsClient(fs).chmod("f", 0o600)
        assert events == ["fsync", "rename"] and _notes(tmp_path / "w") == []
    finally:
        fs.close()


async def test_a_copy_up_leaves_the_new_file_open_for_what_follows(tmp_path, monkeypatch):
    """The copy is made read-write in the workdir and that fd stays with the node: the write, the
    touch and the chmod after a copy-up open nothing more (before, the write opened the file)."""
    lower = make_layer(str(tmp_path / "l"), {"f": "lower"})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}), no_open=True)
    try:
        client = OpsClient(fs)
        await client.chmod("f", 0o600)  # the copy-up
        opened: list[str] = []
        _record(monkeypatch, opened, open="open")
        await client.write("f", b"UPPER", flags=os.O_WRONLY)
        await client.utime("f", (1_000_000_000, 2_000_000_000))
        await client.chmod("f", 0o640)
        assert opened == []
        st = os.lstat(tmp_path / "u" / "f")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 2_000_000_000)
        assert (tmp_path / "u" / "f").read_bytes() == b"UPPER" and os.listdir(tmp_path / "w") == [journal.DIRNAME]
    finally:
        fs.close()


async def test_a_filesystem_that_cannot_clone_is_not_asked_twice(tmp_path, monkeypatch):
    """FICLONE is tried once per lower filesystem: where it fails (ext4, tmpfs), copy-ups copy bytes and
    stop paying for the failing ioctl."""
    import fcntl

    from unionfs import copyup

    lower = make_layer(str(tmp_path / "l"), {"f": "x" * 100, "g": "y" * 100})
    fs = UnionFS([lower], make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {}))
    asked: list[int] = []

    def refuse(fd: int, request: int, arg: int) -> None:
        asked.append(request)
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    try:
        client = OpsClient(fs)
        await client.chmod("f", 0o600)
        await client.chmod("g", 0o600)
        assert asked == [copyup._FICLONE]
        assert await client.read("f") == b"x" * 100 and await client.read("g") == b"y" * 100
    finally:
        fs.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_backing_fds_are_capped_and_an_unlinked_file_keeps_its_own(tmp_path):
    """File handles are inode numbers (with no OPEN, the kernel sends nothing else): the backing fds
    stay with the nodes, the most recently used few of them, and a file whose last name goes keeps
    its fd, outside that cap, until the kernel forgets it."""
    lower = make_layer(str(tmp_path / "l"), {**{f"f{i}": f"content {i}" for i in range(8)}, "low": "lower data"})
    upper, work = make_layer(str(tmp_path / "u"), {}), make_layer(str(tmp_path / "w"), {})
    fs = UnionFS([lower], upper, work, no_open=True, fd_cache=2)
    client = OpsClient(fs)
    try:
        await client.write("new", b"new data")
        new, low = await client._ino("new"), await client._ino("low")
        assert await fs.read(low, 0, 100) == b"lower data"
        baseline = _open_fds()
        for _ in range(2):
            for i in range(8):
                assert await client.read(f"f{i}") == f"content {i}".encode()
        assert len(fs._fd_lru) == 2 and _open_fds() <= baseline

        # both lose their last name while (as far as the daemon can know) the kernel holds them open
        await client.unlink("new")
        await client.unlink("low")
        for i in range(8):  # push every cached fd out
            await client.read(f"f{i}")
        assert await fs.read(new, 0, 100) == b"new data"
        assert await fs.write(new, 0, b"NEW") == 3
        assert await fs.read(new, 0, 100) == b"NEW data"
        assert (await fs.getattr(new, client.ctx)).st_nlink == 0
        # the lower file, written after its name went: a copy that only its fd names
        assert await fs.read(low, 0, 100) == b"lower data"
        assert await fs.write(low, 0, b"LOWER") == 5
        assert await fs.read(low, 0, 100) == b"LOWER data"
        assert sorted(os.listdir(upper)) == [".wh.low"] and os.listdir(work) == [journal.DIRNAME]
        assert open(f"{lower}/low").read() == "lower data"

        # a hard link's name the node was known by goes: its other name still serves it
        await client.write("h1", b"linked")
        await client.link("h1", "h2")
        linked = await client._ino("h1")
        await client.unlink("h1")
        for i in range(8):
            await client.read(f"f{i}")
        assert await fs.read(linked, 0, 100) == b"linked"
        assert (await fs.getattr(linked, client.ctx)).st_nlink == 1

        held = _open_fds()
        await fs.forget([(new, fs.nodes[new].lookups), (low, fs.nodes[low].lookups)])
        assert _open_fds() == held - 2  # the kernel let go: so do we
    finally:
        fs.close()

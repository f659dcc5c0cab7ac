"""Copy-ups and what backs them, on the handlers called directly: the journal's notes (made, dropped,
recovered), copies on the loop or in a thread, the copy's fd kept, the ways data is copied, and the
cap on backing fds."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time

import pyfuse3
import pytest
from unionfs_support import OpsClient, make_layer

from unionfs import journal
from unionfs.fs import UnionFS


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
        assert events == (["rename"] if volatile else ["note", "note", "rename"])  # the dir's upper link first
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
        monkeypatch.setattr(
            os, name, lambda *a, _real=real, _label=label, **k: (events.append(_label), _real(*a, **k))[1]
        )


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
        while fs._journal.notes or noted():  # (the thread drops a note from its table, then its file)
            assert time.monotonic() < deadline, "the flusher never synced"
            time.sleep(0.01)
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
            out = subprocess.run(
                ["fincore", "--bytes", "--noheadings", "--output", "RES", f"{lower}/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
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
    monkeypatch.setattr(
        trio.to_thread, "run_sync", lambda fn, *a, **k: (threads.append("thread"), real(fn, *a, **k))[1]
    )
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

    from unionfs import copydata

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
        assert asked == [copydata._FICLONE]
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
        assert len(fs.fds.lru) == 2 and _open_fds() <= baseline

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
        assert sorted(os.listdir(upper)) == [".wh.low"] and os.listdir(work) == []  # (a copy no name shows: no note)
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

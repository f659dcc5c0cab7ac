"""FUSE passthrough (``unionfs/passthrough.py``, pyfuse3 0006): as root on our pyfuse3 an open file is
read and written by the kernel through a backing file, and no READ or WRITE reaches the daemon; where
the kernel or the privileges refuse, the same opens go through the daemon and read and write the same.

Each union here is served in a child process that counts the daemon's read and write handler calls
(as test_unionfs_pyfuse3's killpriv test counts getattrs) while it works through the mount."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from unionfs_support import OpsClient, is_mounted, make_layer, mounted, python_child

from unionfs import passthrough
from unionfs.errors import UnionError
from unionfs.fs import UnionFS
from unionfs.options import parse_options

BIG = 3 * 1024 * 1024 + 17

# The child: mounts a union of LOWER (+ UPPER, WORK) at POINT as ``python -m unionfs`` would as root
# (passthrough asked for where ``passthrough.usable()``), then reads a big lower file, writes a new
# file, appends to a lower file and reads both back, and prints what the daemon's handlers saw.
_CHILD = """\
import json, os, sys, trio, pyfuse3
from unionfs import passthrough
from unionfs.fs import UnionFS
lower, upper, work, point, how = sys.argv[1:]
if how == "other-libfuse":  # as on a libfuse 0004's hooks were not written for: none installed
    pyfuse3._killpriv_v2_libfuse = lambda version: False
fs = UnionFS([lower], upper, work, no_open=True, passthrough=passthrough.usable())
calls = {"read": 0, "write": 0}
def counted(name):
    handler = getattr(fs, name)
    async def count(*args):
        calls[name] += 1
        return await handler(*args)
    return count
fs.read, fs.write = counted("read"), counted("write")
pyfuse3.init(fs, point, ["fsname=strata-test"])
def work_through():
    with open(os.path.join(point, "big"), "rb") as f:
        big = f.read()
    with open(os.path.join(point, "new"), "wb") as f:
        f.write(b"N" * 300000)
    with open(os.path.join(point, "small"), "ab") as f:
        f.write(b"+appended")
    with open(os.path.join(point, "new"), "rb") as f:
        new = f.read()
    with open(os.path.join(point, "small"), "rb") as f:
        small = f.read()
    return {"big": big == b"L" * BIG_SIZE, "new": new == b"N" * 300000, "small": small.decode(),
            "stat": os.stat(os.path.join(point, "new")).st_size}
async def main():
    async with trio.open_nursery() as n:
        n.start_soon(pyfuse3.main)
        await fs.initialised.wait()
        seen = await trio.to_thread.run_sync(work_through)
        seen.update(calls, kernel=pyfuse3.passthrough_fd() >= 0, asked=fs.passthrough is not None,
                    on=fs.passthrough is not None and fs.passthrough.on)
        print(json.dumps(seen))
        pyfuse3.terminate()
try:
    trio.run(main)
finally:
    pyfuse3.close(unmount=True)
""".replace("BIG_SIZE", str(BIG))


def _child(tmp_path, child: str, lower: str, how: str, prefix: tuple[str, ...] = ()) -> tuple[Any, Path]:
    """Run ``child`` on a union of ``lower`` (upper, work and mountpoint made in ``tmp_path``): what it
    printed (JSON) and the upper. It must have unmounted."""
    upper, work, point = (tmp_path / n for n in ("u", "w", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    done = python_child(child, lower, str(upper), str(work), str(point), how, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(str(point))
    return json.loads(done.stdout), upper


def _serve(
    tmp_path, how: str, lower: str | None = None, prefix: tuple[str, ...] = (), child: str = _CHILD
) -> dict[str, object]:
    lower = lower or make_layer(str(tmp_path / "l"), {"big": b"L" * BIG, "small": "lower"})
    seen, upper = _child(tmp_path, child, lower, how, prefix)
    assert (upper / "new").read_bytes() == b"N" * 300000 and (upper / "small").read_text() == "lower+appended"
    assert seen["big"] and seen["new"] and seen["small"] == "lower+appended" and seen["stat"] == 300000
    return dict(seen)


def test_as_root_reads_and_writes_of_open_files_never_reach_the_daemon(tmp_path):
    """The kernel took FUSE_PASSTHROUGH, and a 3 MiB read, a 300 KB write, an append to a copied-up
    lower file and the reads back cost the daemon no READ and no WRITE."""
    assert passthrough.usable()  # root in the initial user namespace, on Linux >= 6.9
    seen = _serve(tmp_path, "root")
    assert seen["kernel"] and seen["on"]
    assert (seen["read"], seen["write"]) == (0, 0)


def test_on_a_libfuse_the_hooks_were_not_written_for_the_daemon_reads_and_writes(tmp_path):
    """0006 rides 0004's hooks: where they are not installed the kernel is never asked, and every open
    goes through the page cache and the daemon, correctly."""
    seen = _serve(tmp_path, "other-libfuse")
    assert seen["asked"] and not seen["kernel"] and not seen["on"]
    assert seen["read"] > 0 and seen["write"] > 0


@pytest.mark.parametrize("forced", [False, True])
def test_without_cap_sys_admin_in_the_initial_namespace_the_daemon_reads_and_writes(tmp_path, forced):
    """Root in a user namespace of its own (a rootless mount's position): passthrough is not asked
    for, and the kernel's OPEN is spared as before (no_open). Asked for anyway (``forced``), the
    kernel takes the INIT flag but refuses each backing file (EPERM): passthrough goes off for the
    mount, and the opens go through the page cache."""
    child = (
        _CHILD.replace("from unionfs.fs import", "passthrough.usable = lambda: True\nfrom unionfs.fs import", 1)
        if forced
        else _CHILD
    )
    seen = _serve(tmp_path, "userns", prefix=("unshare", "-Urm", "--propagation", "private"), child=child)
    assert not seen["on"]
    assert seen["asked"] == seen["kernel"] == forced
    assert seen["read"] > 0 and seen["write"] > 0


def test_a_lower_on_a_stacked_filesystem_is_read_through_the_daemon(tmp_path):
    """A backing file on overlayfs is refused (ELOOP: the mount offers max_stack_depth 1): that file
    is opened through the page cache and read by the daemon, while the upper's files still pass
    through."""
    a, b = make_layer(str(tmp_path / "a"), {"big": b"L" * BIG, "small": "lower"}), make_layer(str(tmp_path / "b"), {})
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={a}:{b}", str(stacked)], check=True)
    try:
        seen = _serve(tmp_path, "root", lower=str(stacked))
    finally:
        subprocess.run(["umount", str(stacked)], check=True)
    assert seen["kernel"] and seen["on"]
    assert seen["read"] > 0  # the lower file, through the daemon
    assert seen["write"] == 0  # the new file and the copy-up, passed through


@pytest.fixture
def union(tmp_path):
    lower = make_layer(str(tmp_path / "lower"), {"f": "lower content\n"})
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work)):
        yield str(point)


def _write_under_an_open_reader(path: str) -> None:
    """A reader of ``path`` (a lower file, read through its backing file), then a writer: the writer
    gets the copy-up, the reader goes on reading the lower data (kernel overlayfs's semantics), and
    every open from then on sees the copy."""
    before = os.stat(path).st_ino
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 5, 0) == b"lower"
        writer = os.open(path, os.O_WRONLY | os.O_TRUNC)  # the kernel asked twice (ESTALE): once seen
        try:
            os.write(writer, b"upper\n")
            assert os.pread(reader, 100, 0) == b"lower content\n"
            with open(path, "rb") as f:
                assert f.read() == b"upper\n"
            assert os.stat(path).st_size == 6 and os.stat(path).st_ino != before  # a number of its own
            again = os.open(path, os.O_WRONLY | os.O_APPEND)  # the name's object now: no clash left
            os.write(again, b"more\n")
            os.close(again)
        finally:
            os.close(writer)
        assert os.pread(reader, 100, 0) == b"lower content\n"
    finally:
        os.close(reader)
    with open(path, "rb") as f:
        assert f.read() == b"upper\nmore\n"


def test_a_lower_file_open_for_reading_can_be_opened_for_writing(union):
    """The kernel reads an open lower file through it and takes no other backing file for that
    inode until its last close; an open for writing copies the file up all the same, under a number
    of its own (the Caveats of unionfs/passthrough.py)."""
    _write_under_an_open_reader(os.path.join(union, "f"))


def test_a_metacopy_open_for_reading_can_be_opened_for_writing(tmp_path):
    """A chmod leaves a metacopy whose reads pass the lower file through: a writer then gets the
    data copied up and a number of its own, while the reader keeps the lower file."""
    lower = make_layer(str(tmp_path / "lower"), {"f": "lower content\n"})
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    with mounted(str(point), [lower], str(upper), str(work), extra=",metacopy=on"):
        path = str(point / "f")
        os.chmod(path, 0o600)
        assert os.getxattr(str(upper / "f"), "user.strata.metacopy")  # no data in the upper yet
        _write_under_an_open_reader(path)
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_reader_after_a_truncate_sees_the_copy_not_what_earlier_readers_see(union):
    """A truncate copies up a lower file held open through its backing file: a reader opened after
    it reads the truncated copy (its own number), the earlier one the lower data."""
    path = os.path.join(union, "f")
    earlier = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, 3)
        with open(path, "rb") as f:
            assert f.read() == b"low"
        assert os.pread(earlier, 100, 0) == b"lower content\n"
    finally:
        os.close(earlier)


def test_opens_of_an_upper_file_share_one_backing_file(union):
    """A writer and readers of one upper file at once, all through the one backing file: each sees
    the others' writes, and sizes and times follow."""
    path = os.path.join(union, "shared")
    writer = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        reader = os.open(path, os.O_RDONLY)
        try:
            os.write(writer, b"one")
            assert os.pread(reader, 10, 0) == b"one"
            before = os.stat(path).st_mtime_ns
            os.pwrite(writer, b"two", 3)
            assert os.pread(reader, 10, 0) == b"onetwo"
            after = os.stat(path)
            assert after.st_size == 6 and after.st_mtime_ns >= before
        finally:
            os.close(reader)
    finally:
        os.close(writer)
    with open(path, "rb") as f:
        assert f.read() == b"onetwo"


def test_passthrough_0_keeps_the_no_open_path(tmp_path):
    """``-o passthrough=0`` mounts as rootless strata does, even as root: the kernel sends no OPEN,
    so an open for writing copies nothing up until the first write. Without it (passthrough) the
    open copies up."""
    lower = make_layer(str(tmp_path / "lower"), {"f": "lower content\n", "g": "g"})
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    for extra, name in ((",passthrough=0", "f"), ("", "g")):
        with mounted(str(point), [lower], str(upper), str(work), extra=extra):
            fd = os.open(point / name, os.O_RDWR)
            try:
                assert (upper / name).exists() == (extra == "")
                os.pwrite(fd, b"W", 0)
            finally:
                os.close(fd)
    assert (upper / "f").read_bytes() == b"Wower content\n" and (upper / "g").read_bytes() == b"W"


def test_the_passthrough_option_takes_0_or_1():
    assert parse_options(["lowerdir=/,passthrough=0"]).passthrough is False
    assert parse_options(["lowerdir=/,passthrough=1"]).passthrough is True
    assert parse_options(["lowerdir=/"]).passthrough is True
    with pytest.raises(UnionError, match="passthrough=2: 0"):
        parse_options(["lowerdir=/,passthrough=2"])


# The child for the idle ids: a union with room for two idle ids (fd_cache=2) whose Passthrough
# counts BACKING_OPENs and BACKING_CLOSEs, each step's counts printed after it (once the daemon has
# taken every RELEASE: the kernel sends them after close(2) has returned).
_IDLE_CHILD = """\
import json, os, sys, time, trio, pyfuse3
from unionfs import passthrough
from unionfs.fs import UnionFS
lower, upper, work, point, how = sys.argv[1:]
fs = UnionFS([lower], upper, work, metacopy=True, passthrough=True, fd_cache=2)
pt = fs.passthrough
counts = {"open": 0, "close": 0}
def counted(name, key):
    real = getattr(pt, name)
    def count(*args):
        counts[key] += 1
        return real(*args)
    setattr(pt, name, count)
counted("_register", "open")
counted("_close", "close")
releasing = [0]  # RELEASEs the daemon is in the middle of
real_released = pt.released
def released_counted(ino):
    releasing[0] += 1
    try:
        real_released(ino)
    finally:
        releasing[0] -= 1
pt.released = released_counted
pyfuse3.init(fs, point, ["fsname=strata-test"])
def read(name):
    with open(os.path.join(point, name), "rb") as f:
        return f.read().decode()
def released():  # the kernel sends RELEASE after close returns: wait until the daemon has done it
    deadline = time.monotonic() + 30
    while (pt.opens or releasing[0]) and time.monotonic() < deadline:
        time.sleep(0.001)
    return not (pt.opens or releasing[0])
def step(seen, label, action):
    before = dict(counts)
    done = action()
    assert released(), label
    seen.append([label, done, counts["open"] - before["open"], counts["close"] - before["close"]])
def work_through():
    seen = []
    step(seen, "a", lambda: read("a"))
    step(seen, "a again", lambda: read("a"))
    step(seen, "a chmod, metacopy", lambda: os.chmod(os.path.join(point, "a"), 0o600))
    step(seen, "a, metacopy", lambda: read("a"))
    def write_a():
        with open(os.path.join(point, "a"), "ab") as f:
            f.write(b"+")
    step(seen, "a written", write_a)
    step(seen, "a copied up", lambda: read("a"))
    step(seen, "a copied up again", lambda: read("a"))
    step(seen, "b", lambda: read("b"))
    step(seen, "c", lambda: read("c"))
    step(seen, "d", lambda: read("d"))
    step(seen, "b, not kept", lambda: read("b"))
    step(seen, "d again", lambda: read("d"))
    return seen
async def main():
    async with trio.open_nursery() as n:
        n.start_soon(pyfuse3.main)
        await fs.initialised.wait()
        seen = await trio.to_thread.run_sync(work_through)
        print(json.dumps({"seen": seen, "idle": len(pt.idle)}))
        pyfuse3.terminate()
try:
    trio.run(main)
finally:
    pyfuse3.close(unmount=True)
"""


def test_a_lower_files_backing_id_outlives_its_last_close_and_an_upper_files_does_not(tmp_path):
    """A lower file read again takes the backing id of its last open (no BACKING_OPEN, no
    BACKING_CLOSE); so does a metacopy, whose data is that lower file. Copied up, the file gets an
    id of its own, closed at each last close (an idle one would keep a deleted file's blocks); the
    stale lower id goes. Past the cap (2 here) the least recently released lower id is closed."""
    lower = make_layer(str(tmp_path / "lower"), {n: n * 3 for n in "abcd"})
    found, _ = _child(tmp_path, _IDLE_CHILD, lower, "root")
    assert found["seen"] == [
        ["a", "aaa", 1, 0],
        ["a again", "aaa", 0, 0],
        ["a chmod, metacopy", None, 0, 0],
        ["a, metacopy", "aaa", 0, 0],
        ["a written", None, 1, 2],  # the copy's id, closed at its close; the stale lower id closed
        ["a copied up", "aaa+", 1, 1],
        ["a copied up again", "aaa+", 1, 1],
        ["b", "bbb", 1, 0],
        ["c", "ccc", 1, 0],
        ["d", "ddd", 1, 1],  # a third idle id: b's, the least recent, is closed
        ["b, not kept", "bbb", 1, 1],  # and c's now
        ["d again", "ddd", 0, 0],
    ]
    assert found["idle"] == 2


async def test_a_node_the_kernel_forgets_takes_its_idle_id_with_it(tmp_path):
    """The kernel forgets nodes under memory pressure (their fds leave the cache then): an idle id
    goes with its node, through the FORGET handler, rather than keep the lower file pinned. An
    upper file's id was closed at its release already."""
    lower = make_layer(str(tmp_path / "l"), {"lower": "l", "other": "o"})
    upper, work = make_layer(str(tmp_path / "u"), {"upper": "u"}), make_layer(str(tmp_path / "w"), {})
    fs = UnionFS([lower], upper, work, passthrough=True, fd_cache=4)
    pt = fs.passthrough
    assert pt is not None
    registered: list[int] = []
    closed: list[int] = []
    pt.dev_fd = 3  # (no session: the ioctls are counted, not made)
    pt._register = lambda fd: registered.append(fd) or 100 + len(registered)  # type: ignore[method-assign]
    pt._close = closed.append  # type: ignore[method-assign]
    client = OpsClient(fs)
    try:
        inos = {}
        for name in ("lower", "upper", "other"):
            inos[name], fh = await client._open(name, os.O_RDONLY)
            await fs.release(fh)
        assert len(registered) == 3 and closed == [102]  # the upper file's, at its release
        assert sorted(pt.idle) == sorted([inos["lower"], inos["other"]])
        await fs.forget([(ino, fs.nodes[ino].lookups) for ino in (inos["lower"], inos["upper"])])
        assert closed == [102, 101] and list(pt.idle) == [inos["other"]]
    finally:
        fs.close()

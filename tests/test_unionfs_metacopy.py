"""Metadata-only copy-ups (``-o metacopy=on``, ``unionfs.metacopy``): a change that needs no data
copies the inode alone and records where the data is; reads take it from there until the first
write or truncation. Each behaviour runs on the handlers called directly and through a real mount."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from unionfs_support import MountClient, OpsClient, daemon_on, errno_of, make_layer, mounted

from unionfs import journal, metacopy
from unionfs.fs import UnionFS
from unionfs.options import parse_options

DATA = b"lower data " * 300  # 3300 bytes: more than a page


def _record(path: str) -> tuple[str, str] | None:
    return metacopy.recorded(path)


def _seek_data(fd: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data at all: a hole to the end
            return os.fstat(fd).st_size
        raise


def _sparse(path: str) -> bool:
    with open(path, "rb") as f:
        return _seek_data(f.fileno()) == os.fstat(f.fileno()).st_size


@pytest.fixture(params=["ops", "ops-open", "mount", "mount-stock"])
def meta(request: Any, tmp_path: Any) -> Iterator[Any]:
    """``meta(lower_spec)``: a client on a union with metacopy on (handlers called directly, with
    open answering ENOSYS or not, or a real mount on our pyfuse3 or a stock one); ``.remount()``
    serves the same dirs again (a mount's state on disk is all there is); the lowers must come out
    unchanged."""
    stack = ExitStack()
    state: dict[str, Any] = {}

    def serve(client_lowers: list[str], upper: str, work: str) -> Any:
        if request.param.startswith("ops"):
            fs = UnionFS(client_lowers, upper, work, no_open=request.param == "ops", metacopy=True)
            state["close"] = fs.close
            client: Any = OpsClient(fs)
        else:
            on = daemon_on("stock" if request.param == "mount-stock" else "patched")
            mnt = str(tmp_path / "mnt")
            os.makedirs(mnt, exist_ok=True)
            inner = ExitStack()
            inner.enter_context(mounted(mnt, client_lowers, upper, work, extra=",metacopy=on", python=on.python))
            state["close"] = inner.close
            client = MountClient(mnt, on)
        client.upper, client.lowers, client.work = upper, client_lowers, work
        client.remount = lambda: remount(client)
        return client

    def remount(client: Any) -> Any:
        state.pop("close")()
        return serve(client.lowers, client.upper, client.work)

    def build(spec: dict[str, Any]) -> Any:
        lower = make_layer(str(tmp_path / "lower"), spec)
        upper = make_layer(str(tmp_path / "upper"), {})
        work = str(tmp_path / "work")
        os.makedirs(work)
        with open(f"{lower}/big", "wb") as f:
            f.write(DATA)
        before = {name: open(f"{lower}/{name}", "rb").read() for name in ("big",)}
        stack.callback(
            lambda: {n: open(f"{lower}/{n}", "rb").read() for n in before} == before or pytest.fail("a lower changed")
        )
        return serve([lower], upper, work)

    yield build
    if "close" in state:
        state.pop("close")()
    stack.close()


async def test_chmod_of_a_lower_file_copies_its_inode_alone(meta):
    fs = meta({"d/": None})
    await fs.chmod("big", 0o600)
    up = f"{fs.upper}/big"
    assert stat.S_IMODE(os.lstat(up).st_mode) == 0o600
    assert os.lstat(up).st_size == len(DATA) and _sparse(up)  # the lower's size, no data
    assert _record(up) == (os.path.realpath(fs.lowers[0]), "big")
    assert await fs.read("big") == DATA  # read from the lower
    assert (await fs.stat("big")).st_size == len(DATA)
    assert journal.DIRNAME not in os.listdir(fs.work)  # metadata: nothing to note


async def test_touch_chown_xattrs_and_links_copy_no_data(meta):
    fs = meta({"a": "aaaa", "b": "bbbb", "c": "cccc", "d": "dddd"})
    await fs.utime("a", (1_000_000_000, 2_000_000_000))
    await fs.chown("b", os.geteuid(), os.getegid())
    await fs.setxattr("c", "user.note", b"x")
    await fs.link("d", "d2")
    for name, data in (("a", b"aaaa"), ("b", b"bbbb"), ("c", b"cccc"), ("d", b"dddd"), ("d2", b"dddd")):
        assert _sparse(f"{fs.upper}/{name}") and _record(f"{fs.upper}/{name}") is not None, name
        assert await fs.read(name) == data
    assert os.lstat(f"{fs.upper}/a").st_mtime_ns == 2_000_000_000
    assert os.getxattr(f"{fs.upper}/c", "user.note") == b"x"


async def test_the_record_is_neither_shown_nor_settable_through_the_union(meta):
    fs = meta({})
    await fs.chmod("big", 0o640)
    assert metacopy.XATTR not in await fs.listxattr("big")
    assert await errno_of(fs.getxattr("big", metacopy.XATTR)) == errno.ENODATA
    assert await errno_of(fs.setxattr("big", metacopy.XATTR, b"/etc\0passwd")) == errno.EPERM
    assert metacopy.XATTR not in await fs.listxattr("")  # the upper's root carries the mark


async def test_the_first_write_copies_the_data_in_and_drops_the_record(meta):
    fs = meta({})
    await fs.chmod("big", 0o600)
    await fs.write("big", b"NEW", flags=os.O_WRONLY, offset=4)
    expected = DATA[:4] + b"NEW" + DATA[7:]
    assert await fs.read("big") == expected
    up = f"{fs.upper}/big"
    assert _record(up) is None and open(up, "rb").read() == expected
    assert stat.S_IMODE(os.lstat(up).st_mode) == 0o600
    # the data may not be on disk yet: noted, as any copy-up with data is
    notes = [n for n in os.listdir(f"{fs.work}/{journal.DIRNAME}") if n != journal.UPPER]
    assert [int(n.split(".")[0]) for n in notes] == [os.lstat(up).st_ino]


@pytest.mark.parametrize("size", [0, 5])
async def test_a_truncation_takes_what_it_keeps_from_the_lower(meta, size):
    fs = meta({})
    await fs.chmod("big", 0o600)
    await fs.truncate("big", size)
    assert await fs.read("big") == DATA[:size]
    up = f"{fs.upper}/big"
    assert _record(up) is None and open(up, "rb").read() == DATA[:size]


async def test_a_renamed_metacopy_keeps_its_data_by_its_record(meta):
    fs = meta({"d/": None})
    await fs.chmod("big", 0o600)
    await fs.rename("big", "d/moved")  # moves the upper file: the record says where the data is
    assert await fs.read("d/moved") == DATA
    assert _record(f"{fs.upper}/d/moved") == (os.path.realpath(fs.lowers[0]), "big")
    fs = fs.remount()
    assert await fs.read("d/moved") == DATA
    await fs.write("d/moved", b"!", flags=os.O_WRONLY | os.O_APPEND)
    assert await fs.read("d/moved") == DATA + b"!"


async def test_a_write_through_one_hard_link_shows_through_the_other(meta):
    fs = meta({})
    await fs.link("big", "other")
    assert await fs.read("other") == DATA
    await fs.write("other", b"X", flags=os.O_WRONLY, offset=0)
    assert await fs.read("big") == b"X" + DATA[1:]
    assert os.lstat(f"{fs.upper}/big").st_ino == os.lstat(f"{fs.upper}/other").st_ino
    fs = fs.remount()
    assert await fs.read("big") == b"X" + DATA[1:]


async def test_a_metacopy_survives_a_remount(meta):
    fs = meta({})
    await fs.chmod("big", 0o604)
    fs = fs.remount()
    assert await fs.read("big") == DATA
    assert stat.S_IMODE((await fs.stat("big")).st_mode) == 0o604
    await fs.truncate("big", 10)
    assert await fs.read("big") == DATA[:10]


async def test_a_record_whose_file_is_not_in_the_union_reads_as_eio(meta):
    fs = meta({})
    await fs.chmod("big", 0o600)
    fs = fs.remount()
    os.setxattr(f"{fs.upper}/big", metacopy.XATTR, metacopy.encode("/etc", "passwd"))
    assert await errno_of(fs.read("big")) == errno.EIO


async def test_mmap_reads_a_metacopy_from_its_lower(tmp_path):
    lower = make_layer(str(tmp_path / "lower"), {"f": "mapped data\n"})
    upper, work, mnt = (make_layer(str(tmp_path / n), {}) for n in ("upper", "work", "mnt"))
    with mounted(mnt, [lower], upper, work, extra=",metacopy=on"):
        os.chmod(f"{mnt}/f", 0o600)
        assert _sparse(f"{upper}/f")
        with open(f"{mnt}/f", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == b"mapped data\n"


async def test_an_upper_with_metacopies_mounted_as_a_lower_reads_their_data(tmp_path):
    """``strata mount`` of a stopped container: its upper over its image, read-only."""
    lower = make_layer(str(tmp_path / "lower"), {"etc/f": "image data\n"})
    upper, work, mnt = (make_layer(str(tmp_path / n), {}) for n in ("upper", "work", "mnt"))
    with mounted(mnt, [lower], upper, work, extra=",metacopy=on"):
        os.chmod(f"{mnt}/etc/f", 0o600)
    assert _sparse(f"{upper}/etc/f")
    with mounted(mnt, [upper, lower]):
        assert open(f"{mnt}/etc/f", "rb").read() == b"image data\n"
        assert stat.S_IMODE(os.stat(f"{mnt}/etc/f").st_mode) == 0o600


async def test_metacopy_is_off_unless_asked_for(tmp_path):
    """Off by default, as kernel overlayfs's: containers-storage's mount program (fuse-overlayfs's
    options, no metacopy) reads its upper directly for podman's diff and commit."""
    lower = make_layer(str(tmp_path / "lower"), {"f": "data"})
    upper, work, mnt = (make_layer(str(tmp_path / n), {}) for n in ("upper", "work", "mnt"))
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    assert not parse_options([opts]).metacopy
    assert parse_options([opts + ",metacopy=on"]).metacopy
    assert not parse_options([f"lowerdir={lower},metacopy=on"]).metacopy  # read-only: no copy-ups
    with mounted(mnt, [lower], upper, work):
        os.chmod(f"{mnt}/f", 0o600)
    assert open(f"{upper}/f", "rb").read() == b"data" and _record(f"{upper}/f") is None


def test_data_path_follows_a_record_only_into_the_given_layers(tmp_path):
    lower = make_layer(str(tmp_path / "lower"), {"d/f": "lower bytes", "link": "x"})
    upper = make_layer(str(tmp_path / "upper"), {"g": ""})
    g = f"{upper}/g"
    os.truncate(g, len("lower bytes"))
    assert metacopy.data_path(g, [lower]) == g  # no record: its own data
    os.setxattr(g, metacopy.XATTR, metacopy.encode(lower, "d/f"))
    assert metacopy.data_path(g, [lower]) == os.path.join(os.path.realpath(lower), "d/f")
    for root, rel in ((lower, "../upper/g"), ("/", "etc/passwd"), (lower, "link")):
        os.setxattr(g, metacopy.XATTR, metacopy.encode(root, rel))
        with pytest.raises(OSError) as e:
            metacopy.data_path(g, [lower])
        assert e.value.errno == errno.EIO, (root, rel)
    assert metacopy.data_path(f"{lower}/link", []) == f"{lower}/link"


async def test_a_touch_copies_up_with_the_new_times_a_symlink_too(meta):
    """The times a utimes sets go into the copy-up itself (one syscall less), for a file; a
    symlink's copy keeps the lower's, and gets the new ones after."""
    fs = meta({"t": "data", "ln": ("symlink", "t")})
    for name in ("t", "ln"):
        await fs.utime(name, (5_000_000_000, 6_000_000_000))
        st = os.lstat(f"{fs.upper}/{name}")
        assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 6_000_000_000), name
        assert int((await fs.stat(name)).st_mtime) == 6
    assert stat.S_ISLNK(os.lstat(f"{fs.upper}/ln").st_mode) and await fs.read("t") == b"data"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a ramfs is root's")
async def test_an_upper_that_cannot_hold_records_gets_copies_with_data(tmp_path):
    """ramfs has no user xattrs: metacopy=on copies data there, as with the option off."""
    lower = make_layer(str(tmp_path / "lower"), {"f": "data"})
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "strata-test-ramfs", str(ram)], check=True)
    try:
        upper, work = make_layer(str(ram / "upper"), {}), make_layer(str(ram / "work"), {})
        fs = UnionFS([lower], upper, work, no_open=True, metacopy=True)
        try:
            await OpsClient(fs).chmod("f", 0o600)
            assert open(f"{upper}/f", "rb").read() == b"data"
            assert stat.S_IMODE(os.lstat(f"{upper}/f").st_mode) == 0o600
        finally:
            fs.close()
    finally:
        subprocess.run(["umount", str(ram)], check=True)

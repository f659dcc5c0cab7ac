"""A layer dir keeps what its tar says: modes, owners, times, xattrs, links, fifos, devices, whiteouts."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest
from helpers import tar_bytes

from store import owners
from store.errors import BadInput
from store.extract import extract
from store.tarstream import BLOCKDEV, CHAR, TarReader
from store.tarwrite import write_tree

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and trusted.* xattrs need root")


def _extract(tmp_path, data: bytes) -> str:
    dest = tmp_path / "layer"
    dest.mkdir()
    extract(TarReader(io.BytesIO(data), "test.tar"), str(dest), "test.tar")
    return str(dest)


@as_root
def test_extract_keeps_metadata(tmp_path):
    layer = _extract(
        tmp_path,
        tar_bytes(
            [
                {"name": "usr/", "type": "dir", "mode": 0o755, "mtime": 1_500_000_000},
                {"name": "usr/bin/", "type": "dir", "mode": 0o750, "uid": 7, "gid": 8, "mtime": 1_400_000_000},
                {"name": "usr/bin/su", "data": b"su", "mode": 0o4755, "uid": 0, "gid": 0},
                {"name": "usr/bin/sg", "data": b"sg", "mode": 0o2711, "uid": 1234, "gid": 5678},
                {"name": "usr/bin/link", "type": "hardlink", "link": "usr/bin/su"},
                {"name": "abs", "type": "symlink", "link": "/usr/bin/su", "uid": 3, "gid": 4},
                {"name": "fifo", "type": "fifo", "mode": 0o640},
                {"name": "null", "type": "char", "dev": (1, 3), "mode": 0o666},
                {"name": "blk", "type": "block", "dev": (7, 0), "mode": 0o660},
                {"name": "x", "data": b"x", "xattrs": {"user.note": "hello", "trusted.overlay.opaque": "y"}},
                {"name": ".wh.gone", "data": b""},
                {"name": "d/", "type": "dir"},
                {"name": "d/.wh..wh..opq", "data": b""},
            ]
        ),
    )
    su = os.lstat(f"{layer}/usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert su.st_nlink == 2 and os.lstat(f"{layer}/usr/bin/link").st_ino == su.st_ino
    sg = os.lstat(f"{layer}/usr/bin/sg")
    assert (sg.st_uid, sg.st_gid, stat.S_IMODE(sg.st_mode)) == (1234, 5678, 0o2711)
    assert sg.st_mtime == 1_600_000_000
    d = os.lstat(f"{layer}/usr/bin")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid, d.st_mtime) == (0o750, 7, 8, 1_400_000_000)
    assert os.lstat(f"{layer}/usr").st_mtime == 1_500_000_000  # children did not bump it
    assert os.readlink(f"{layer}/abs") == "/usr/bin/su"
    assert (os.lstat(f"{layer}/abs").st_uid, os.lstat(f"{layer}/abs").st_gid) == (3, 4)
    assert stat.S_ISFIFO(os.lstat(f"{layer}/fifo").st_mode)
    null = os.lstat(f"{layer}/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_ISBLK(os.lstat(f"{layer}/blk").st_mode)
    assert os.getxattr(f"{layer}/x", "user.note") == b"hello"
    assert os.getxattr(f"{layer}/x", "trusted.overlay.opaque") == b"y"
    assert os.path.isfile(f"{layer}/.wh.gone") and os.path.isfile(f"{layer}/d/.wh..wh..opq")


def test_later_entry_replaces_earlier(tmp_path):
    layer = _extract(
        tmp_path,
        tar_bytes(
            [
                {"name": "a/", "type": "dir"},
                {"name": "a/f", "data": b"1"},
                {"name": "a", "data": b"now a file"},
                {"name": "b", "data": b"old"},
                {"name": "b", "data": b"new"},
            ]
        ),
    )
    assert open(f"{layer}/a", "rb").read() == b"now a file"
    assert open(f"{layer}/b", "rb").read() == b"new"


def test_later_entries_of_any_kind_replace_earlier_ones_and_directories_are_entered_again(tmp_path):
    """The extractor keeps the directories it went down open: going back up, into a sibling, into a
    directory replaced meanwhile (by a file, a symlink) or merged with a later entry of its name."""
    layer = _extract(
        tmp_path,
        tar_bytes(
            [
                {"name": "d/", "type": "dir"},
                {"name": "d/e/", "type": "dir"},
                {"name": "d/e/f", "data": b"1"},
                {"name": "d/h/", "type": "dir"},
                {"name": "d/h/i", "data": b"2"},
                {"name": "d/e/j", "data": b"3"},  # back into a sibling
                {"name": "x", "data": b"file"},
                {"name": "x/", "type": "dir", "mode": 0o750},  # a dir replaces a file
                {"name": "d/e", "type": "symlink", "link": "/etc"},  # a symlink replaces a dir that was entered
                {"name": "d/k", "data": b"4"},
                {"name": "s", "type": "symlink", "link": "x"},
                {"name": "s", "data": b"file again"},
                {"name": "d/", "type": "dir", "mode": 0o711, "mtime": 1_234_567_890},  # merges with the dir
            ]
        ),
    )
    assert os.readlink(f"{layer}/d/e") == "/etc"
    assert [open(f"{layer}/{n}", "rb").read() for n in ("d/h/i", "d/k", "s")] == [b"2", b"4", b"file again"]
    assert stat.S_IMODE(os.stat(f"{layer}/x").st_mode) == 0o750
    st = os.stat(f"{layer}/d")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o711, 1_234_567_890)
    (tmp_path / "again").mkdir()
    with pytest.raises(BadInput, match="symlink"):  # and the symlink is no way out
        _extract(
            tmp_path / "again",
            tar_bytes(
                [
                    {"name": "d/e/", "type": "dir"},
                    {"name": "d/e", "type": "symlink", "link": "/tmp"},
                    {"name": "d/e/evil", "data": b"x"},
                ]
            ),
        )


def test_missing_parents_are_created(tmp_path):
    layer = _extract(tmp_path, tar_bytes([{"name": "deep/er/file", "data": b"x"}]))
    assert open(f"{layer}/deep/er/file", "rb").read() == b"x"


def test_paths_longer_than_path_max_extract(tmp_path):
    deep = "/".join(["d" * 200] * 25)  # ~5 KB: past PATH_MAX
    layer = _extract(tmp_path, tar_bytes([{"name": deep + "/leaf", "data": b"deep"}]))
    fd = os.open(layer, os.O_RDONLY)
    try:
        for part in deep.split("/"):
            nfd = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.stat("leaf", dir_fd=fd).st_size == 4
    finally:
        os.close(fd)


def test_name_longer_than_255_bytes_is_rejected(tmp_path):
    with pytest.raises(BadInput, match="name too long"):
        _extract(tmp_path, tar_bytes([{"name": "x" * 256, "data": b""}]))


def test_hard_link_to_missing_target_is_rejected(tmp_path):
    with pytest.raises(BadInput, match="missing"):
        _extract(tmp_path, tar_bytes([{"name": "h", "type": "hardlink", "link": "nothere"}]))


def test_gnu_and_pax_long_names(tmp_path):
    import tarfile

    long = "p" * 150 + "/" + "q" * 120
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        dest = tmp_path / f"f{fmt}"
        dest.mkdir()
        data = tar_bytes([{"name": long, "data": b"L"}, {"name": "s", "type": "symlink", "link": "t" * 200}], fmt=fmt)
        extract(TarReader(io.BytesIO(data), "t"), str(dest), "t")
        assert open(f"{dest}/{long}", "rb").read() == b"L"
        assert os.readlink(f"{dest}/s") == "t" * 200


def test_rootless_extraction_keeps_owners_modes_and_devices_in_the_override_xattr(tmp_path):
    """Without root (``as_root=False``; as root here, so the files' real owners prove nothing was
    chowned), owners, modes the user could not use and devices go into containers-storage's
    ``user.containers.override_stat``, and a tar written back from the dir says what the first said."""
    src = [
        {"name": "etc/", "type": "dir", "mode": 0o755},
        {"name": "etc/shadow", "data": b"s", "mode": 0o640, "uid": 0, "gid": 42},
        {"name": "var/mail/", "type": "dir", "mode": 0o2775, "uid": 8, "gid": 8},
        {"name": "var/mail/locked", "data": b"", "mode": 0o000, "uid": 8, "gid": 8},
        {"name": "usr/bin/passwd", "data": b"p", "mode": 0o4755},
        {"name": "dev/null", "type": "char", "dev": (1, 3), "mode": 0o666},
        {"name": "dev/loop0", "type": "block", "dev": (7, 0), "mode": 0o660, "uid": 0, "gid": 6},
        {"name": "sbin", "type": "symlink", "link": "usr/sbin", "uid": 3, "gid": 4},
    ]
    dest = tmp_path / "layer"
    dest.mkdir()
    extract(TarReader(io.BytesIO(tar_bytes(src)), "t.tar"), str(dest), "t.tar", as_root=False)
    xattr = lambda rel: os.getxattr(dest / rel, owners.XATTR, follow_symlinks=False)  # noqa: E731
    assert xattr("etc/shadow") == b"0:42:0640"
    assert xattr("var/mail") == b"8:8:2775"
    assert xattr("var/mail/locked") == b"8:8:0000"
    assert stat.S_IMODE(os.lstat(dest / "var/mail/locked").st_mode) == 0o600  # the user can read it
    assert stat.S_IMODE(os.lstat(dest / "var/mail").st_mode) == 0o2775
    assert xattr("dev/null") == b"0:0:0666:char-1-3" and os.path.isfile(dest / "dev/null")
    assert xattr("dev/loop0") == b"0:6:0660:block-7-0"
    for rel in ("etc", "usr/bin/passwd"):  # root's, with modes the file keeps: nothing to say
        assert owners.XATTR not in os.listxattr(dest / rel)
    assert os.lstat(dest / "etc/shadow").st_uid == os.getuid()
    back = io.BytesIO()
    write_tree(str(dest), back)
    entries = {e.name.rstrip("/"): e for e in TarReader(io.BytesIO(back.getvalue()), "back.tar")}
    for want in src:
        got = entries[want["name"].rstrip("/")]
        if want.get("type") != "symlink":  # (a symlink cannot carry the xattr: its owner is lost)
            assert (got.uid, got.gid, got.mode) == (want.get("uid", 0), want.get("gid", 0), want["mode"]), want
        assert owners.XATTR not in got.xattrs
    assert entries["dev/null"].type == CHAR and (entries["dev/null"].devmajor, entries["dev/null"].devminor) == (1, 3)
    assert entries["dev/loop0"].type == BLOCKDEV


def test_override_xattr_codec():
    assert owners.decode(b"1:2:4755") == owners.Override(1, 2, 0o4755)
    assert owners.decode(b"0:5:0620:char-136-0") == owners.Override(0, 5, 0o620, stat.S_IFCHR, os.makedev(136, 0))
    assert owners.decode(b"0:0:0755:dir") == owners.Override(0, 0, 0o755, stat.S_IFDIR)
    for bad in (b"", b"1:2", b"a:b:c", b"1:2:9", b"1:2:0644:char-x-1", b"1:2:0644:door", b"\xff"):
        assert owners.decode(bad) is None, bad
    for value in (b"1:2:4755", b"0:5:0620:char-136-0", b"0:0:0755:dir", b"3:3:0644:pipe"):
        assert owners.decode(value).encode() == value


def _with_checksum(data: bytes, signed: bool) -> bytes:
    """``data`` (a one-entry ustar) with its header's checksum made again, summing the bytes as
    signed chars (as old tars did) or unsigned (POSIX)."""
    header = bytearray(data[:512])
    header[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in header)
    header[148:156] = b"%06o\0 " % total
    return bytes(header) + data[512:]


def test_tar_headers_with_signed_or_unsigned_checksums_are_read_and_a_wrong_one_is_refused(tmp_path):
    """A name with bytes over 127 sums differently as signed chars: both sums are a valid header."""
    data = tar_bytes([{"name": "caf\xe9", "data": b"x"}], tarfile.USTAR_FORMAT)  # é: two bytes over 127
    for signed in (False, True):
        entries = [e.name for e in TarReader(io.BytesIO(_with_checksum(data, signed)), "t.tar")]
        assert entries == ["caf\xe9"]
    bad = bytearray(_with_checksum(data, False))
    bad[0] ^= 1  # the name changed, the checksum not
    with pytest.raises(BadInput, match="checksum mismatch"):
        list(TarReader(io.BytesIO(bytes(bad)), "t.tar"))

"""Owners and modes kept in ``user.containers.override_stat`` (``-o xattr_permissions=2``): what a
rootless daemon, which cannot chown, reports and records (unionfs.owners)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import unionfs_support
from unionfs_support import make_layer, mounted

from unionfs import owners
from unionfs.errors import UnionError
from unionfs.mount import parse_options

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a mount other users reach (allow_other) needs root")
KEY = owners.XATTR
daemon = unionfs_support.daemon  # the fixture: a test that takes it runs on our pyfuse3 and on a stock one


def test_parse_and_encode():
    reg = stat.S_IFREG | 0o644
    assert owners.parse(b"1:2:4755", reg) == (1, 2, stat.S_IFREG | 0o4755, 0)
    assert owners.parse(b"0:5:0620:char-136-0", reg) == (0, 5, stat.S_IFCHR | 0o620, os.makedev(136, 0))
    assert owners.parse(b"0:0:0755:dir", reg) == (0, 0, stat.S_IFDIR | 0o755, 0)
    for bad in (b"", b"1:2", b"x:2:0644", b"1:2:0644:door", b"1:2:0644:char-1", b"\xff:1:1"):
        assert owners.parse(bad, reg) is None, bad
    assert owners.encode(8, 8, stat.S_IFDIR | 0o2775) == b"8:8:2775"
    assert owners.encode(0, 6, stat.S_IFBLK | 0o660, os.makedev(7, 0)) == b"0:6:0660:block-7-0"
    assert owners.disk_mode(stat.S_IFREG) == 0o600 and owners.disk_mode(stat.S_IFDIR | 0o2555) == 0o2755


def test_view_reads_the_override_of_files_and_directories_only(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    os.setxattr(f, KEY, b"33:34:0600")
    st = owners.view(os.lstat(f), str(f))
    assert (st.st_uid, st.st_gid, st.st_mode, st.st_ino) == (33, 34, stat.S_IFREG | 0o600, os.lstat(f).st_ino)
    (tmp_path / "l").symlink_to("f")
    assert owners.view(os.lstat(tmp_path / "l"), str(tmp_path / "l")) == os.lstat(tmp_path / "l")


def test_the_option_takes_fuse_overlayfs_spelling(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"a": "a"})
    assert parse_options([f"lowerdir={lower},xattr_permissions=2"]).owners_xattr
    assert not parse_options([f"lowerdir={lower}"]).owners_xattr
    with pytest.raises(UnionError, match="xattr_permissions=1: only 0 and 2"):
        parse_options([f"lowerdir={lower},xattr_permissions=1"])


def _as(uid: int, body) -> int:
    """Run ``body()`` in a child with ``uid`` as every id; its exit code (0: no exception)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.umask(0o022)
            body()
            code = 0
        except OSError as e:
            code = 100 + (e.errno or 0)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@needs_root
def test_a_mount_reports_and_records_owners_in_the_xattr(tmp_path, daemon):
    lower = make_layer(
        str(tmp_path / "lower"),
        {"etc/shadow": "s", "var/mail/": None, "dev/null": "", "plain": "p", "gone": "g", "pub/": None},
    )
    top = make_layer(str(tmp_path / "top"), {"gone": ""})
    os.setxattr(f"{lower}/etc/shadow", KEY, b"0:42:0640")
    os.setxattr(f"{lower}/var/mail", KEY, b"8:8:2775")
    os.setxattr(f"{lower}/dev/null", KEY, b"0:0:0666:char-1-3")
    os.setxattr(f"{lower}/pub", KEY, b"0:0:1777")
    os.setxattr(f"{top}/gone", KEY, b"0:0:0000:char-0-0")  # containers-storage's rootless whiteout
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    m = str(point)
    with mounted(
        m, [top, lower], str(upper), str(work), extra=",xattr_permissions=2,allow_other", python=daemon.python
    ):
        shadow = os.lstat(f"{m}/etc/shadow")
        assert (shadow.st_uid, shadow.st_gid, stat.S_IMODE(shadow.st_mode)) == (0, 42, 0o640)
        mail = os.lstat(f"{m}/var/mail")
        assert (mail.st_uid, mail.st_gid, mail.st_mode) == (8, 8, stat.S_IFDIR | 0o2775)
        null = os.lstat(f"{m}/dev/null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        assert not os.path.lexists(f"{m}/gone")
        assert KEY not in os.listxattr(f"{m}/etc/shadow")
        with pytest.raises(OSError) as e:
            os.getxattr(f"{m}/etc/shadow", KEY)
        assert e.value.errno == errno.ENODATA
        with pytest.raises(PermissionError):
            os.setxattr(f"{m}/plain", KEY, b"0:0:4777")
        # permissions are the override's: uid 8 may write in the mail dir, uid 9 may not (the mount's
        # root open here: the test's tmp dir is root's alone)
        root = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
        make = lambda rel: os.close(os.open(rel, os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=root))  # noqa: E731
        try:
            assert _as(8, lambda: make("var/mail/eight")) == 0
            assert _as(9, lambda: make("var/mail/nine")) == 100 + errno.EACCES
            assert _as(9, lambda: os.close(os.open("etc/shadow", os.O_RDONLY, dir_fd=root))) == 100 + errno.EACCES
        finally:
            os.close(root)
        eight = os.lstat(f"{m}/var/mail/eight")
        assert (eight.st_uid, eight.st_gid, stat.S_IMODE(eight.st_mode)) == (8, 8, 0o644)  # setgid dir: its group
        os.chown(f"{m}/plain", 5, 6)
        os.chmod(f"{m}/plain", 0)
        plain = os.lstat(f"{m}/plain")
        assert (plain.st_uid, plain.st_gid, stat.S_IMODE(plain.st_mode)) == (5, 6, 0)
        with open(f"{m}/etc/shadow", "a") as f:  # a copy-up keeps the override
            f.write("+")
    for rel, owner, mode, value in (
        ("plain", (0, 0), 0o600, b"5:6:0000"),
        ("var/mail/eight", (0, 0), 0o644, b"8:8:0644"),
        ("etc/shadow", (0, 0), 0o644, b"0:42:0640"),
    ):  # (the lower's real mode)
        real = os.lstat(upper / rel)  # the daemon gave nothing away; the xattr says who owns it
        assert ((real.st_uid, real.st_gid), stat.S_IMODE(real.st_mode), os.getxattr(upper / rel, KEY)) == (
            owner,
            mode,
            value,
        ), rel
    with mounted(
        m, [top, lower], str(upper), str(work), extra=",xattr_permissions=2", python=daemon.python
    ):  # kept across mounts
        assert (os.lstat(f"{m}/plain").st_uid, os.lstat(f"{m}/var/mail/eight").st_gid) == (5, 8)
        assert open(f"{m}/etc/shadow").read() == "s+"


def test_id_maps_parse_as_fuse_overlayfs_reads_them():
    m = owners.IdMap.parse(":0:1000:1:1:100000:65536")  # containers-storage's leading colon
    assert (m.to_container(1000), m.to_container(100032), m.to_container(5)) == (0, 33, owners.IdMap.OVERFLOW)
    assert (m.to_host(0), m.to_host(33)) == (1000, 100032)
    with pytest.raises(OSError) as e:
        m.to_host(70000)
    assert e.value.errno == errno.EINVAL
    for bad in ("", "0:1", "a:b:c", "0:1:0", "0:-1:5"):
        with pytest.raises(ValueError):
            owners.IdMap.parse(bad)


def test_the_map_options_are_checked(tmp_path):
    lower = make_layer(str(tmp_path / "l"), {"a": "a"})
    opts = parse_options([f"lowerdir={lower},uidmapping=0:1000:1,gidmapping=:0:1000:1:1:2000:10"])
    assert opts.uids.to_container(1000) == 0 and opts.gids.to_host(5) == 2004
    for bad, why in (
        ("uidmapping=0:1", "uidmapping=0:1: container:host:size"),
        ("squash_to_uid=5", "squash_to_uid is not supported"),
    ):
        with pytest.raises(UnionError, match=why):
            parse_options([f"lowerdir={lower},{bad}"])


@needs_root
def test_a_mount_with_id_maps_shows_container_ids_and_writes_host_ids(tmp_path, daemon):
    """As podman passes them for a container with --uidmap: the layers' owners are host ids, the
    mount shows them as container ids, and what it writes gets host ids."""
    lower = make_layer(str(tmp_path / "lower"), {"www": "w", "roots": "r", "d/": None})
    os.chown(f"{lower}/www", 100033, 100034)
    os.chown(f"{lower}/d", 100000, 100000)
    upper, work, point = (tmp_path / n for n in ("upper", "work", "mnt"))
    for d in (upper, work, point):
        d.mkdir()
    m = str(point)
    with mounted(
        m,
        [lower],
        str(upper),
        str(work),
        extra=",uidmapping=0:100000:65536,gidmapping=0:100000:65536",
        python=daemon.python,
    ):
        assert (os.lstat(f"{m}/www").st_uid, os.lstat(f"{m}/www").st_gid) == (33, 34)
        assert os.lstat(f"{m}/roots").st_uid == owners.IdMap.OVERFLOW  # host root: not in the map
        os.chown(f"{m}/www", 5, 6)
        assert (os.lstat(f"{m}/www").st_uid, os.lstat(f"{m}/www").st_gid) == (5, 6)
        os.chown(f"{m}/d", 0, 0)  # (root of the mount's caller: the kernel passes 0; the map makes it host 100000)
        with pytest.raises(OSError) as e:
            os.chown(f"{m}/www", 70000, -1)
        assert e.value.errno == errno.EINVAL
        open(f"{m}/new", "w").close()  # made by root: the container's root, host 100000
        assert os.lstat(f"{m}/new").st_uid == 0
    assert (os.lstat(upper / "new").st_uid, os.lstat(upper / "new").st_gid) == (100000, 100000)
    real = os.lstat(upper / "www")
    assert (real.st_uid, real.st_gid) == (100005, 100006)
    assert (os.lstat(upper / "d").st_uid, os.lstat(upper / "d").st_gid) == (100000, 100000)

"""An image with many owners, rootless (issue 17): inside the container its files have the owners
and modes they have for root (0 is the user, 1..N the user's subordinate range); ``-u`` takes the
image's other users; what the container writes is committed and exported with the owners it saw;
nothing in the user's store belongs to anyone but the user."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest
from helpers import strata, tar_bytes
from rootless_support import mounts_below

IMAGE = "owners:latest"
APPLETS = ("sh", "ls", "cat", "id", "touch", "chown", "chmod", "echo", "true", "mkdir", "rm")


def _image_tar() -> bytes:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is required (make test installs it)")
    with open(busybox, "rb") as f:
        binary = f.read()
    return tar_bytes(
        [
            {"name": "bin/", "type": "dir"},
            {"name": "bin/busybox", "data": binary, "mode": 0o755},
            {"name": "bin/busybox-suid", "data": binary, "mode": 0o4755},  # setuid root
            *({"name": f"bin/{a}", "type": "symlink", "link": "busybox"} for a in APPLETS),
            {"name": "etc/", "type": "dir"},
            {
                "name": "etc/passwd",
                "data": b"root:x:0:0::/root:/bin/sh\nmail:x:8:8::/var/mail:/bin/sh\n"
                b"www-data:x:33:33::/var/www:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
            },
            {"name": "etc/group", "data": b"root:x:0:\nmail:x:8:\nshadow:x:42:\nwww-data:x:33:\n"},
            {"name": "tmp/", "type": "dir", "mode": 0o1777},
            {"name": "data/", "type": "dir"},
            {"name": "data/root-file", "data": b"r"},
            {"name": "data/mail/", "type": "dir", "mode": 0o2775, "uid": 8, "gid": 8},
            {"name": "data/mail/spool", "data": b"m", "mode": 0o660, "uid": 8, "gid": 12},
            {"name": "data/www", "data": b"w", "mode": 0o750, "uid": 33, "gid": 33},
            {"name": "data/secret", "data": b"s", "mode": 0o640, "gid": 42},
            {"name": "data/suid", "data": b"u", "mode": 0o4755},
            {"name": "data/nobody", "data": b"n", "mode": 0o600, "uid": 65534, "gid": 65534},
            {"name": "data/private/", "type": "dir", "mode": 0o700, "uid": 100, "gid": 101},
            {"name": "data/private/inner", "data": b"i", "mode": 0o400, "uid": 100, "gid": 101},
            {"name": "data/null", "type": "char", "dev": (1, 3), "mode": 0o666},
        ]
    )


@pytest.fixture
def image_tar():
    """The image as a rootfs tar in a directory everyone may read (root's store imports it too)."""
    parent = tempfile.mkdtemp(prefix="strata-owners-", dir="/tmp")
    try:
        os.chmod(parent, 0o755)
        path = os.path.join(parent, "owners.tar")
        with open(path, "wb") as f:
            f.write(_image_tar())
        os.chmod(path, 0o644)
        yield path
    finally:
        shutil.rmtree(parent)


@pytest.fixture
def stores(rootless, image_tar, tmp_path):
    """(root's store, the user's store), each with the image imported by its owner."""
    root_store = str(tmp_path / "store")
    strata(root_store, "import", image_tar, IMAGE)
    user_store = rootless.make_dir(os.path.join(rootless.home, "owners"))
    rootless.strata(os.path.join(user_store, "store"), "import", image_tar, IMAGE)
    yield root_store, os.path.join(user_store, "store")
    shutil.rmtree(user_store, ignore_errors=True)


LS = "ls -lnR /data; ls -ln /data/null"


def test_ls_ln_inside_matches_roots(rootless, stores):
    root_store, user_store = stores
    as_root = strata(root_store, "run", "--rm", IMAGE, "sh", "-c", LS).out
    as_user = rootless.strata(user_store, "run", "--rm", IMAGE, "sh", "-c", LS).out
    assert " 33 " in as_root and "crw-rw-rw-" in as_root and "-rwsr-xr-x" in as_root  # (what it compares)
    assert as_user == as_root
    foreign = [
        os.path.join(d, n)
        for d, dirs, files in os.walk(user_store)
        for n in dirs + files
        if os.lstat(os.path.join(d, n)).st_uid != rootless.uid
    ]
    assert foreign == []  # the owners live in xattrs: on disk, all the user's


def test_u_takes_the_images_users(rootless, stores):
    _, user_store = stores
    res = rootless.strata(
        user_store,
        "run",
        "--rm",
        "-u",
        "www-data",
        IMAGE,
        "sh",
        "-c",
        "id -u; id -G; cat /data/www; echo; cat /data/secret 2>/dev/null || echo denied",
        check=False,
    )
    assert res.code == 0, res.err
    assert res.out.split() == ["33", "33", "w", "denied"]
    res = rootless.strata(
        user_store,
        "run",
        "--rm",
        "-u",
        "8",
        IMAGE,
        "sh",
        "-c",
        "touch /data/mail/new && ls -ln /data/mail/new",
        check=False,
    )
    assert res.code == 0, res.err
    assert res.out.split()[2:4] == ["8", "8"]  # the setgid dir's group, the caller's uid


def _layer_member(saved: str, name: str) -> tarfile.TarInfo | None:
    """``name`` in whichever layer of the image archive ``saved`` holds it."""
    with tarfile.open(saved) as archive:
        for m in archive.getmembers():
            if not m.isfile():
                continue
            data = archive.extractfile(m).read()  # type: ignore[union-attr]
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    if name in layer.getnames():
                        return layer.getmember(name)
            except tarfile.TarError:
                continue  # the manifest, the config
    return None


def test_commit_diff_and_export_write_the_owners_the_container_saw(rootless, stores):
    _, user_store = stores
    rootless.strata(user_store, "run", "--name", "writer", "-u", "33", IMAGE, "sh", "-c", "echo hi > /tmp/by-33")
    rootless.strata(
        user_store,
        "run",
        "--name",
        "changer",
        IMAGE,
        "sh",
        "-c",
        "chown 8:12 /data/www && chmod 4711 /data/www && mkdir -m 0700 /data/made && chown 100 /data/made",
    )
    assert "C /data/www" in rootless.strata(user_store, "diff", "changer").out.splitlines()
    out = os.path.join(os.path.dirname(user_store), "out.tar")
    rootless.strata(user_store, "export", "-o", out, "changer")
    with tarfile.open(out) as t:
        www, made = t.getmember("data/www"), t.getmember("data/made")
        assert (www.uid, www.gid, www.mode) == (8, 12, 0o4711)
        assert (made.uid, made.gid, made.mode, made.isdir()) == (100, 0, 0o700, True)
        assert t.getmember("data/null").ischr() and t.getmember("data/private/inner").uid == 100
        assert "user.containers.override_stat" not in str(www.pax_headers)
    rootless.strata(user_store, "commit", "writer", "by33")
    rootless.strata(user_store, "save", "-o", out, "by33")
    made_by = _layer_member(out, "tmp/by-33")
    assert made_by is not None and (made_by.uid, made_by.gid) == (33, 33)


STAT = "cd {}/data && stat -c '%n %u %g %a %F' *"


def test_inspection_mounts_show_the_owners_roots_show(rootless, stores):
    """``strata mount IMAGE`` as the user lists the owners root's mount lists (the daemon shows the
    xattr's), and ``mount --layer`` shows a committed layer's whiteout as the file it is."""
    root_store, user_store = stores
    mine = rootless.strata(user_store, "mount", IMAGE).out.strip()
    roots = strata(root_store, "mount", IMAGE).out.strip()
    try:
        as_user = rootless.run("sh", "-c", STAT.format(mine)).out
        as_root = subprocess.run(["sh", "-c", STAT.format(roots)], capture_output=True, text=True, check=True).stdout
        assert "www 33 33 750 regular file" in as_root and "null 0 0 666 character special file" in as_root
        assert as_user == as_root
    finally:
        rootless.strata(user_store, "umount", IMAGE)
        strata(root_store, "umount", IMAGE)
    rootless.strata(user_store, "run", "--name", "del", IMAGE, "rm", "/data/root-file")
    rootless.strata(user_store, "commit", "del", "deleted")
    top = json.loads(rootless.strata(user_store, "inspect", "deleted").out)[0]["RootFS"]["Layers"][-1]
    layer = rootless.strata(user_store, "mount", "--layer", top).out.strip()
    try:
        assert rootless.run("ls", "-a", os.path.join(layer, "data")).out.split() == [".", "..", ".wh.root-file"]
        res = rootless.strata(user_store, "rmi", "deleted", check=False)
        assert res.code == 1 and f"mount at {layer}" in res.err
    finally:
        rootless.strata(user_store, "umount", layer)
    assert mounts_below([user_store]) == []


def test_a_setuid_binary_gives_no_host_privilege(rootless, stores):
    """A setuid-root program run by the image's www-data: whatever it gets inside, on the host the
    process is the user or one of its subordinate ids, never root."""
    _, user_store = stores
    cid = rootless.strata(user_store, "run", "-d", "-u", "33", IMAGE, "/bin/busybox-suid", "sleep", "300").out.strip()
    try:
        state = json.loads(rootless.strata(user_store, "inspect", cid).out)[0]["State"]
        pid = state["Pid"]
        assert pid, (state, rootless.strata(user_store, "logs", cid).out + rootless.strata(user_store, "logs", cid).err)
        with open(f"/proc/{pid}/status") as f:
            ids = [int(i) for line in f if line.startswith(("Uid:", "Gid:")) for i in line.split()[1:]]
        own = {rootless.uid, rootless.gid}
        assert ids and all(
            i in own or rootless.subid_start <= i < rootless.subid_start + rootless.subid_count for i in ids
        ), ids
        assert 0 not in ids
    finally:
        rootless.strata(user_store, "rm", "-f", cid)

"""Volumes and bind mounts as an ordinary user (issue 19, Storage): the container runs in a user
namespace of its own (the user is its root), its union mounted there; ``-v HOST:CTR`` binds a
directory of the user's, a named volume lives in the user's store. Each test runs strata as the
session's throwaway user (the ``rootless`` fixture, tests/rootless_support.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest
from rootless_support import mounts_below

IMAGE = "bb:latest"


@pytest.fixture
def scratch(rootless, request):
    path = rootless.make_dir(os.path.join(rootless.home, f"v-{request.node.name}"[:80]))
    yield path
    if not mounts_below([path]):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(rootless, scratch):
    """The user's store with a busybox image the user imported."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox-static is required (make test installs it)")
    rootfs = os.path.join(scratch, "rootfs")
    for d in ("bin", "etc", "tmp"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    for applet in ("sh", "cat", "ls", "touch", "id", "mkdir", "chown", "chmod", "stat", "echo"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    rootless.give(rootfs)
    root = os.path.join(scratch, "store")
    rootless.strata(root, "import", rootfs, IMAGE, "--change", 'CMD ["/bin/sh"]')
    yield root
    ids = rootless.strata(root, "ps", "-aq", check=False).out.split()
    if ids:
        rootless.strata(root, "rm", "-f", *ids, check=False)
    assert mounts_below([root]) == []


def test_rootless_bind_mount_of_the_users_dir(rootless, scratch, store):
    host = rootless.make_dir(os.path.join(scratch, "host"))
    with open(os.path.join(host, "in"), "w") as f:
        f.write("mine\n")
    rootless.give(host)
    res = rootless.strata(
        store,
        "run",
        "--rm",
        "-v",
        f"{host}:/data",
        IMAGE,
        "sh",
        "-c",
        "cat /data/in; id -u; echo out > /data/out; stat -c %u /data/in",
    )
    assert res.out.splitlines() == ["mine", "0", "0"]  # the user's files are root's inside
    assert os.stat(os.path.join(host, "out")).st_uid == rootless.uid  # and what root writes is the user's
    missing = os.path.join(scratch, "made", "here")  # a missing host path: made, the user's
    rootless.strata(store, "run", "--rm", "-v", f"{missing}:/m", IMAGE, "touch", "/m/f")
    assert os.stat(missing).st_uid == rootless.uid and os.listdir(missing) == ["f"]
    assert mounts_below([store]) == []


def test_rootless_read_only_bind_keeps_the_sources_locked_flags(rootless, store):
    """A directory on a nosuid,nodev,noexec tmpfs (the test's own) bound read-only: in a user namespace
    the remount must repeat the flags locked on the source's mount, or the kernel refuses it."""
    host = tempfile.mkdtemp(prefix="strata-rootless-ro-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,size=1m,mode=755", "tmpfs", host], check=True)
    try:
        with open(os.path.join(host, "f"), "w") as f:
            f.write("locked\n")
        rootless.give(host)
        res = rootless.strata(
            store,
            "run",
            "--rm",
            "-v",
            f"{host}:/ro:ro",
            IMAGE,
            "sh",
            "-c",
            "cat /ro/f; touch /ro/x 2>&1; grep ' /ro ' /proc/mounts",
            check=False,
        )
        assert res.code == 0, res.err
        out = res.out.splitlines()
        assert out[0] == "locked" and "Read-only file system" in out[1]
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(out[2].split()[3].split(","))
        assert os.listdir(host) == ["f"]
    finally:
        subprocess.run(["umount", host], check=True)
        os.rmdir(host)


def test_rootless_named_volume_lives_in_the_users_store(rootless, store):
    res = rootless.strata(
        store,
        "run",
        "--name",
        "writer",
        "-v",
        "notes:/notes",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /notes/f; mkdir /notes/theirs; echo x > /notes/theirs/x; "
        "chown -R 1000:1000 /notes/theirs; chmod 700 /notes/theirs",
    )
    assert res.code == 0, res.err
    data = os.path.join(store, "volumes", "notes", "_data")
    assert os.stat(os.path.join(data, "f")).st_uid == rootless.uid
    assert os.stat(os.path.join(data, "theirs")).st_uid == rootless.subid_start + 999  # the container's uid 1000
    assert rootless.strata(store, "volume", "ls", "-q").out == "notes\n"
    (point,) = json.loads(rootless.strata(store, "inspect", "-f", "{{json .Mounts}}", "writer").out)
    assert (point["Name"], point["Source"], point["Destination"]) == ("notes", data, "/notes")
    assert rootless.strata(store, "diff", "writer").out == ""
    res = rootless.strata(store, "volume", "rm", "notes", check=False)
    assert res.code == 1 and "volume is in use" in res.err
    rootless.strata(store, "rm", "writer")
    res = rootless.strata(store, "run", "--rm", "-v", "notes:/n:ro", IMAGE, "cat", "/n/f", "/n/theirs/x")
    assert res.out == "kept\nx\n"
    # what the container's uid 1000 made (closed to the user outside the namespace) goes too
    assert rootless.strata(store, "volume", "rm", "notes").out == "notes\n"
    assert not os.path.exists(os.path.join(store, "volumes", "notes"))
    assert os.listdir(os.path.join(store, "volumes")) == ["lock"]


def test_rootless_image_volume_is_seeded_and_goes_with_rm_v(rootless, store):
    rootless.strata(store, "run", "--name", "mk", IMAGE, "sh", "-c", "mkdir /seed && echo from-image > /seed/f")
    rootless.strata(store, "commit", "-c", 'VOLUME ["/seed"]', "mk", "seeded")
    res = rootless.strata(store, "run", "--name", "user", "seeded", "sh", "-c", "cat /seed/f; echo new > /seed/g")
    assert res.out == "from-image\n"
    (point,) = json.loads(rootless.strata(store, "inspect", "-f", "{{json .Mounts}}", "user").out)
    assert sorted(os.listdir(point["Source"])) == ["f", "g"] and len(point["Name"]) == 64
    assert os.stat(os.path.join(point["Source"], "f")).st_uid == rootless.uid
    rootless.strata(store, "rm", "-v", "user", "mk")
    assert rootless.strata(store, "volume", "ls", "-q").out == ""


def test_rootless_bind_source_it_cannot_make_is_one_line_and_nothing_left(rootless, store):
    res = rootless.strata(store, "run", "--rm", "-v", "/root/strata-never:/x", IMAGE, "true", check=False)
    assert res.code == 125 and res.out == ""
    assert len(res.err.splitlines()) == 1 and res.err.endswith(
        "error while creating mount source path '/root/strata-never': mkdir /root/strata-never: Permission denied\n"
    )
    assert not os.path.exists("/root/strata-never")
    assert rootless.strata(store, "ps", "-aq").out == "" and mounts_below([store]) == []


def test_rootless_read_only_root_keeps_volumes_and_tmpfs_writable(rootless, store):
    res = rootless.strata(
        store,
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/run",
        "-v",
        "rw:/data",
        IMAGE,
        "sh",
        "-c",
        "touch /x 2>&1; touch /run/ok && echo tmpfs ok; touch /data/ok && echo volume ok",
        check=False,
    )
    assert res.code == 0, res.err
    out = res.out.splitlines()
    assert "Read-only file system" in out[0] and out[1:] == ["tmpfs ok", "volume ok"]


def test_rootless_host_files_bound_in_are_nobodys_and_read_only_to_the_containers_root(rootless, store):
    """A host directory of root's that the user may read, bound into the user's container: inside,
    its files belong to nobody (root is not mapped there), and the container's root, which is only
    the user, can neither write them nor chown or chmod them."""
    host = tempfile.mkdtemp(prefix="strata-rootless-roots-", dir="/tmp")
    try:
        os.chmod(host, 0o755)
        with open(os.path.join(host, "roots"), "w") as f:
            f.write("root's\n")
        os.chmod(os.path.join(host, "roots"), 0o644)
        res = rootless.strata(
            store,
            "run",
            "--rm",
            "-v",
            f"{host}:/host",
            IMAGE,
            "sh",
            "-c",
            "stat -c '%u %g' /host/roots; cat /host/roots; echo x >> /host/roots 2>&1; "
            "chown 0 /host/roots 2>&1; chmod 666 /host/roots 2>&1; touch /host/new 2>&1; true",
            check=False,
        )
        assert res.code == 0, res.err
        out = res.out.splitlines()
        assert out[0] == "65534 65534" and out[1] == "root's", out
        assert all("denied" in line or "not permitted" in line for line in out[2:]), out
        assert os.listdir(host) == ["roots"] and open(os.path.join(host, "roots")).read() == "root's\n"
        assert stat.S_IMODE(os.stat(os.path.join(host, "roots")).st_mode) == 0o644
    finally:
        shutil.rmtree(host)
